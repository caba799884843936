//! `Y (m, n) (+)= X (m, k) · Wᵀ` for a few rows `m` (a decode step's batch): the
//! weight-streaming GEMM of generation.
//!
//! At m = 8 a decode step's GEMMs do 2·m FLOPs per weight they read, so they run at
//! the speed memory delivers the weights, and every extra pass over a weight matrix
//! costs as much as the multiply itself. A BLAS `sgemm` packs `W` into panels first
//! (read + write + read) and pays a threading hand-off per call; measured here, MKL at
//! m = 8 streamed SmolLM2's weights at ~12.6 GB/s where a plain read reaches ~25.
//! Key decision: `W` stays where it is (`(n, k)` row-major, the layout of every
//! `nn.Linear` weight) and each output is a dot product along contiguous `k`: a 4 × 4
//! block of (x rows × weight rows) keeps 16 AVX-512 accumulators, the four weight rows
//! are read from memory once and from L1 for the next four x rows, and the 16 sums
//! are reduced across lanes in one shuffle tree. The caller splits the weight rows
//! between threads ([`crate::runtime::WorkerTeam`]); each call writes only the output
//! columns of its own weight rows. CPUs without AVX-512 get a portable loop.

use std::marker::PhantomData;
use std::ops::Range;

/// A row-major `(rows, ld)` f32 matrix whose disjoint column ranges several threads
/// write at once (each output column belongs to one weight row, hence one thread).
#[derive(Clone, Copy)]
pub struct SharedMatrix<'a> {
    ptr: *mut f32,
    rows: usize,
    ld: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a SharedMatrix is a `&mut [f32]` split by columns; users write disjoint
// column ranges (the contract of `cols_mut`).
unsafe impl Send for SharedMatrix<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedMatrix<'_> {}

impl<'a> SharedMatrix<'a> {
    /// Wraps `buf` as `(rows, ld)`; panics if `buf` is shorter.
    pub fn new(buf: &'a mut [f32], rows: usize, ld: usize) -> Self {
        assert!(buf.len() >= rows * ld, "SharedMatrix: buffer too short");
        SharedMatrix {
            ptr: buf.as_mut_ptr(),
            rows,
            ld,
            _borrow: PhantomData,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns `cols` of row `r`.
    ///
    /// # Safety
    /// No other live reference (on any thread) may overlap these elements.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn cols_mut(&self, r: usize, cols: Range<usize>) -> &'a mut [f32] {
        assert!(r < self.rows && cols.start <= cols.end && cols.end <= self.ld);
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(r * self.ld + cols.start), cols.len())
        }
    }
}

/// `out[r][j] (+)= Σ_kk x[r][kk] · w[j][kk]` for every row `r < m` of `x` `(m, k)` and
/// every weight row `j` in `rows` of `w` `(n, k)`; `out` is `(m, ≥ n)` and only its
/// columns `rows` are touched. `accumulate` adds to `out` instead of overwriting it.
pub fn matmul_wt_rows(
    x: &[f32],
    k: usize,
    w: &[f32],
    rows: Range<usize>,
    out: SharedMatrix<'_>,
    accumulate: bool,
) {
    let m = out.rows();
    assert!(x.len() >= m * k, "matmul_wt_rows: x is shorter than (m, k)");
    assert!(
        w.len() >= rows.end * k,
        "matmul_wt_rows: w is shorter than its rows"
    );
    assert!(
        rows.end <= out.ld,
        "matmul_wt_rows: out has fewer columns than rows"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512F; bounds asserted above; `out` columns `rows`
        // belong to this call (SharedMatrix contract, upheld by the caller).
        return unsafe { avx512::matmul_wt_rows(x, m, k, w, rows, out, accumulate) };
    }
    portable(x, m, k, w, rows, out, accumulate);
}

/// Whether [`matmul_wt_rows`] runs its AVX-512 kernel on this CPU.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The portable loop: one dot product per output, eight partial sums so it vectorises.
fn portable(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    rows: Range<usize>,
    out: SharedMatrix<'_>,
    accumulate: bool,
) {
    for j in rows {
        let wj = &w[j * k..(j + 1) * k];
        for r in 0..m {
            let s = dot(&x[r * k..(r + 1) * k], wj);
            // SAFETY: column j belongs to this call.
            let o = unsafe { &mut out.cols_mut(r, j..j + 1)[0] };
            *o = if accumulate { *o + s } else { s };
        }
    }
}

/// `a · b` with eight independent partial sums, so the loop runs in vector lanes.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (pa, pb) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += pa[i] * pb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::SharedMatrix;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// See [`super::matmul_wt_rows`]; blocks of 4 weight rows × up to 4 x rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul_wt_rows(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        rows: Range<usize>,
        out: SharedMatrix<'_>,
        accumulate: bool,
    ) {
        let mut j = rows.start;
        while j + 4 <= rows.end {
            let mut r = 0;
            while r < m {
                let take = (m - r).min(4);
                // the first pass over these weight rows prefetches the rows ahead
                let ahead = if r == 0 {
                    prefetch_rows(&rows, j)
                } else {
                    None
                };
                // SAFETY: forwarded contract; rows j..j+4 and r..r+take are in bounds.
                unsafe {
                    match take {
                        4 => block::<4>(x, k, w, r, j, out, accumulate, ahead),
                        3 => block::<3>(x, k, w, r, j, out, accumulate, ahead),
                        2 => block::<2>(x, k, w, r, j, out, accumulate, ahead),
                        _ => block::<1>(x, k, w, r, j, out, accumulate, ahead),
                    }
                }
                r += take;
            }
            j += 4;
        }
        // the last n mod 4 weight rows
        super::portable(x, m, k, w, j..rows.end, out, accumulate);
    }

    /// Blocks of 4 weight rows between the block being multiplied and the one being
    /// prefetched (into L2: `T1` beat `T0` by ~6 % on a decode step, `NTA` halved its
    /// speed): the hardware prefetcher alone left ~30 % of the memory bandwidth unused
    /// at m = 8 (measured: 15.8 → 21.2 GB/s on two threads; 1–8 blocks ahead all
    /// within noise of each other).
    const PREFETCH_BLOCKS: usize = 2;

    /// The first of the 4 weight rows to prefetch while rows `j..j+4` are multiplied,
    /// if they are within this call's rows.
    fn prefetch_rows(rows: &Range<usize>, j: usize) -> Option<usize> {
        let ahead = j + 4 * PREFETCH_BLOCKS;
        (ahead + 4 <= rows.end).then_some(ahead)
    }

    /// Outputs `(r..r+M) × (j..j+4)`; touches rows `ahead..ahead+4` of `w` into the
    /// cache on the way.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const M: usize>(
        x: &[f32],
        k: usize,
        w: &[f32],
        r: usize,
        j: usize,
        out: SharedMatrix<'_>,
        accumulate: bool,
        ahead: Option<usize>,
    ) {
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        let full = k / 16 * 16;
        let mut kk = 0;
        // SAFETY (all loads): rows r..r+M of x and j..j+4 of w hold k elements each,
        // kk + 16 ≤ full ≤ k, and the tail loads are masked to the k − full left.
        while kk < full {
            if let Some(a) = ahead {
                for i in 0..4 {
                    // SAFETY: prefetching is a hint; the address is inside `w`.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(wp.add((a + i) * k + kk) as *const i8) };
                }
            }
            let wv: [__m512; 4] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(wp.add((j + i) * k + kk)) });
            for (a, acc_a) in acc.iter_mut().enumerate() {
                let xv = unsafe { _mm512_loadu_ps(xp.add((r + a) * k + kk)) };
                for i in 0..4 {
                    acc_a[i] = _mm512_fmadd_ps(xv, wv[i], acc_a[i]);
                }
            }
            kk += 16;
        }
        if full < k {
            let mask: __mmask16 = ((1u32 << (k - full)) - 1) as u16;
            let wv: [__m512; 4] = std::array::from_fn(|i| unsafe {
                _mm512_maskz_loadu_ps(mask, wp.add((j + i) * k + full))
            });
            for (a, acc_a) in acc.iter_mut().enumerate() {
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, xp.add((r + a) * k + full)) };
                for i in 0..4 {
                    acc_a[i] = _mm512_fmadd_ps(xv, wv[i], acc_a[i]);
                }
            }
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for a in 0..M {
            v[a * 4..a * 4 + 4].copy_from_slice(&acc[a]);
        }
        let mut sums = [0f32; 16];
        // SAFETY: `sums` holds 16 floats.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), reduce16(&v)) };
        for a in 0..M {
            // SAFETY: columns j..j+4 belong to this call.
            let o = unsafe { out.cols_mut(r + a, j..j + 4) };
            for i in 0..4 {
                let s = sums[a * 4 + i];
                o[i] = if accumulate { o[i] + s } else { s };
            }
        }
    }

    /// Lane `i` of the result is the horizontal sum of `v[i]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn reduce16(v: &[__m512; 16]) -> __m512 {
        // pairs: per 128-bit lane [a0+a2, b0+b2, a1+a3, b1+b3]
        let p: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
        });
        // quads: per 128-bit lane [Σa, Σb, Σc, Σd] of that lane
        let q: [__m512; 4] = std::array::from_fn(|i| {
            let (a, b) = (p[2 * i], p[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xEE>(a, b),
            )
        });
        // across 128-bit lanes, twice
        let fold = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            )
        };
        let h0 = fold(q[0], q[1]);
        let h1 = fold(q[2], q[3]);
        fold(h0, h1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                y[r * n + j] = (0..k)
                    .map(|t| x[r * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
            }
        }
        y
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| (crate::rng::splitmix64(&mut s) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Worst error of the kernel (or the portable loop) on one shape, relative to
    /// `1 + |want|` and scaled by `√k` (the growth of f32 rounding in a dot product).
    fn check(m: usize, k: usize, n: usize, split: usize, accumulate: bool, kernel: bool) -> f64 {
        let (x, w) = (values(m * k, 1), values(n * k, 2));
        let start = values(m * n, 3);
        let mut out = start.clone();
        let shared = SharedMatrix::new(&mut out, m, n);
        for part in [0..split, split..n] {
            if kernel {
                matmul_wt_rows(&x, k, &w, part, shared, accumulate);
            } else {
                portable(&x, m, k, &w, part, shared, accumulate);
            }
        }
        let want = naive(&x, m, k, &w, n);
        let mut worst = 0f64;
        for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
            let want = if accumulate {
                want + start[i] as f64
            } else {
                want
            };
            let err = (got as f64 - want).abs() / ((1.0 + want.abs()) * (k as f64).sqrt());
            worst = worst.max(err);
        }
        worst
    }

    #[test]
    fn equals_the_naive_product_on_odd_shapes_and_splits() {
        for &(m, k, n, split) in &[
            (1, 1, 1, 0),
            (8, 576, 64, 32),
            (5, 37, 23, 9),
            (3, 16, 9, 4),
            (16, 100, 17, 17),
            (7, 15, 6, 1),
        ] {
            for accumulate in [false, true] {
                for kernel in [true, false] {
                    let err = check(m, k, n, split, accumulate, kernel);
                    assert!(
                        err <= 1e-5,
                        "m {m} k {k} n {n} accumulate {accumulate} kernel {kernel}: error {err:e}"
                    );
                }
            }
        }
    }
}
