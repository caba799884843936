//! The building blocks the attention kernels share: one single-threaded GEMM on
//! strided slices, the per-(row, head, query block) tile geometry, and the masked
//! exponentials of a score tile.
//!
//! Key decision: every inner product is a call to the `gemm` crate (candle's own CPU
//! matmul) with `Parallelism::None`, because the kernels already run one rayon task per
//! tile; transposed operands are passed as strides, never copied.

use super::Dims;
use crate::ops::cpu::Real;

/// Queries per tile: the score tile is `(BLOCK_Q, keys up to the causal limit)`.
pub(crate) const BLOCK_Q: usize = 64;

/// A read-only strided matrix operand: element `(r, c)` is `data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    /// Backing elements (the operand starts at index 0).
    pub data: &'a [T],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// Row-major `(.., cols)` block starting at `data[0]` with row stride `ld`.
    pub fn rows(data: &'a [T], ld: usize) -> Self {
        View {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of the row-major block `rows(data, ld)`.
    pub fn rows_t(data: &'a [T], ld: usize) -> Self {
        View {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// As a row-major BLAS operand `(transpose, leading dimension)`, when one of the
    /// strides is 1.
    fn as_operand(&self) -> Option<(crate::ops::gemm::Trans, usize)> {
        use crate::ops::gemm::Trans;
        match (self.rs, self.cs) {
            (ld, 1) if ld >= 1 => Some((Trans::No, ld)),
            (1, ld) => Some((Trans::Yes, ld)),
            _ => None,
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "attention gemm: {what} out of bounds"
            );
        }
    }
}

/// `C (m, n) = alpha · C + beta · A (m, k) · B (k, n)` on the calling thread; `C` is
/// row-major with row stride `ldc`; `alpha = 0` overwrites `C`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    (m, n, k): (usize, usize, usize),
    c: &mut [T],
    ldc: usize,
    alpha: T,
    a: View<'_, T>,
    b: View<'_, T>,
    beta: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "attention gemm: C out of bounds"
    );
    a.check(m, k, "A");
    b.check(k, n, "B");
    if T::tile_gemm_on_backend((m, n, k), c, ldc, alpha, a, b, beta) {
        return;
    }
    // SAFETY: every operand's extent was bounds-checked above; `c` is exclusively
    // borrowed and cannot alias `a` or `b` (shared borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            alpha != T::zero(),
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Geometry of one query block of one (row, head): queries `i0..i1`, and the keys
/// `lo..hi` its score tile covers (from the first query's document start to the last
/// query's slot).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    /// First query of the block.
    pub i0: usize,
    /// One past the last query.
    pub i1: usize,
    /// First key the tile covers.
    pub lo: usize,
    /// One past the last key the tile covers.
    pub hi: usize,
}

impl Tile {
    /// The tile of query block `blk` of batch row `b`; `starts` is the document-start
    /// table (B·Tk).
    pub fn new(dm: &Dims, starts: &[usize], b: usize, blk: usize) -> Self {
        let i0 = blk * BLOCK_Q;
        let i1 = (i0 + BLOCK_Q).min(dm.tq);
        let off = dm.offset();
        Tile {
            i0,
            i1,
            lo: starts[b * dm.tk + off + i0],
            hi: off + i1,
        }
    }

    /// Queries in the block.
    pub fn rows(&self) -> usize {
        self.i1 - self.i0
    }

    /// Keys in the tile.
    pub fn cols(&self) -> usize {
        self.hi - self.lo
    }

    /// Visible tile columns `[a, z)` of block row `r` (document start to its slot).
    pub fn visible(&self, dm: &Dims, starts: &[usize], b: usize, r: usize) -> (usize, usize) {
        let slot = dm.offset() + self.i0 + r;
        (starts[b * dm.tk + slot] - self.lo, slot + 1 - self.lo)
    }
}

/// The first `len` elements of the scratch `buf`, grown as needed (old contents stay:
/// every caller overwrites the tile before reading it).
pub(crate) fn scratch<T: Real>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::zero());
    }
    &mut buf[..len]
}

/// Number of query blocks per (row, head).
pub(crate) fn blocks(tq: usize) -> usize {
    tq.div_ceil(BLOCK_Q)
}

/// Natural log through f64 (one call per query row, so precision over speed).
pub(crate) fn ln<T: Real>(x: T) -> T {
    T::from_f64(x.to_f64().ln())
}

/// Float types the attention kernels run in: [`Real`] plus a fast shifted `exp` over
/// a row (the softmax's hot loop).
pub(crate) trait Float: Real {
    /// `row[j] = exp(row[j] − shift)` for every `j`; returns `Σ row[j]` afterwards.
    fn exp_shifted(row: &mut [Self], shift: Self) -> Self;

    /// `Σ exp(row[j] − shift)`, leaving `row` as it is.
    fn sum_exp_shifted(row: &[Self], shift: Self) -> Self;

    /// [`gemm`] through the selected GEMM backend on the calling thread, when it has a
    /// faster kernel for this type and the operands have a unit stride; false when the
    /// caller should use the `gemm` crate instead (bounds are already checked).
    #[allow(clippy::too_many_arguments)]
    fn tile_gemm_on_backend(
        _mnk: (usize, usize, usize),
        _c: &mut [Self],
        _ldc: usize,
        _alpha: Self,
        _a: View<'_, Self>,
        _b: View<'_, Self>,
        _beta: Self,
    ) -> bool {
        false
    }

    /// `max(row)` (`row` non-empty).
    fn max_of(row: &[Self]) -> Self {
        row.iter()
            .copied()
            .fold(row[0], |m, x| if x > m { x } else { m })
    }
}

impl Float for f64 {
    fn exp_shifted(row: &mut [f64], shift: f64) -> f64 {
        let mut sum = 0.0;
        for s in row {
            *s = (*s - shift).exp();
            sum += *s;
        }
        sum
    }

    fn sum_exp_shifted(row: &[f64], shift: f64) -> f64 {
        row.iter().map(|s| (s - shift).exp()).sum()
    }
}

impl Float for f32 {
    fn exp_shifted(row: &mut [f32], shift: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if crate::ops::cpu::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { exp_shifted_avx2(row, shift) };
        }
        exp_shifted_f32(row, shift)
    }

    /// MKL's AVX-512 kernels beat the `gemm` crate's AVX2 ones on these tiles (64
    /// queries × up to the sequence length × head_dim), single-threaded since each
    /// tile is already one rayon task.
    fn tile_gemm_on_backend(
        (m, n, k): (usize, usize, usize),
        c: &mut [f32],
        ldc: usize,
        alpha: f32,
        a: View<'_, f32>,
        b: View<'_, f32>,
        beta: f32,
    ) -> bool {
        use crate::ops::gemm::{self, Backend, Threads};
        if !matches!(gemm::backend(), Ok(Backend::Mkl)) {
            return false;
        }
        let (Some((ta, lda)), Some((tb, ldb))) = (a.as_operand(), b.as_operand()) else {
            return false;
        };
        // this module's C = alpha·C + beta·A·B is BLAS's C = beta·A·B + alpha·C
        gemm::sgemm(
            ta,
            tb,
            m,
            n,
            k,
            beta,
            a.data,
            lda,
            b.data,
            ldb,
            alpha,
            c,
            ldc,
            Threads::Single,
        )
        .is_ok()
    }

    fn sum_exp_shifted(row: &[f32], shift: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if crate::ops::cpu::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { sum_exp_shifted_avx2(row, shift) };
        }
        sum_exp_shifted_f32(row, shift)
    }

    fn max_of(row: &[f32]) -> f32 {
        let mut lanes = [row[0]; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let tail = chunks.remainder();
        let m = lanes.iter().chain(tail).copied();
        m.fold(row[0], |m, x| if x > m { x } else { m })
    }
}

/// [`exp_shifted_f32`] compiled for AVX2 + FMA (8 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(row: &mut [f32], shift: f32) -> f32 {
    exp_shifted_f32(row, shift)
}

/// [`sum_exp_shifted_f32`] compiled for AVX2 + FMA (8 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp_shifted_avx2(row: &[f32], shift: f32) -> f32 {
    sum_exp_shifted_f32(row, shift)
}

/// Body of [`Float::sum_exp_shifted`] for f32: [`exp_shifted_f32`] without the stores.
#[inline(always)]
fn sum_exp_shifted_f32(row: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += exp_f32(c[i] - shift);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&s| exp_f32(s - shift)).sum();
    tail + acc.iter().sum::<f32>()
}

/// Branch-free body of [`Float::exp_shifted`] for f32, written so it vectorises: eight
/// independent partial sums and [`exp_f32`] per lane.
#[inline(always)]
fn exp_shifted_f32(row: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            let e = exp_f32(c[i] - shift);
            c[i] = e;
            acc[i] += e;
        }
    }
    let mut sum = 0f32;
    for s in chunks.into_remainder() {
        *s = exp_f32(*s - shift);
        sum += *s;
    }
    sum + acc.iter().sum::<f32>()
}

/// `exp(x)` in f32 within ~2 ulp (Cephes `expf`): `x = n·ln2 + r`, a degree-6
/// polynomial in `r`, and `2ⁿ` built in the exponent bits. Inputs below −87 return
/// `exp(−87)` ≈ 1.6e-38 (never a denormal); the kernels only feed it `x ≤ 0`.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC; // round(x / ln 2)
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4; // x − n·ln 2 (two-part ln 2)
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let pow2 = ((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32; // 2ⁿ
    e * f32::from_bits(pow2)
}

/// Softmax of `row[a..z]` in place, zeroing the rest; returns the log-sum-exp of the
/// visible scores.
pub(crate) fn softmax_visible<T: Float>(row: &mut [T], (a, z): (usize, usize)) -> T {
    let max = T::max_of(&row[a..z]);
    let sum = T::exp_shifted(&mut row[a..z], max);
    let inv = T::one() / sum;
    for s in &mut row[a..z] {
        *s *= inv;
    }
    row[..a].fill(T::zero());
    row[z..].fill(T::zero());
    max + ln(sum)
}

/// `row[a..z] = exp(row[a..z] − lse)` (the saved softmax), zeroing the rest.
pub(crate) fn probs_from_lse<T: Float>(row: &mut [T], (a, z): (usize, usize), lse: T) {
    T::exp_shifted(&mut row[a..z], lse);
    row[..a].fill(T::zero());
    row[z..].fill(T::zero());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 88.0 * i as f32 / 200_000.0; // [-87, 1]
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst rel err {worst:e}");
        // the row form (both the AVX2 and the portable body) agrees with the scalar one
        let mut row: Vec<f32> = (0..37).map(|i| -0.37 * i as f32).collect();
        let want: Vec<f32> = row.iter().map(|&x| exp_f32(x - 0.5)).collect();
        let sum = f32::exp_shifted(&mut row, 0.5);
        assert_eq!(row, want);
        assert!((sum - want.iter().sum::<f32>()).abs() < 1e-5);
        assert_eq!(
            f32::max_of(&[1.0, -3.0, 7.5, 2.0, 0.0, 7.0, 1.0, 1.0, 1.0, 9.0]),
            9.0
        );
    }
}
