//! Flush-to-zero / denormals-are-zero for the threads that run the kernels.
//!
//! Subnormal floats take a microcode assist on x86 (tens to hundreds of cycles per
//! operation); a GEMM that meets many of them (tiny gradients, badly initialised
//! weights) slows down by an order of magnitude. Setting MXCSR's FTZ (bit 15) and DAZ
//! (bit 6) makes the SIMD units treat them as zero. Key decision: this is an explicit,
//! process-level opt-in ([`flush_denormals_to_zero`], called by the trainer and the
//! benches), not a side effect of the first GEMM: it changes results below ~1e-38.
//! Threads created afterwards inherit the setting from their creator (POSIX), and the
//! already-running rayon workers are set through `rayon::broadcast`.

use std::sync::Once;

/// Sets FTZ + DAZ on the calling thread and on every thread of rayon's global pool
/// (the pool candle and the `gemm` crate run on), once per process. Returns whether
/// the platform supports it (x86_64 only; elsewhere a no-op returning `false`).
pub fn flush_denormals_to_zero() -> bool {
    static ONCE: Once = Once::new();
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    set_on_this_thread();
    ONCE.call_once(|| {
        rayon::broadcast(|_| set_on_this_thread());
    });
    true
}

/// Whether FTZ and DAZ are both set on the calling thread.
pub fn denormals_flushed_on_this_thread() -> bool {
    mxcsr().is_some_and(|v| v & FTZ_DAZ == FTZ_DAZ)
}

/// MXCSR bits: flush-to-zero (15) and denormals-are-zero (6).
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> Option<u32> {
    let mut v: u32 = 0;
    // SAFETY: stmxcsr stores the 32-bit control register to the given address.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    Some(v)
}

#[cfg(not(target_arch = "x86_64"))]
fn mxcsr() -> Option<u32> {
    None
}

#[cfg(target_arch = "x86_64")]
fn set_on_this_thread() {
    if let Some(v) = mxcsr() {
        let v = v | FTZ_DAZ;
        // SAFETY: ldmxcsr loads a valid MXCSR value (the current one with two mode
        // bits set; no reserved bit touched).
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, readonly)) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn set_on_this_thread() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn ftz_daz_turns_subnormal_products_into_zero() {
        // run on a fresh thread so other tests keep IEEE behaviour
        std::thread::spawn(|| {
            let tiny = std::hint::black_box(1e-39f32); // subnormal
            assert!(tiny * std::hint::black_box(1.0f32) != 0.0);
            set_on_this_thread();
            assert!(denormals_flushed_on_this_thread());
            assert_eq!(tiny * std::hint::black_box(1.0f32), 0.0);
        })
        .join()
        .unwrap();
    }
}
