//! Shared plumbing of the CPU kernels: dtype dispatch, contiguous slices and
//! row-parallel loops.
//!
//! Key decision: parallelism is `std::thread::scope` over contiguous row blocks (one
//! block per candle worker thread), so each thread writes a disjoint slice and the
//! kernels need no locking; small inputs stay on the calling thread.

use candle_core::{CpuStorage, DType, Layout, Result, WithDType};

/// Float element types the kernels are written for (f32 for speed, f64 for
/// finite-difference tests).
pub(crate) trait Real: WithDType {
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Whether the CPU has AVX2 and FMA: the kernels with a `#[target_feature(enable =
/// "avx2,fma")]` variant call it when this holds (the build targets baseline x86-64).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The contiguous elements of `storage` under `layout`, or an error naming `op`.
pub(crate) fn slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Error for a dtype the kernels do not cover.
pub(crate) fn unsupported(dtype: DType, op: &'static str) -> candle_core::Error {
    candle_core::Error::UnsupportedDTypeForOp(dtype, op)
}

/// Splits `out` into blocks of whole rows (`row_len` elements each), one per worker
/// thread, and runs `f(first_row, block)` on each; returns the per-block results in
/// row order.
pub(crate) fn par_row_blocks<T, R, F>(out: &mut [T], row_len: usize, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, &mut [T]) -> R + Sync,
{
    let rows = if row_len == 0 { 0 } else { out.len() / row_len };
    let threads = candle_core::utils::get_num_threads()
        .max(1)
        .min(rows.max(1));
    // below ~32k elements a thread costs more than it saves
    if threads == 1 || out.len() < 32 * 1024 {
        return vec![f(0, out)];
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per * row_len)
            .enumerate()
            .map(|(i, block)| {
                let f = &f;
                s.spawn(move || f(i * per, block))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("kernel worker panicked"))
            .collect()
    })
}

/// Splits two same-length slices at the same points, one block per worker thread
/// (small inputs stay on the calling thread), and runs `f(offset, a_block, b_block)`.
pub(crate) fn par_zip_blocks<T, F>(a: &mut [T], b: &mut [T], f: F)
where
    T: Send,
    F: Fn(usize, &mut [T], &mut [T]) + Sync,
{
    let n = a.len().min(b.len());
    let threads = candle_core::utils::get_num_threads().max(1);
    // below ~32k elements a thread costs more than it saves
    if threads == 1 || n < 32 * 1024 {
        f(0, a, b);
        return;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, (a, b)) in a.chunks_mut(per).zip(b.chunks_mut(per)).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, a, b));
        }
    });
}
