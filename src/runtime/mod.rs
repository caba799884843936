//! Process-level runtime support: the settings training and benchmarks opt into
//! (glibc's allocator keeps freed memory instead of handing it back to the kernel)
//! and the persistent [`team::WorkerTeam`] that decoding's short parallel regions run on.
//!
//! A training step allocates and frees the same few hundred megabytes of activations
//! and gradients every step. By default glibc returns large freed blocks to the kernel
//! (`munmap`, heap trimming), so the next step page-faults them back in and the kernel
//! zeroes every page: ~100k faults per SmolLM2-135M step. Key decision: like FTZ/DAZ
//! ([`crate::ops::gemm::flush_denormals_to_zero`]) this is an explicit opt-in called by
//! the trainer and `smelt bench`, not a side effect of linking the library. Peak RSS
//! does not change (the memory was in use at the peak anyway); what changes is that
//! the process keeps it after the peak.

pub mod team;
pub use team::WorkerTeam;

/// Blocks up to this size come from the heap (32 MiB, the largest value glibc accepts
/// on 64-bit targets), not from a fresh `mmap` each.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Sets glibc's `M_MMAP_THRESHOLD` to 32 MiB and `M_TRIM_THRESHOLD` to its maximum,
/// once per process. Returns whether the platform has these knobs (glibc on Linux;
/// elsewhere a no-op returning `false`).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; both values are valid.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            }
        });
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_come_from_the_heap_after_the_call() {
        let supported = keep_freed_memory();
        assert_eq!(
            supported,
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
        assert_eq!(keep_freed_memory(), supported, "idempotent");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // bytes glibc holds in mmap'ed blocks; a 24 MiB block must not add to it
            // (below the threshold it is carved from the heap and reused when freed)
            // SAFETY: mallinfo2 only reads allocator statistics.
            let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
            let before = mapped();
            let block = vec![1u8; 24 << 20];
            let during = mapped();
            drop(block);
            assert!(
                during < before + (24 << 20),
                "a 24 MiB block was mmap'ed ({before} -> {during} bytes mapped)"
            );
        }
    }
}
