//! The row kernels of a decode step on plain slices: RMSNorm, rotary embedding,
//! attention over the cached keys, and the linear layers (team-split skinny GEMM for
//! a few rows, the GEMM backend for a prompt).
//!
//! Each computes what the model's fused ops compute ([`crate::ops`]) in the same
//! order of operations where it is cheap to (RMSNorm's `x · r · w`, rope's
//! rotate-half, a max-shifted softmax), so a session's logits equal
//! [`Model::decode`](crate::model::Model::decode)'s to float rounding.

use crate::ops::gemm::{self, Threads, Trans};
use crate::ops::skinny_gemm::{dot, matmul_wt_rows, SharedMatrix};
use crate::ops::Float;
use crate::runtime::team::{share, WorkerTeam};
use candle_core::Result;

/// Rows up to which a linear layer streams its weights through the skinny kernel;
/// above, the product is compute-bound and the GEMM backend wins.
pub(super) const SKINNY_ROWS: usize = 16;

/// Weight rows per unit of work handed to a worker (the skinny kernel's block).
const UNIT_ROWS: usize = 16;

/// `y = x · r · w` per row of `x` `(rows, h)` with `r = 1 / sqrt(mean(x²) + eps)`.
pub(super) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f64, y: &mut [f32]) {
    let h = w.len();
    for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let r = 1.0 / (ss / h as f32 + eps as f32).sqrt();
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * r * g;
        }
    }
}

/// [`rms_norm_rows`] in place, per `w.len()`-long row of `x` (a q/k norm per head).
pub(super) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f64) {
    let h = w.len();
    for xr in x.chunks_exact_mut(h) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let r = 1.0 / (ss / h as f32 + eps as f32).sqrt();
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * r * g;
        }
    }
}

/// Rotates every head `(d)` of one token's `heads` (`n · d` values) by the angles
/// whose cosines/sines are `cos`, `sin` (`d / 2` each): rotate-half, non-interleaved.
pub(super) fn rope_heads(heads: &mut [f32], d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for head in heads.chunks_exact_mut(d) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

/// One linear layer's weight `(n, k)` and where its `(rows, n)` output goes.
pub(super) struct LinearPart<'a> {
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
    /// Add the product to `out` (a residual) instead of overwriting it.
    pub accumulate: bool,
}

/// `out (+)= x (rows, k) · Wᵀ (+ bias)` for each part, all sharing the input `x`.
/// A few rows: one team region over every part's weight rows; more: the GEMM backend.
pub(super) fn linear(
    team: &WorkerTeam,
    x: &[f32],
    rows: usize,
    k: usize,
    parts: &mut [LinearPart<'_>],
) -> Result<()> {
    if rows <= SKINNY_ROWS {
        // (weight, its rows, output, accumulate, bias) per part
        type Shared<'a> = (&'a [f32], usize, SharedMatrix<'a>, bool, Option<&'a [f32]>);
        let shared: Vec<Shared<'_>> = parts
            .iter_mut()
            .map(|p| {
                let n = p.w.len() / k;
                (
                    p.w,
                    n,
                    SharedMatrix::new(&mut p.out[..rows * n], rows, n),
                    p.accumulate,
                    p.bias,
                )
            })
            .collect();
        let units: Vec<usize> = shared.iter().map(|s| s.1.div_ceil(UNIT_ROWS)).collect();
        let total: usize = units.iter().sum();
        team.run(|worker, workers| {
            let mine = share(total, worker, workers);
            let mut first = 0;
            for (part, &count) in shared.iter().zip(&units) {
                let (a, z) = (mine.start.max(first), mine.end.min(first + count));
                if a < z {
                    let (w, n, out, accumulate, bias) = *part;
                    let cols = (a - first) * UNIT_ROWS..((z - first) * UNIT_ROWS).min(n);
                    matmul_wt_rows(x, k, w, cols.clone(), out, accumulate);
                    if let Some(b) = bias {
                        for r in 0..rows {
                            // SAFETY: these columns belong to this worker's share.
                            let o = unsafe { out.cols_mut(r, cols.clone()) };
                            o.iter_mut()
                                .zip(&b[cols.clone()])
                                .for_each(|(o, b)| *o += b);
                        }
                    }
                }
                first += count;
            }
        });
        return Ok(());
    }
    for p in parts.iter_mut() {
        let n = p.w.len() / k;
        let beta = if p.accumulate { 1.0 } else { 0.0 };
        let out = &mut p.out[..rows * n];
        gemm::sgemm(
            Trans::No,
            Trans::Yes,
            rows,
            n,
            k,
            1.0,
            x,
            k,
            p.w,
            k,
            beta,
            out,
            n,
            Threads::All,
        )?;
        if let Some(b) = p.bias {
            for row in out.chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
    }
    Ok(())
}

/// `act = silu(x · Gᵀ) ⊙ (x · Uᵀ)` `(rows, i)`, with `gate`, `up` `(rows, i)` as scratch.
#[allow(clippy::too_many_arguments)]
pub(super) fn gated_mlp(
    team: &WorkerTeam,
    x: &[f32],
    rows: usize,
    k: usize,
    (g_w, g_b): (&[f32], Option<&[f32]>),
    (u_w, u_b): (&[f32], Option<&[f32]>),
    gate: &mut [f32],
    up: &mut [f32],
    act: &mut [f32],
) -> Result<()> {
    let i = g_w.len() / k;
    let (gate, up, act) = (
        &mut gate[..rows * i],
        &mut up[..rows * i],
        &mut act[..rows * i],
    );
    if rows <= SKINNY_ROWS {
        // each worker owns a column range of gate, up and act: no barrier in between
        let (gm, um, am) = (
            SharedMatrix::new(gate, rows, i),
            SharedMatrix::new(up, rows, i),
            SharedMatrix::new(act, rows, i),
        );
        let units = i.div_ceil(UNIT_ROWS);
        team.run(|worker, workers| {
            let mine = share(units, worker, workers);
            let cols = mine.start * UNIT_ROWS..(mine.end * UNIT_ROWS).min(i);
            if cols.is_empty() {
                return;
            }
            matmul_wt_rows(x, k, g_w, cols.clone(), gm, false);
            matmul_wt_rows(x, k, u_w, cols.clone(), um, false);
            for r in 0..rows {
                // SAFETY: these columns belong to this worker's share.
                let (g, u, a) = unsafe {
                    (
                        gm.cols_mut(r, cols.clone()),
                        um.cols_mut(r, cols.clone()),
                        am.cols_mut(r, cols.clone()),
                    )
                };
                add_bias(g, g_b.map(|b| &b[cols.clone()]));
                add_bias(u, u_b.map(|b| &b[cols.clone()]));
                crate::ops::swiglu_forward_f32(g, u, a);
            }
        });
        return Ok(());
    }
    let mut parts = [
        LinearPart {
            w: g_w,
            bias: g_b,
            out: gate,
            accumulate: false,
        },
        LinearPart {
            w: u_w,
            bias: u_b,
            out: up,
            accumulate: false,
        },
    ];
    linear(team, x, rows, k, &mut parts)?;
    let [LinearPart { out: gate, .. }, LinearPart { out: up, .. }] = parts;
    let (gate, up) = (&*gate, &*up);
    let am = SharedMatrix::new(act, rows, i);
    team.for_each(rows, |r| {
        // SAFETY: row r belongs to this index.
        let a = unsafe { am.cols_mut(r, 0..i) };
        crate::ops::swiglu_forward_f32(&gate[r * i..(r + 1) * i], &up[r * i..(r + 1) * i], a);
    });
    Ok(())
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        x.iter_mut().zip(b).for_each(|(x, b)| *x += b);
    }
}

/// Where one layer's cached keys and values live, and how heads are grouped.
#[derive(Clone, Copy)]
pub(super) struct CacheView<'a> {
    /// `(B, capacity, KV, D)` each.
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub capacity: usize,
    pub kv_heads: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Attention of one query token of row `b` over slots `first..=last` of the cache,
/// for the query heads of key/value group `g`: `q` is the token's `(heads · D)`
/// query, `out` the group's `(heads / KV · D)` slice of its output. `scores` is
/// scratch of at least `last + 1` values.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend(
    cache: CacheView<'_>,
    b: usize,
    g: usize,
    (first, last): (usize, usize),
    q: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = cache.head_dim;
    let group = cache.heads / cache.kv_heads;
    let slot = |s: usize| ((b * cache.capacity + s) * cache.kv_heads + g) * d;
    #[cfg(target_arch = "x86_64")]
    let wide = avx512::supports(d) && crate::ops::skinny_gemm::has_avx512();
    for (j, h) in (g * group..(g + 1) * group).enumerate() {
        let o = &mut out[j * d..(j + 1) * d];
        o.fill(0.0);
        if first > last {
            continue; // a padding position sees nothing
        }
        let qh = &q[h * d..(h + 1) * d];
        let sc = &mut scores[first..=last];
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: AVX-512F is present and the loops take d; the
            // slots first..=last of row b, group g lie inside the cache (capacity-checked
            // by the session).
            unsafe {
                avx512::scores(cache.keys, slot(first), cache.kv_heads * d, qh, scale, sc);
                let sum = f32::exp_shifted(sc, f32::max_of(sc));
                avx512::weighted_sum(
                    cache.values,
                    slot(first),
                    cache.kv_heads * d,
                    sc,
                    1.0 / sum,
                    o,
                );
            }
            continue;
        }
        for (s, v) in (first..=last).zip(sc.iter_mut()) {
            *v = dot(qh, &cache.keys[slot(s)..slot(s) + d]) * scale;
        }
        let max = f32::max_of(sc);
        let sum = f32::exp_shifted(sc, max);
        let inv = 1.0 / sum;
        for (s, &p) in (first..=last).zip(sc.iter()) {
            axpy(p * inv, &cache.values[slot(s)..slot(s) + d], o);
        }
    }
}

/// The attention loops in AVX-512 lanes: 16 keys' dot products reduced in one shuffle
/// tree, and the weighted sum of values kept in registers. Monomorphised per head
/// dimension (`C` chunks of 16) so the loops unroll and the query stays in registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::ops::skinny_gemm::avx512::reduce16;
    use std::arch::x86_64::*;

    /// Whether these loops take a head dimension of `d`.
    pub fn supports(d: usize) -> bool {
        matches!(d, 16 | 32 | 64 | 128)
    }

    /// `scores[t] = scale · q · keys[at + t·stride ..][..d]` for every `t`.
    ///
    /// # Safety
    /// AVX-512F; `supports(q.len())`; every key in bounds.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(
        keys: &[f32],
        at: usize,
        stride: usize,
        q: &[f32],
        scale: f32,
        out: &mut [f32],
    ) {
        assert!(out.is_empty() || at + (out.len() - 1) * stride + q.len() <= keys.len());
        match q.len() / 16 {
            1 => scores_c::<1>(keys.as_ptr().add(at), stride, q, scale, out),
            2 => scores_c::<2>(keys.as_ptr().add(at), stride, q, scale, out),
            4 => scores_c::<4>(keys.as_ptr().add(at), stride, q, scale, out),
            8 => scores_c::<8>(keys.as_ptr().add(at), stride, q, scale, out),
            _ => unreachable!("checked by supports()"),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dot_c<const C: usize>(q: &[__m512; C], k: *const f32) -> __m512 {
        let mut acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(k));
        let mut c = 1;
        while c < C {
            acc = _mm512_fmadd_ps(q[c], _mm512_loadu_ps(k.add(16 * c)), acc);
            c += 1;
        }
        acc
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn scores_c<const C: usize>(
        kp: *const f32,
        stride: usize,
        q: &[f32],
        scale: f32,
        out: &mut [f32],
    ) {
        let mut qv = [_mm512_setzero_ps(); C];
        for (c, v) in qv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(q.as_ptr().add(16 * c));
        }
        let n = out.len();
        let scale_v = _mm512_set1_ps(scale);
        let mut t = 0;
        while t + 16 <= n {
            let mut v = [_mm512_setzero_ps(); 16];
            for (i, vi) in v.iter_mut().enumerate() {
                *vi = dot_c::<C>(&qv, kp.add((t + i) * stride));
            }
            _mm512_storeu_ps(
                out.as_mut_ptr().add(t),
                _mm512_mul_ps(reduce16(&v), scale_v),
            );
            t += 16;
        }
        while t < n {
            out[t] = _mm512_reduce_add_ps(dot_c::<C>(&qv, kp.add(t * stride))) * scale;
            t += 1;
        }
    }

    /// `out = inv · Σ_t p[t] · values[at + t·stride ..][..d]`.
    ///
    /// # Safety
    /// As [`scores`], with `d = out.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum(
        values: &[f32],
        at: usize,
        stride: usize,
        p: &[f32],
        inv: f32,
        out: &mut [f32],
    ) {
        assert!(p.is_empty() || at + (p.len() - 1) * stride + out.len() <= values.len());
        let vp = values.as_ptr().add(at);
        match out.len() / 16 {
            1 => weighted_sum_c::<1>(vp, stride, p, inv, out),
            2 => weighted_sum_c::<2>(vp, stride, p, inv, out),
            4 => weighted_sum_c::<4>(vp, stride, p, inv, out),
            8 => weighted_sum_c::<8>(vp, stride, p, inv, out),
            _ => unreachable!("checked by supports()"),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn weighted_sum_c<const C: usize>(
        vp: *const f32,
        stride: usize,
        p: &[f32],
        inv: f32,
        out: &mut [f32],
    ) {
        let mut acc = [_mm512_setzero_ps(); C];
        for (t, &pt) in p.iter().enumerate() {
            let w = _mm512_set1_ps(pt);
            let row = vp.add(t * stride);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(row.add(16 * c)), *a);
            }
        }
        let inv = _mm512_set1_ps(inv);
        for (c, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(*a, inv));
        }
    }
}

fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}
