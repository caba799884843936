//! Per-rank rollout seeds (the SmolLM3 tensor-parallel seed lesson applied to data
//! parallelism): with `smelt::dist::rank_seed`, as `run_grpo` seeds its prompt source,
//! every rank samples other prompts with other per-sample seeds, and each rank's stream
//! is the same on every run; rank 0 keeps the configured seed, so one process is unchanged.

use smelt::dist::rank_seed;
use smelt_rollouts::service::{CyclingPrompts, PromptRow, PromptSource};

fn rows() -> Vec<(Vec<u32>, serde_json::Value)> {
    (0..64u32)
        .map(|i| (vec![i + 1, 7], serde_json::json!({ "answer": i })))
        .collect()
}

fn stream(seed: u64, rank: usize) -> Vec<PromptRow> {
    let mut source = CyclingPrompts::new(rows(), 8, rank_seed(seed, rank)).unwrap();
    (0..4).flat_map(|b| source.batch(b).unwrap()).collect()
}

#[test]
fn rollout_streams_differ_per_rank_and_reproduce() {
    let per_rank: Vec<Vec<PromptRow>> = (0..4).map(|r| stream(42, r)).collect();
    for (r, s) in per_rank.iter().enumerate() {
        assert_eq!(s, &stream(42, r), "rank {r} is not reproducible");
        for (q, t) in per_rank.iter().enumerate().skip(r + 1) {
            let seeds_r: Vec<u64> = s.iter().map(|p| p.seed).collect();
            assert!(
                t.iter().all(|p| !seeds_r.contains(&p.seed)),
                "ranks {r} and {q} share sampling seeds"
            );
            let order_r: Vec<u64> = s.iter().map(|p| p.index).collect();
            let order_q: Vec<u64> = t.iter().map(|p| p.index).collect();
            assert_ne!(
                order_r, order_q,
                "ranks {r} and {q} see the same prompt order"
            );
        }
    }
    // rank 0 is the single-process stream
    let mut single = CyclingPrompts::new(rows(), 8, 42).unwrap();
    assert_eq!(per_rank[0][..8], single.batch(0).unwrap()[..]);
}
