//! A bf16 × bf16 → f32 GEMM on AVX512-BF16 (`vdpbf16ps`), for CPUs that have those
//! units but no AMX (AMD Zen 4/5, Intel Cooper Lake).
//!
//! Why it exists: on such CPUs MKL's `cblas_gemm_bf16bf16f32` runs no faster than its
//! f32 `sgemm` (measured on a Zen 4: the up projection 9.4 ms bf16 vs 9.0 ms f32), so
//! bf16 autocast bought nothing, while `vdpbf16ps` does twice the multiply-adds of an
//! f32 FMA per instruction. MKL's bf16 GEMM stays the choice on AMX CPUs.
//!
//! Shape (Goto-style, without cache blocking of `k`, which these sizes do not need):
//! - `op(A)` is packed into row panels of [`MR`] rows: for each pair of `k` indices
//!   `(2p, 2p + 1)`, the `MR` rows' two bf16 values as one `u32` each.
//! - `op(B)` is packed into column panels of [`NR`] columns in the same pair layout:
//!   one `u32` holds column `j`'s values at `k = 2p` and `2p + 1` (the "VNNI" layout).
//! - The micro-kernel broadcasts an `A` pair to all lanes and `vdpbf16ps`-accumulates
//!   it against three 16-column `B` vectors: `MR × 3` zmm accumulators (24 of 32).
//! - The kernel always computes full tiles: a missing odd `k` value packs as zero, and
//!   the packs' unused edge lanes (which may hold an earlier call's words: the pack
//!   buffers are reused per thread) only reach outputs the store clips away. The store
//!   applies `alpha` and `beta`.
//!
//! Numerics: every product of two bf16 values is exact in f32 and `vdpbf16ps`
//! accumulates in f32 with round-to-nearest-even, so the result is an f32 GEMM of the
//! bf16 inputs up to summation order — the contract of every backend's bf16 GEMM.
//! (The instruction treats denormal inputs as zero and flushes denormal results, as
//! training already does with FTZ/DAZ set.)

use super::{bf16, Geometry, Threads};

/// Rows of `op(A)` per packed panel and micro-tile.
const MR: usize = 8;
/// Columns of `op(B)` per packed panel and micro-tile (three zmm vectors of f32).
const NR: usize = 48;

/// Whether this CPU can run the kernel (x86_64 with AVX512F and AVX512-BF16).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C = alpha · op(A) · op(B) + beta · C` (BLAS convention, `C` not read when
/// `beta == 0`). The caller checks [`available`] first.
pub(super) fn gemm_bf16_f32(
    g: &Geometry,
    alpha: f32,
    a: &[bf16],
    b: &[bf16],
    beta: f32,
    c: &mut [f32],
    threads: Threads,
) {
    assert!(
        available(),
        "dpbf16 GEMM called on a CPU without AVX512-BF16"
    );
    let kp = g.k.div_ceil(2);
    let (m_panels, n_panels) = (g.m.div_ceil(MR), g.n.div_ceil(NR));
    let workers = match threads {
        Threads::All => candle_core::utils::get_num_threads().max(1),
        Threads::Single => 1,
    };
    // (m_panels, kp, MR) and (n_panels, kp, NR) pair words, in this thread's reused
    // buffers (padding lanes may hold stale words: they only reach discarded outputs)
    let mut buffers = PACKS.with(|p| p.take());
    let (packed_a, packed_b) = &mut buffers;
    let packed_a = sized(packed_a, m_panels * kp * MR);
    let packed_b = sized(packed_b, n_panels * kp * NR);
    let (a_rs, a_cs) = g.a_strides();
    let (b_rs, b_cs) = g.b_strides();
    for_each_panel(packed_a, kp * MR, workers, |panel, dst| {
        let rows = MR.min(g.m - panel * MR);
        // op(A)(i, p) = a[i·rs + p·cs]: rows are the panel's lanes
        // SAFETY: `available()` was asserted (AVX512F).
        unsafe { pack(dst, a, (panel * MR, rows), (a_rs, a_cs), g.k, MR) };
    });
    for_each_panel(packed_b, kp * NR, workers, |panel, dst| {
        let cols = NR.min(g.n - panel * NR);
        // op(B)(p, j) = b[p·rs + j·cs]: columns are the panel's lanes
        // SAFETY: as above.
        unsafe { pack(dst, b, (panel * NR, cols), (b_cs, b_rs), g.k, NR) };
    });

    // tiles in column-panel-major order, so consecutive tiles share a B panel (in L2);
    // each worker takes one contiguous run of them
    let tiles = m_panels * n_panels;
    let workers = workers.min(tiles);
    let out = SharedOut(c.as_mut_ptr(), c.len());
    let run = |worker: usize| {
        let mut acc = [0f32; MR * NR];
        for tile in tiles * worker / workers..tiles * (worker + 1) / workers {
            let (jp, ip) = (tile / m_panels, tile % m_panels);
            let pa = &packed_a[ip * kp * MR..(ip + 1) * kp * MR];
            let pb = &packed_b[jp * kp * NR..(jp + 1) * kp * NR];
            // SAFETY: `available()` was asserted; the packs hold `kp` pair rows each.
            unsafe { kernel(kp, pa, pb, &mut acc) };
            let rows = MR.min(g.m - ip * MR);
            let cols = NR.min(g.n - jp * NR);
            // SAFETY: tiles are disjoint, so no two workers write the same element, and
            // `Geometry::checked` verified that `C`'s extent lies inside the slice.
            unsafe { out.store(&acc, (ip * MR, rows), (jp * NR, cols), g.ldc, alpha, beta) };
        }
    };
    if workers == 1 {
        run(0);
    } else {
        use rayon::prelude::*;
        (0..workers).into_par_iter().for_each(run);
    }
    PACKS.with(|p| p.replace(buffers));
}

thread_local! {
    /// The calling thread's packing buffers, kept between calls (a nested call on the
    /// same thread finds them taken and allocates its own).
    static PACKS: std::cell::Cell<(Vec<u32>, Vec<u32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// `buf` grown to at least `len` words (new words zero), as a slice of exactly `len`.
fn sized(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// Fills `packed` (consecutive panels of `panel_len` words) with `f(panel, words)`, on
/// up to `workers` threads.
fn for_each_panel(
    packed: &mut [u32],
    panel_len: usize,
    workers: usize,
    f: impl Fn(usize, &mut [u32]) + Sync,
) {
    if panel_len == 0 {
        return;
    }
    if workers == 1 || packed.len() <= 64 * 1024 {
        packed
            .chunks_mut(panel_len)
            .enumerate()
            .for_each(|(i, p)| f(i, p));
    } else {
        use rayon::prelude::*;
        packed
            .par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(i, p)| f(i, p));
    }
}

/// Packs one panel: for each `k` pair `p` and lane `l < lanes`, the word
/// `x(first + l, 2p) | x(first + l, 2p + 1) << 16`, where `x(l, q) = src[l·lane_stride
/// + q·k_stride]`; lanes past `lanes` are left as they are and `q ≥ k` reads as zero.
/// `dst` is `(kp, width)`. Lanes-contiguous operands interleave two `k` rows (the loop
/// vectorises); `k`-contiguous ones are a transpose of pair words, 16 × 16 at a time.
///
/// # Safety
/// The CPU must support AVX512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack(
    dst: &mut [u32],
    src: &[bf16],
    (first, lanes): (usize, usize),
    (lane_stride, k_stride): (isize, isize),
    k: usize,
    width: usize,
) {
    let (ls, ks) = (lane_stride as usize, k_stride as usize);
    let word = |lo: bf16, hi: bf16| lo.to_bits() as u32 | (hi.to_bits() as u32) << 16;
    if ls == 1 {
        for p in 0..k.div_ceil(2) {
            let lo = &src[2 * p * ks + first..][..lanes];
            let out = &mut dst[p * width..][..lanes];
            if 2 * p + 1 < k {
                let hi = &src[(2 * p + 1) * ks + first..][..lanes];
                for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = word(l, h);
                }
            } else {
                for (o, &l) in out.iter_mut().zip(lo) {
                    *o = word(l, bf16::ZERO);
                }
            }
        }
        return;
    }
    let pairs = k / 2;
    if ks == 1 {
        for l0 in (0..lanes).step_by(16) {
            let rows = (lanes - l0).min(16);
            // the last lane's last full pair must lie inside `src`
            assert!(pairs == 0 || (first + l0 + rows - 1) * ls + 2 * pairs <= src.len());
            assert!(pairs == 0 || (pairs - 1) * width + l0 + rows <= dst.len());
            for p0 in (0..pairs).step_by(16) {
                let cols = (pairs - p0).min(16);
                // SAFETY: the asserts above bound every row read (pairs p0..p0+cols of
                // lanes l0..l0+rows) and every word written.
                transpose_16x16(
                    src.as_ptr().add((first + l0) * ls + 2 * p0) as *const u32,
                    ls / 2,
                    ls % 2 == 1,
                    (rows, cols),
                    dst.as_mut_ptr().add(p0 * width + l0),
                    width,
                );
            }
        }
    } else {
        for l in 0..lanes {
            let base = (first + l) * ls;
            for p in 0..pairs {
                dst[p * width + l] = word(src[base + 2 * p * ks], src[base + (2 * p + 1) * ks]);
            }
        }
    }
    if k % 2 == 1 {
        for l in 0..lanes {
            dst[pairs * width + l] = word(src[(first + l) * ls + (k - 1) * ks], bf16::ZERO);
        }
    }
}

/// `dst[c · dst_stride + r] = src_row_r[c]` for `r < rows`, `c < cols` (both ≤ 16),
/// where row `r` of the source starts `r · stride` words (plus half a word per row
/// when `odd_half`, for bf16 rows of odd length) after `src`.
///
/// # Safety
/// AVX512F; the `rows × cols` words read and written lie inside their allocations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16x16(
    src: *const u32,
    stride: usize,
    odd_half: bool,
    (rows, cols): (usize, usize),
    dst: *mut u32,
    dst_stride: usize,
) {
    use std::arch::x86_64::*;
    let col_mask: __mmask16 = ((1u32 << cols) - 1) as __mmask16;
    let row_mask: __mmask16 = ((1u32 << rows) - 1) as __mmask16;
    // every row is loaded (rows past `rows` with an empty mask: nothing is read), so
    // the loops have constant bounds and the arrays live in registers
    let mut r = [_mm512_setzero_si512(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        // byte offset of row i: i · (2·stride + odd_half) bf16 values
        let at = (src as *const u8).wrapping_add(i * (4 * stride + 2 * odd_half as usize));
        let mask = if i < rows { col_mask } else { 0 };
        *v = _mm512_maskz_loadu_epi32(mask, at as *const i32);
    }
    // 32-bit then 64-bit interleaves within 128-bit lanes: u[4i + q] lane j holds
    // column 4j + q of rows 4i..4i+4
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // 128-bit lane shuffles gather lane j of u[q], u[4 + q], u[8 + q], u[12 + q]
    for q in 0..4 {
        let w0 = _mm512_shuffle_i32x4::<0x88>(u[q], u[4 + q]);
        let w1 = _mm512_shuffle_i32x4::<0xDD>(u[q], u[4 + q]);
        let w2 = _mm512_shuffle_i32x4::<0x88>(u[8 + q], u[12 + q]);
        let w3 = _mm512_shuffle_i32x4::<0xDD>(u[8 + q], u[12 + q]);
        let out = [
            _mm512_shuffle_i32x4::<0x88>(w0, w2),
            _mm512_shuffle_i32x4::<0x88>(w1, w3),
            _mm512_shuffle_i32x4::<0xDD>(w0, w2),
            _mm512_shuffle_i32x4::<0xDD>(w1, w3),
        ];
        for (j, v) in out.iter().enumerate() {
            let c = 4 * j + q;
            let mask = if c < cols { row_mask } else { 0 };
            let at = dst.wrapping_add(c * dst_stride);
            _mm512_mask_storeu_epi32(at as *mut i32, mask, *v);
        }
    }
}

/// `acc (MR, NR) = Σ_p A_pair(p) · B_pair(p)` over `kp` pair rows of one `A` panel
/// `(kp, MR)` and one `B` panel `(kp, NR)`.
///
/// # Safety
/// The CPU must support AVX512F and AVX512-BF16; `a` and `b` hold `kp · MR` and
/// `kp · NR` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(kp: usize, a: &[u32], b: &[u32], acc: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut c = [_mm512_setzero_ps(); MR * 3];
    for p in 0..kp {
        let bp = b.add(p * NR) as *const __m512i;
        // SAFETY (transmutes): __m512i and __m512bh are both 64-byte vectors
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(1)));
        let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(2)));
        let ap = a.add(p * MR);
        for r in 0..MR {
            let ar: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
            c[3 * r] = _mm512_dpbf16_ps(c[3 * r], ar, b0);
            c[3 * r + 1] = _mm512_dpbf16_ps(c[3 * r + 1], ar, b1);
            c[3 * r + 2] = _mm512_dpbf16_ps(c[3 * r + 2], ar, b2);
        }
    }
    for (i, v) in c.iter().enumerate() {
        _mm512_storeu_ps(acc.as_mut_ptr().add(16 * i), *v);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack(
    _: &mut [u32],
    _: &[bf16],
    _: (usize, usize),
    _: (isize, isize),
    _: usize,
    _: usize,
) {
    unreachable!("dpbf16 packing on a non-x86_64 CPU")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: usize, _: &[u32], _: &[u32], _: &mut [f32; MR * NR]) {
    unreachable!("dpbf16 kernel on a non-x86_64 CPU")
}

/// `C`'s storage, written tile by tile from several workers.
struct SharedOut(*mut f32, usize);

// SAFETY: workers write disjoint tiles (see `gemm_bf16_f32`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// `C[i0 + r, j0 + j] = alpha · acc[r, j] + beta · C[..]` for `r < rows`, `j < cols`.
    ///
    /// # Safety
    /// The tile lies inside `C` and no other thread touches it meanwhile.
    unsafe fn store(
        &self,
        acc: &[f32; MR * NR],
        (i0, rows): (usize, usize),
        (j0, cols): (usize, usize),
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        for r in 0..rows {
            let start = (i0 + r) * ldc + j0;
            debug_assert!(start + cols <= self.1);
            let dst = std::slice::from_raw_parts_mut(self.0.add(start), cols);
            let src = &acc[r * NR..r * NR + cols];
            if beta == 0.0 {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = alpha * s;
                }
            } else {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = alpha * s + beta * *d;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Trans;
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<bf16> {
        let mut s = seed;
        (0..len)
            .map(|_| bf16::from_f32((crate::rng::splitmix64(&mut s) % 2001) as f32 / 1000.0 - 1.0))
            .collect()
    }

    /// Worst error against the f64 product of the same bf16 inputs, relative to
    /// `|alpha|·Σ|a·b| + |beta·c|` (the scale of f32 summation error).
    fn worst_error(
        ta: Trans,
        tb: Trans,
        (m, n, k): (usize, usize, usize),
        beta: f32,
        threads: Threads,
    ) -> f64 {
        let (lda, ldb, ldc) = (
            if ta == Trans::No { k } else { m } + 3,
            if tb == Trans::No { n } else { k } + 1,
            n + 2,
        );
        let a = values(if ta == Trans::No { m } else { k } * lda, 1);
        let b = values(if tb == Trans::No { k } else { n } * ldb, 2);
        let start: Vec<f32> = values(m * ldc, 3).iter().map(|v| v.to_f32()).collect();
        let mut c = start.clone();
        let alpha = 0.75f32;
        let g = Geometry::checked(
            "test",
            ta,
            tb,
            (m, n, k),
            (a.len(), lda),
            (b.len(), ldb),
            (c.len(), ldc),
        )
        .unwrap();
        gemm_bf16_f32(&g, alpha, &a, &b, beta, &mut c, threads);
        let (ars, acs) = g.a_strides();
        let (brs, bcs) = g.b_strides();
        let at = |i: usize, p: usize| a[i * ars as usize + p * acs as usize].to_f64();
        let bt = |p: usize, j: usize| b[p * brs as usize + j * bcs as usize].to_f64();
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j] as f64;
                if j >= n {
                    // outside C's columns: untouched
                    assert_eq!(got, start[i * ldc + j] as f64, "padding at ({i}, {j})");
                    continue;
                }
                let (mut want, mut scale) = (0f64, 0f64);
                for p in 0..k {
                    want += at(i, p) * bt(p, j);
                    scale += (at(i, p) * bt(p, j)).abs();
                }
                let prior = beta as f64 * start[i * ldc + j] as f64;
                let want = alpha as f64 * want + prior;
                let scale = alpha as f64 * scale + prior.abs() + 1e-30;
                worst = worst.max((got - want).abs() / scale);
            }
        }
        worst
    }

    #[test]
    fn equals_the_f64_product_of_the_bf16_inputs() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (8, 48, 2),
            (9, 49, 3),
            (17, 100, 77),
            (64, 96, 576),
            (3, 200, 1),
            (33, 5, 64),
            (4, 4, 0),
        ] {
            for ta in [Trans::No, Trans::Yes] {
                for tb in [Trans::No, Trans::Yes] {
                    for beta in [0.0, 1.0, -0.5] {
                        for threads in [Threads::Single, Threads::All] {
                            let err = worst_error(ta, tb, (m, n, k), beta, threads);
                            // f32 accumulation of exact products: a few ulps of the scale
                            assert!(
                                err <= 1e-6,
                                "{m}×{n}×{k} {ta:?}/{tb:?} beta {beta} {threads:?}: error {err:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_what_c_held() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return;
        }
        let (m, n, k) = (5, 7, 9);
        let a = values(m * k, 4);
        let b = values(k * n, 5);
        let mut c = vec![f32::NAN; m * n];
        let g = Geometry::checked(
            "test",
            Trans::No,
            Trans::No,
            (m, n, k),
            (a.len(), k),
            (b.len(), n),
            (c.len(), n),
        )
        .unwrap();
        gemm_bf16_f32(&g, 1.0, &a, &b, 0.0, &mut c, Threads::Single);
        assert!(c.iter().all(|v| v.is_finite()), "{c:?}");
    }
}
