//! Backward kernel (flash-attention 2 form): one rayon task per (row, key/value head),
//! which owns `dK`, `dV` of that head and `dQ` of the query heads of its group, so no
//! two tasks write the same element.
//!
//! Per query block of each head in the group, with `O`, `lse` read from the packed
//! forward output: `P = exp(scale · Q Kᵀ − lse)` (masked), `dV += Pᵀ dO`,
//! `dP = dO Vᵀ`, `dS = P ∘ (dP − rowsum(dO ∘ O))`, `dQ = scale · dS K`,
//! `dK += scale · dSᵀ Q`. Nothing `(Tq × Tk)`-sized is ever held.

use super::tile::{blocks, gemm, probs_from_lse, scratch, Float, Tile, View};
use super::Dims;
use rayon::prelude::*;

/// Gradients `(dq, dk, dv)` with the shapes of `q`, `k`, `v`, from contiguous inputs,
/// the packed forward output `packed` = `[O | lse]` (B, Hq, Tq, D + 1) and the upstream
/// gradient `grad` of the same packed shape (its lse column is ignored).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    packed: &[T],
    grad: &[T],
    starts: &[usize],
    dm: Dims,
    scale: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims {
        hq, hkv, tq, tk, d, ..
    } = dm;
    let w = d + 1;
    let group = hq / hkv;
    let mut dq = vec![T::zero(); q.len()];
    let mut dk = vec![T::zero(); k.len()];
    let mut dv = vec![T::zero(); v.len()];
    if q.is_empty() || k.is_empty() {
        return (dq, dk, dv);
    }
    let scale = T::from_f64(scale);
    dq.par_chunks_mut(group * tq * d)
        .zip(dk.par_chunks_mut(tk * d))
        .zip(dv.par_chunks_mut(tk * d))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(p, ds, rowdot), (kv, ((dq_g, dk_h), dv_h))| {
                let b = kv / hkv;
                for hg in 0..group {
                    let bh = kv * group + hg; // flat (b, query head)
                    for blk in 0..blocks(tq) {
                        let tile = Tile::new(&dm, starts, b, blk);
                        let (m, n) = (tile.rows(), tile.cols());
                        let rows = (bh * tq + tile.i0)..(bh * tq + tile.i1);
                        let qb = &q[rows.start * d..rows.end * d]; // (m, D)
                        let ob = &packed[rows.start * w..rows.end * w]; // (m, D+1)
                        let gb = &grad[rows.start * w..rows.end * w]; // (m, D+1)
                        let keys = (kv * tk + tile.lo) * d..(kv * tk + tile.hi) * d;
                        let (kb, vb) = (&k[keys.clone()], &v[keys]); // (n, D)
                        let (lo, hi) = (tile.lo * d, tile.hi * d);
                        let (p, ds) = (scratch(p, m * n), scratch(ds, m * n));
                        // P = exp(scale · Q Kᵀ − lse)  (m, n)
                        gemm(
                            (m, n, d),
                            p,
                            n,
                            T::zero(),
                            View::rows(qb, d),
                            View::rows_t(kb, d),
                            scale,
                        );
                        for r in 0..m {
                            let vis = tile.visible(&dm, starts, b, r);
                            probs_from_lse(&mut p[r * n..(r + 1) * n], vis, ob[r * w + d]);
                        }
                        // dV[lo..hi] += Pᵀ dO  (n, D)
                        gemm(
                            (n, d, m),
                            &mut dv_h[lo..hi],
                            d,
                            T::one(),
                            View::rows_t(p, n),
                            View::rows(gb, w),
                            T::one(),
                        );
                        // dP = dO Vᵀ  (m, n)
                        gemm(
                            (m, n, d),
                            ds,
                            n,
                            T::zero(),
                            View::rows(gb, w),
                            View::rows_t(vb, d),
                            T::one(),
                        );
                        // dS = P ∘ (dP − rowsum(dO ∘ O))
                        rowdot.clear();
                        rowdot.extend((0..m).map(|r| {
                            let (o, g) = (&ob[r * w..r * w + d], &gb[r * w..r * w + d]);
                            o.iter().zip(g).fold(T::zero(), |s, (&a, &b)| s + a * b)
                        }));
                        for r in 0..m {
                            let (a, z) = tile.visible(&dm, starts, b, r);
                            let (pr, dr) = (&p[r * n..(r + 1) * n], &mut ds[r * n..(r + 1) * n]);
                            for j in a..z {
                                dr[j] = pr[j] * (dr[j] - rowdot[r]);
                            }
                            dr[..a].fill(T::zero());
                            dr[z..].fill(T::zero());
                        }
                        // dQ = scale · dS K  (m, D)
                        let dq_rows = &mut dq_g[(hg * tq + tile.i0) * d..(hg * tq + tile.i1) * d];
                        gemm(
                            (m, d, n),
                            dq_rows,
                            d,
                            T::zero(),
                            View::rows(ds, n),
                            View::rows(kb, d),
                            scale,
                        );
                        // dK[lo..hi] += scale · dSᵀ Q  (n, D)
                        gemm(
                            (n, d, m),
                            &mut dk_h[lo..hi],
                            d,
                            T::one(),
                            View::rows_t(ds, n),
                            View::rows(qb, d),
                            scale,
                        );
                    }
                }
            },
        );
    (dq, dk, dv)
}
