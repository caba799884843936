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
pub(crate) fn gemm<T: Real>(
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

/// Number of query blocks per (row, head).
pub(crate) fn blocks(tq: usize) -> usize {
    tq.div_ceil(BLOCK_Q)
}

/// Natural log through f64 (one call per query row, so precision over speed).
pub(crate) fn ln<T: Real>(x: T) -> T {
    T::from_f64(x.to_f64().ln())
}

/// Softmax of `row[a..z]` in place, zeroing the rest; returns the log-sum-exp of the
/// visible scores.
pub(crate) fn softmax_visible<T: Real>(row: &mut [T], (a, z): (usize, usize)) -> T {
    let mut max = row[a];
    for &s in &row[a + 1..z] {
        if s > max {
            max = s;
        }
    }
    let mut sum = T::zero();
    for s in &mut row[a..z] {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = T::one() / sum;
    for s in &mut row[a..z] {
        *s *= inv;
    }
    row[..a].fill(T::zero());
    row[z..].fill(T::zero());
    max + ln(sum)
}

/// `row[a..z] = exp(row[a..z] − lse)` (the saved softmax), zeroing the rest.
pub(crate) fn probs_from_lse<T: Real>(row: &mut [T], (a, z): (usize, usize), lse: T) {
    for s in &mut row[a..z] {
        *s = (*s - lse).exp();
    }
    row[..a].fill(T::zero());
    row[z..].fill(T::zero());
}
