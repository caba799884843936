//! Best-fit-decreasing packing of examples into rows of `max_length` tokens.
//!
//! This is TRL's `packing_strategy = "bfd"` (`_pack_bfd`, after "Fewer Truncations Improve
//! Language Modeling", Ding et al. 2024): examples are taken longest first (ties in dataset
//! order) and each goes into the open row with the *least* free space that still fits it,
//! rows with equal free space being used first-opened-first; a new row opens when none
//! fits. Examples longer than `max_length` are cut to it, never split. Key decision: the
//! packer returns only *indices* (which examples share a row, in which order), so it is a
//! pure function of the lengths that tests can check by hand; collation builds the rows and
//! their restarting `position_ids` (see `collate.rs`), and the model's document masking keeps
//! attention inside each example.

use std::collections::{BTreeMap, VecDeque};

/// Rows of example indices: `lengths[i]` is example `i`'s token count (zero-length ones are
/// skipped). Every row's total, each length capped at `max_length`, is at most `max_length`.
pub fn pack_bfd(lengths: &[usize], max_length: usize) -> Vec<Vec<usize>> {
    assert!(max_length > 0, "pack_bfd: max_length must be positive");
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i].min(max_length))); // stable: ties keep dataset order
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // free space → rows with exactly that much space left (> 0), oldest first
    let mut by_space: BTreeMap<usize, VecDeque<usize>> = BTreeMap::new();
    for i in order {
        let len = lengths[i].min(max_length);
        let fit = by_space.range(len..).next().map(|(&space, _)| space);
        let (row, space) = match fit {
            Some(space) => {
                let queue = by_space.get_mut(&space).expect("key just found");
                let row = queue.pop_front().expect("queues are never left empty");
                if queue.is_empty() {
                    by_space.remove(&space);
                }
                (row, space)
            }
            None => {
                rows.push(Vec::new());
                (rows.len() - 1, max_length)
            }
        };
        rows[row].push(i);
        if space > len {
            by_space.entry(space - len).or_default().push_back(row);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-checked, max_length 10, lengths [3, 8, 5, 2, 7, 3, 12]:
    /// descending order (ties in dataset order): 6(12→10), 1(8), 4(7), 2(5), 0(3), 5(3), 3(2).
    /// - 6 (10): no open row → row A = [6], full.
    /// - 1 (8):  new row B = [1], 2 free.
    /// - 4 (7):  nothing with ≥ 7 free → row C = [4], 3 free.
    /// - 2 (5):  nothing with ≥ 5 free → row D = [2], 5 free.
    /// - 0 (3):  best fit is C (3 free, the least that fits) → C = [4, 0], full.
    /// - 5 (3):  best fit is D (5 free) → D = [2, 5], 2 free.
    /// - 3 (2):  rows B and D both have 2 free; B opened first → B = [1, 3].
    #[test]
    fn bfd_matches_hand_packing() {
        let rows = pack_bfd(&[3, 8, 5, 2, 7, 3, 12], 10);
        assert_eq!(rows, vec![vec![6], vec![1, 3], vec![4, 0], vec![2, 5]]);
    }

    #[test]
    fn bfd_skips_empty_and_respects_capacity() {
        let lengths = [0, 1, 9, 4, 4, 4, 6, 2, 0, 10, 3];
        let rows = pack_bfd(&lengths, 10);
        let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, vec![1, 2, 3, 4, 5, 6, 7, 9, 10]);
        for row in &rows {
            assert!(
                row.iter().map(|&i| lengths[i]).sum::<usize>() <= 10,
                "{row:?}"
            );
        }
        // total 43 tokens → at least 5 rows; BFD reaches it here
        assert_eq!(rows.len(), 5);
    }
}
