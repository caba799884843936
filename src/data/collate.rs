//! Examples → a [`TokenBatch`]: label shifting, right padding, packed rows.
//!
//! An [`SftExample`] marks *which tokens are targets*; the batch wants *what each position
//! predicts*: `labels[t] = input_ids[t + 1]` when token `t + 1` is a target, else
//! [`IGNORE_INDEX`]. Key decision: the shift happens per example, before rows are
//! concatenated, so the last token of one packed example never learns to predict the first
//! token of the next (TRL gets the same effect by ignoring labels where `position_ids == 0`).
//! Padding (right side, ignored labels) comes after every real token, so under causal
//! attention it changes no real position's logits.

use candle_core::Device;

use super::examples::SftExample;
use crate::error::{Error, Result};
use crate::train::{TokenBatch, IGNORE_INDEX};

/// Next-token labels of one example: `labels[t]` is the target at position `t`.
pub fn shifted_labels(ex: &SftExample) -> Vec<i64> {
    let n = ex.input_ids.len();
    (0..n)
        .map(|t| match t + 1 < n && ex.loss_mask[t + 1] == 1 {
            true => i64::from(ex.input_ids[t + 1]),
            false => IGNORE_INDEX,
        })
        .collect()
}

/// One example per row, right-padded with `pad_id` to the longest row; `position_ids` `None`.
pub fn padded_batch(examples: &[&SftExample], pad_id: u32, device: &Device) -> Result<TokenBatch> {
    let t = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    for ex in examples {
        check(ex)?;
        let pad = t - ex.input_ids.len();
        ids.push(
            ex.input_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad_id, pad))
                .collect::<Vec<_>>(),
        );
        labels.push(
            shifted_labels(ex)
                .into_iter()
                .chain(std::iter::repeat_n(IGNORE_INDEX, pad))
                .collect::<Vec<_>>(),
        );
    }
    TokenBatch::from_rows(&ids, None, &labels, device) // (B, T) each
}

/// Packed rows: row `r` concatenates `rows[r]`'s examples, with `position_ids` restarting
/// at 0 for each; rows are right-padded to the longest, the padding being a document of
/// its own (positions `0, 1, ...`) with ignored labels.
pub fn packed_batch(rows: &[Vec<&SftExample>], pad_id: u32, device: &Device) -> Result<TokenBatch> {
    let len = |row: &Vec<&SftExample>| row.iter().map(|e| e.input_ids.len()).sum::<usize>();
    let t = rows.iter().map(len).max().unwrap_or(0);
    let (mut ids, mut pos, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let (mut i, mut p, mut l) = (
            Vec::with_capacity(t),
            Vec::with_capacity(t),
            Vec::with_capacity(t),
        );
        for ex in row {
            check(ex)?;
            i.extend_from_slice(&ex.input_ids);
            p.extend(0..ex.input_ids.len() as u32);
            l.extend(shifted_labels(ex));
        }
        let pad = t - i.len();
        i.extend(std::iter::repeat_n(pad_id, pad));
        p.extend(0..pad as u32);
        l.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        ids.push(i);
        pos.push(p);
        labels.push(l);
    }
    TokenBatch::from_rows(&ids, Some(&pos), &labels, device) // (B, T) each
}

fn check(ex: &SftExample) -> Result<()> {
    if ex.input_ids.len() != ex.loss_mask.len() {
        return Err(Error::Invalid(format!(
            "SftExample has {} tokens but a loss mask of {}",
            ex.input_ids.len(),
            ex.loss_mask.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], mask: &[u8]) -> SftExample {
        SftExample {
            input_ids: ids.to_vec(),
            loss_mask: mask.to_vec(),
        }
    }

    #[test]
    fn labels_shift_and_respect_mask() {
        // tokens 10 11 12 13, targets 12 and 13 → position 1 predicts 12, position 2 predicts 13
        let e = ex(&[10, 11, 12, 13], &[0, 0, 1, 1]);
        assert_eq!(shifted_labels(&e), vec![IGNORE_INDEX, 12, 13, IGNORE_INDEX]);
    }

    #[test]
    fn packed_rows_restart_positions_and_never_cross_examples() {
        let (a, b, c) = (
            ex(&[1, 2, 3], &[1, 1, 1]),
            ex(&[4, 5], &[1, 1]),
            ex(&[6], &[1]),
        );
        let batch = packed_batch(&[vec![&a, &b], vec![&c]], 0, &Device::Cpu).unwrap();
        let pos = batch.position_ids.unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(pos, vec![vec![0, 1, 2, 0, 1], vec![0, 0, 1, 2, 3]]);
        let labels = batch.labels.to_vec2::<i64>().unwrap();
        let ig = IGNORE_INDEX;
        // 3 → 4 crosses the example boundary: ignored
        assert_eq!(
            labels,
            vec![vec![2, 3, ig, 5, ig], vec![ig, ig, ig, ig, ig]]
        );
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap()[1],
            vec![6, 0, 0, 0, 0]
        );
    }

    #[test]
    fn mismatched_mask_is_an_error() {
        let bad = ex(&[1, 2, 3], &[1, 1]);
        assert!(padded_batch(&[&bad], 0, &Device::Cpu).is_err());
    }
}
