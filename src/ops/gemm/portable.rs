//! The portable backend: the pure-Rust `gemm` crate, any strides, rayon threads.
//!
//! `gemm::gemm` computes `dst = alpha·dst + beta·lhs·rhs` (note: its `alpha` scales the
//! destination), reading `dst` only when asked; the wrappers here translate from the
//! BLAS convention. bf16 inputs are widened to f32 first (exact), so the product equals
//! an f32 GEMM of the bf16-rounded inputs.

use super::{bf16, bf16_to_f32, Geometry, Threads};
use gemm::Parallelism;

/// The `gemm` crate's parallelism for a thread policy.
fn parallelism(threads: Threads) -> Parallelism {
    match threads {
        Threads::All => Parallelism::Rayon(candle_core::utils::get_num_threads().max(1)),
        Threads::Single => Parallelism::None,
    }
}

/// One strided GEMM through the `gemm` crate; `T` is f32 or f64.
fn run<T: Copy + PartialEq + num_zero::Zero + 'static>(
    g: &Geometry,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
    threads: Threads,
) {
    let (a_rs, a_cs) = g.a_strides();
    let (b_rs, b_cs) = g.b_strides();
    let read_dst = beta != T::ZERO;
    // SAFETY: `Geometry::checked` verified that every index the strides reach lies
    // inside its slice, and `c` is borrowed mutably (no aliasing with `a`, `b`).
    unsafe {
        gemm::gemm(
            g.m,
            g.n,
            g.k,
            c.as_mut_ptr(),
            1,
            g.ldc as isize,
            read_dst,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}

/// f32 GEMM (BLAS convention `C = alpha·op(A)·op(B) + beta·C`).
pub(super) fn sgemm(
    g: &Geometry,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    threads: Threads,
) {
    run(g, alpha, a, b, beta, c, threads)
}

/// f64 GEMM (BLAS convention).
pub(super) fn dgemm(
    g: &Geometry,
    alpha: f64,
    a: &[f64],
    b: &[f64],
    beta: f64,
    c: &mut [f64],
    threads: Threads,
) {
    run(g, alpha, a, b, beta, c, threads)
}

/// bf16 × bf16 → f32 GEMM: widen both inputs (exact), then the f32 GEMM.
pub(super) fn gemm_bf16_f32(
    g: &Geometry,
    alpha: f32,
    a: &[bf16],
    b: &[bf16],
    beta: f32,
    c: &mut [f32],
    threads: Threads,
) {
    sgemm(g, alpha, &bf16_to_f32(a), &bf16_to_f32(b), beta, c, threads)
}

/// The additive identity of the element types the `gemm` crate is driven with.
mod num_zero {
    /// A type with a zero constant.
    pub trait Zero {
        /// `0`.
        const ZERO: Self;
    }
    impl Zero for f32 {
        const ZERO: Self = 0.0;
    }
    impl Zero for f64 {
        const ZERO: Self = 0.0;
    }
}
