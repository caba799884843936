//! Forward kernel: one rayon task per (row, query head, block of [`BLOCK_Q`] queries).
//!
//! Per task: `S = scale · Q_blk K[lo..hi]ᵀ` (BLOCK_Q × keys up to the causal limit,
//! starting at the first query's document start), a masked row softmax, then
//! `O_blk = P · V[lo..hi]`. The output is one flat buffer `[O (B·Hq·Tq·D) | lse
//! (B·Hq·Tq)]`, so `O` is a contiguous prefix and the backward can rebuild
//! `P = exp(S − lse)` without a second softmax.

use super::tile::{blocks, gemm, scratch, softmax_visible, Float, Tile, View, BLOCK_Q};
use super::Dims;
use rayon::prelude::*;

/// `[O | lse]`: `O` (B, Hq, Tq, D) then `lse` (B, Hq, Tq), flat, for contiguous `q`
/// (B, Hq, Tq, D), `k`/`v` (B, Hkv, Tk, D); `starts` is the document-start table (B·Tk).
pub(crate) fn forward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    starts: &[usize],
    dm: Dims,
    scale: f64,
) -> Vec<T> {
    let Dims {
        hq, hkv, tq, tk, d, ..
    } = dm;
    let mut out = vec![T::zero(); dm.b * hq * tq * (d + 1)];
    if out.is_empty() {
        return out;
    }
    let scale = T::from_f64(scale);
    let group = hq / hkv;
    let (o_all, lse_all) = out.split_at_mut(dm.b * hq * tq * d);
    // tasks: (b·Hq + h, block) → its disjoint output rows and lse entries
    let mut tasks: Vec<(usize, usize, &mut [T], &mut [T])> = Vec::new();
    for (bh, (o_head, lse_head)) in o_all
        .chunks_mut(tq * d)
        .zip(lse_all.chunks_mut(tq))
        .enumerate()
    {
        let blocks = o_head
            .chunks_mut(BLOCK_Q * d)
            .zip(lse_head.chunks_mut(BLOCK_Q));
        for (blk, (o, lse)) in blocks.enumerate() {
            tasks.push((bh, blk, o, lse));
        }
    }
    debug_assert_eq!(tasks.len(), dm.b * hq * blocks(tq));
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |scores, (bh, blk, o, lse)| {
            let (b, h) = (bh / hq, bh % hq);
            let kv = b * hkv + h / group; // flat (b, kv head)
            let tile = Tile::new(&dm, starts, b, blk);
            let (m, n) = (tile.rows(), tile.cols());
            let qb = &q[(bh * tq + tile.i0) * d..(bh * tq + tile.i1) * d]; // (m, D)
            let kb = &k[(kv * tk + tile.lo) * d..(kv * tk + tile.hi) * d]; // (n, D)
            let vb = &v[(kv * tk + tile.lo) * d..(kv * tk + tile.hi) * d]; // (n, D)
            let scores = scratch(scores, m * n);
            // S = scale · Q Kᵀ  (m, n)
            gemm(
                (m, n, d),
                scores,
                n,
                T::zero(),
                View::rows(qb, d),
                View::rows_t(kb, d),
                scale,
            );
            for r in 0..m {
                let vis = tile.visible(&dm, starts, b, r);
                lse[r] = softmax_visible(&mut scores[r * n..(r + 1) * n], vis);
            }
            // O = P V  (m, D)
            gemm(
                (m, d, n),
                o,
                d,
                T::zero(),
                View::rows(scores, n),
                View::rows(vb, d),
                T::one(),
            );
        });
    out
}
