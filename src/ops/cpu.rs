//! Shared plumbing of the CPU kernels: dtype dispatch, contiguous slices, row-parallel
//! loops and strided GEMM calls on raw storages.
//!
//! Key decision: parallelism is `std::thread::scope` over contiguous row blocks (one
//! block per candle worker thread), so each thread writes a disjoint slice and the
//! kernels need no locking; small inputs stay on the calling thread.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, WithDType};

/// Float element types the kernels are written for (f32 for speed, f64 for
/// finite-difference tests).
pub(crate) trait Real: WithDType {
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
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

/// `A (m, k) · B (k, n)` on raw storages; `b_layout` may be any strided view (a
/// transposed weight slice costs no copy). Returns the contiguous `(m, n)` product.
/// f32/f64 2-D operands with a unit stride go through [`super::gemm`] (the fastest
/// backend); anything else through candle's matmul.
pub(crate) fn matmul<T: WithDType>(
    a: &CpuStorage,
    a_layout: &Layout,
    b: &CpuStorage,
    b_layout: &Layout,
    (m, n, k): (usize, usize, usize),
) -> Result<Vec<T>> {
    use super::gemm::{self, Threads};
    if let (Some((ta, lda, ao)), Some((tb, ldb, bo))) =
        (gemm_operand(a_layout, m, k), gemm_operand(b_layout, k, n))
    {
        match (a, b) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let mut c = vec![0f32; m * n];
                gemm::sgemm(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    1.0,
                    &a[ao..],
                    lda,
                    &b[bo..],
                    ldb,
                    0.0,
                    &mut c,
                    n,
                    Threads::All,
                )?;
                return T::cpu_storage_data(CpuStorage::F32(c));
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let mut c = vec![0f64; m * n];
                gemm::dgemm(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    1.0,
                    &a[ao..],
                    lda,
                    &b[bo..],
                    ldb,
                    0.0,
                    &mut c,
                    n,
                    Threads::All,
                )?;
                return T::cpu_storage_data(CpuStorage::F64(c));
            }
            _ => {}
        }
    }
    T::cpu_storage_data(a.matmul(b, (1, m, n, k), a_layout, b_layout)?)
}

/// A `rows × cols` layout as a row-major GEMM operand `(transpose, leading dim,
/// start offset)`, when it is 2-D with a unit stride in one dimension.
fn gemm_operand(
    layout: &Layout,
    rows: usize,
    cols: usize,
) -> Option<(super::gemm::Trans, usize, usize)> {
    use super::gemm::Trans;
    let (dims, strides) = (layout.dims(), layout.stride());
    if dims != [rows, cols] || rows == 0 || cols == 0 {
        return None;
    }
    let (s0, s1) = (strides[0], strides[1]);
    if s1 == 1 || cols == 1 {
        let ld = if rows == 1 { cols } else { s0 };
        (ld >= cols).then_some((Trans::No, ld, layout.start_offset()))
    } else if s0 == 1 || rows == 1 {
        let ld = if cols == 1 { rows } else { s1 };
        (ld >= rows).then_some((Trans::Yes, ld, layout.start_offset()))
    } else {
        None
    }
}
