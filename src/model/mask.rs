//! Attention masks: causal, confined to each packed document.
//!
//! A packed row holds several documents back to back; `position_ids` restart at each
//! document. A token starts a new document when its position is not the previous
//! token's position + 1 (so a row whose positions are `0 1 2 0 1 0 1 2 3` holds three
//! documents). Token `i` may attend to token `j` iff `j <= i` and both lie in the same
//! document: no information crosses a document boundary.
//!
//! Two encodings of the same rule: the reference path adds an explicit `(B, 1, Tq, Tk)`
//! mask to the scores; the fused path hands [`crate::ops::fused_attention`] one
//! document id per key slot (`segments`, `(B, Tk)`) and never builds a mask tensor.

use candle_core::{Device, Result, Tensor};

/// Large negative value used for masked scores (finite, so `0 * mask` never makes NaN).
pub const MASKED: f32 = -1e30;

/// Document index of every token in each row, from its positions.
pub fn document_ids(positions: &[Vec<u32>]) -> Vec<Vec<u32>> {
    positions
        .iter()
        .map(|row| {
            let mut doc = 0u32;
            row.iter()
                .enumerate()
                .map(|(t, &p)| {
                    if t > 0 && p != row[t - 1].wrapping_add(1) {
                        doc += 1;
                    }
                    doc
                })
                .collect()
        })
        .collect()
}

/// Segment ids `(B, T)` for packed rows ([`document_ids`]), or `None` when no row
/// holds more than one document (plain causal attention needs no segments).
pub fn packed_segments(positions: &[Vec<u32>], device: &Device) -> Result<Option<Tensor>> {
    let docs = document_ids(positions);
    if docs.iter().all(|row| row.last().copied().unwrap_or(0) == 0) {
        return Ok(None);
    }
    Tensor::new(docs, device).map(Some)
}

/// Segment ids `(B, T_total)` for left-padded decoding: row `r`'s first `left_pad[r]`
/// slots are segment 0 (padding, attended only by padding queries, whose outputs are
/// never used) and the rest segment 1. `None` when no row is padded.
pub fn left_padded_segments(
    left_pad: &[usize],
    total: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    if left_pad.iter().all(|&p| p == 0) {
        return Ok(None);
    }
    let rows: Vec<Vec<u32>> = left_pad
        .iter()
        .map(|&pad| (0..total).map(|j| u32::from(j >= pad)).collect())
        .collect();
    Tensor::new(rows, device).map(Some)
}

/// Additive mask `(B, 1, T, T)` (0 = attend, [`MASKED`] = blocked) for packed rows,
/// or `(1, 1, T, T)` plain causal when no row holds more than one document.
pub fn packed_causal(positions: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let docs = document_ids(positions);
    let t = positions.first().map_or(0, |r| r.len());
    let single_doc = docs.iter().all(|row| row.last().copied().unwrap_or(0) == 0);
    let rows: Vec<&Vec<u32>> = if single_doc {
        docs.iter().take(1).collect()
    } else {
        docs.iter().collect()
    };
    let mut mask = Vec::with_capacity(rows.len() * t * t);
    for doc in &rows {
        for i in 0..t {
            for j in 0..t {
                mask.push(if j <= i && doc[i] == doc[j] {
                    0.0
                } else {
                    MASKED
                });
            }
        }
    }
    Tensor::from_vec(mask, (rows.len(), 1, t, t), device)
}

/// Additive mask `(1, 1, T_new, T_past + T_new)` for `t_new` tokens appended after
/// `t_past` cached ones: all the past is visible, the new tokens are causal among
/// themselves. `None` when a single token is decoded (nothing to mask).
pub fn decode_causal(t_past: usize, t_new: usize, device: &Device) -> Result<Option<Tensor>> {
    if t_new <= 1 {
        return Ok(None);
    }
    let total = t_past + t_new;
    let mut mask = Vec::with_capacity(t_new * total);
    for i in 0..t_new {
        for j in 0..total {
            mask.push(if j <= t_past + i { 0.0 } else { MASKED });
        }
    }
    Ok(Some(Tensor::from_vec(mask, (1, 1, t_new, total), device)?))
}

/// Additive mask `(B, 1, T_new, T_past + T_new)` for batched decoding of left-padded
/// rows: row `r`'s first `left_pad[r]` slots (cached or new) are padding and never
/// attended; otherwise as [`decode_causal`]. A padding query attends only to itself (so
/// its softmax stays finite; its output is never used). `None` when no row is padded
/// and a single token is decoded.
pub fn decode_left_padded(
    left_pad: &[usize],
    t_past: usize,
    t_new: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    if left_pad.iter().all(|&p| p == 0) {
        return decode_causal(t_past, t_new, device);
    }
    let total = t_past + t_new;
    let mut mask = Vec::with_capacity(left_pad.len() * t_new * total);
    for &pad in left_pad {
        for i in 0..t_new {
            let q = t_past + i; // the query's slot
            for j in 0..total {
                let visible = if q < pad { j == q } else { j >= pad && j <= q };
                mask.push(if visible { 0.0 } else { MASKED });
            }
        }
    }
    Ok(Some(Tensor::from_vec(
        mask,
        (left_pad.len(), 1, t_new, total),
        device,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_where_positions_restart() {
        let docs = document_ids(&[vec![0, 1, 2, 0, 1, 0, 1, 2, 3], vec![5, 6, 7, 0]]);
        assert_eq!(docs[0], vec![0, 0, 0, 1, 1, 2, 2, 2, 2]);
        assert_eq!(docs[1], vec![0, 0, 0, 1]);
    }

    #[test]
    fn packed_mask_blocks_other_documents_and_future() {
        let m = packed_causal(&[vec![0, 1, 0, 1]], &Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let allowed: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|&v| v == 0.0).collect())
            .collect();
        assert_eq!(allowed[1], vec![true, true, false, false]);
        assert_eq!(allowed[2], vec![false, false, true, false]);
        assert_eq!(allowed[3], vec![false, false, true, true]);
    }

    #[test]
    fn decode_mask_sees_the_past() {
        assert!(decode_causal(5, 1, &Device::Cpu).unwrap().is_none());
        let m = decode_causal(2, 2, &Device::Cpu).unwrap().unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, 0.0, MASKED]);
        assert_eq!(m[1], vec![0.0; 4]);
    }

    #[test]
    fn segments_follow_documents_and_padding() {
        let dev = Device::Cpu;
        assert!(packed_segments(&[vec![0, 1, 2]], &dev).unwrap().is_none());
        let s = packed_segments(&[vec![0, 1, 0], vec![0, 1, 2]], &dev)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.to_vec2::<u32>().unwrap(),
            vec![vec![0, 0, 1], vec![0, 0, 0]]
        );
        assert!(left_padded_segments(&[0, 0], 3, &dev).unwrap().is_none());
        let s = left_padded_segments(&[0, 2], 3, &dev).unwrap().unwrap();
        assert_eq!(
            s.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![0, 0, 1]]
        );
    }

    #[test]
    fn left_padded_mask_hides_each_rows_padding() {
        let m = decode_left_padded(&[0, 2], 3, 1, &Device::Cpu)
            .unwrap()
            .unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(1).unwrap().squeeze(1).unwrap().to_vec2().unwrap();
        assert_eq!(m[0], vec![0.0; 4]);
        assert_eq!(m[1], vec![MASKED, MASKED, 0.0, 0.0]);
        assert!(decode_left_padded(&[0, 0], 3, 1, &Device::Cpu)
            .unwrap()
            .is_none());
    }
}
