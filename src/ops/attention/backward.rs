//! Backward kernel (flash-attention 2 form): one rayon task per (row, query head),
//! which owns that head's `dQ` and its own `dK`/`dV` (the key/value head's gradients
//! directly without GQA; private partials, summed over the group afterwards, with
//! GQA), so no two tasks write the same element and a single row still has `Hq` tasks.
//!
//! Per query block, with `O`, `lse` read from the saved forward output: `P = exp(scale · Q Kᵀ − lse)` (masked), `dV += Pᵀ dO`,
//! `dP = dO Vᵀ`, `dS = P ∘ (dP − rowsum(dO ∘ O))`, `dQ = scale · dS K`,
//! `dK += scale · dSᵀ Q`. Nothing `(Tq × Tk)`-sized is ever held.

use super::tile::{blocks, gemm, probs_from_lse, scratch, Float, Tile, View};
use super::Dims;
use rayon::prelude::*;

/// Gradients `(dq, dk, dv)` with the shapes of `q`, `k`, `v`.
pub(crate) fn backward<T: Float>(saved: &Saved<'_, T>) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims {
        hq, hkv, tq, tk, d, ..
    } = saved.dm;
    let group = hq / hkv;
    let mut dq = vec![T::zero(); saved.q.len()];
    let mut dk = vec![T::zero(); saved.k.len()];
    let mut dv = vec![T::zero(); saved.v.len()];
    if dq.is_empty() || dk.is_empty() {
        return (dq, dk, dv);
    }
    // With GQA each query head gets private dK/dV partials, summed over its group
    // afterwards; without it the head writes its own key/value head's gradients.
    let (mut dk_part, mut dv_part) = if group == 1 {
        (Vec::new(), Vec::new())
    } else {
        (
            vec![T::zero(); dq.len() / tq * tk],
            vec![T::zero(); dq.len() / tq * tk],
        )
    };
    {
        let (dk_t, dv_t) = if group == 1 {
            (&mut dk, &mut dv)
        } else {
            (&mut dk_part, &mut dv_part)
        };
        dq.par_chunks_mut(tq * d)
            .zip(dk_t.par_chunks_mut(tk * d))
            .zip(dv_t.par_chunks_mut(tk * d))
            .enumerate()
            .for_each_init(Scratch::default, |scr, (bh, ((dq_h, dk_h), dv_h))| {
                head_backward(saved, bh, (dq_h, dk_h, dv_h), scr);
            });
    }
    if group > 1 {
        let head = tk * d;
        for (out, part) in [(&mut dk, &dk_part), (&mut dv, &dv_part)] {
            out.par_chunks_mut(head).enumerate().for_each(|(kv, acc)| {
                for hg in 0..group {
                    let src = &part[(kv * group + hg) * head..(kv * group + hg + 1) * head];
                    for (a, &s) in acc.iter_mut().zip(src) {
                        *a += s;
                    }
                }
            });
        }
    }
    (dq, dk, dv)
}

/// What the backward reads, all contiguous.
pub(crate) struct Saved<'a, T> {
    /// Queries (B, Hq, Tq, D).
    pub q: &'a [T],
    /// Keys (B, Hkv, Tk, D).
    pub k: &'a [T],
    /// Values (B, Hkv, Tk, D).
    pub v: &'a [T],
    /// The forward's output (B, Hq, Tq, D).
    pub o: &'a [T],
    /// The forward's log-sum-exp per query (B, Hq, Tq).
    pub lse: &'a [T],
    /// Upstream gradient of `o` (B, Hq, Tq, D).
    pub grad: &'a [T],
    /// Document start of every key slot (B·Tk).
    pub starts: &'a [usize],
    /// Shapes.
    pub dm: Dims,
    /// Softmax scale.
    pub scale: T,
}

/// Scratch tiles of one worker: `P`, `dS` (BLOCK_Q × keys) and the row dots.
type Scratch<T> = (Vec<T>, Vec<T>, Vec<T>);

/// All query blocks of flat (row, query head) `bh`: writes its `dq_h` (Tq, D) and
/// accumulates into `dk_h`, `dv_h` (Tk, D).
fn head_backward<T: Float>(
    s: &Saved<'_, T>,
    bh: usize,
    (dq_h, dk_h, dv_h): (&mut [T], &mut [T], &mut [T]),
    (p, ds, rowdot): &mut Scratch<T>,
) {
    let Saved {
        q,
        k,
        v,
        o,
        lse,
        grad,
        starts,
        dm,
        scale,
    } = *s;
    let Dims {
        hq, hkv, tq, tk, d, ..
    } = dm;
    let (b, kv) = (bh / hq, bh / (hq / hkv)); // kv: flat (row, key/value head)
    for blk in 0..blocks(tq) {
        let tile = Tile::new(&dm, starts, b, blk);
        let (m, n) = (tile.rows(), tile.cols());
        let rows = (bh * tq + tile.i0)..(bh * tq + tile.i1);
        let qb = &q[rows.start * d..rows.end * d]; // (m, D)
        let ob = &o[rows.start * d..rows.end * d]; // (m, D)
        let gb = &grad[rows.start * d..rows.end * d]; // (m, D)
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
            probs_from_lse(&mut p[r * n..(r + 1) * n], vis, lse[rows.start + r]);
        }
        // dV[lo..hi] += Pᵀ dO  (n, D)
        gemm(
            (n, d, m),
            &mut dv_h[lo..hi],
            d,
            T::one(),
            View::rows_t(p, n),
            View::rows(gb, d),
            T::one(),
        );
        // dP = dO Vᵀ  (m, n)
        gemm(
            (m, n, d),
            ds,
            n,
            T::zero(),
            View::rows(gb, d),
            View::rows_t(vb, d),
            T::one(),
        );
        // dS = P ∘ (dP − rowsum(dO ∘ O))
        rowdot.clear();
        rowdot.extend((0..m).map(|r| {
            let (o, g) = (&ob[r * d..(r + 1) * d], &gb[r * d..(r + 1) * d]);
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
        let dq_rows = &mut dq_h[tile.i0 * d..tile.i1 * d];
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
