//! Data parallelism in the one training loop, with N ranks as threads of this test
//! process joined through the test-only loopback TCP backend (`TcpTestComm`):
//! - the communicator's collectives (sum, broadcast, barrier, bucketed gradients);
//! - N = 2 and N = 4 ranks give the losses and final weights of 1 rank with N×
//!   accumulation (≤ 1e-5 relative);
//! - parameter init is identical on every rank even when each rank's own init differs
//!   (rank 0's weights are broadcast), and each rank trains on its own, reproducible
//!   share of the data;
//! - a resumed N-rank run reproduces the uninterrupted one bit for bit, and resuming
//!   with another world size fails naming both sizes;
//! - a per-rank source (each rank samples its own data from `rank_seed`, as GRPO's
//!   rollouts do) gives distinct, reproducible streams per rank and resumes exactly
//!   from each rank's own saved cursor.

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use smelt::dist::{all_reduce_grads, rank_seed, Communicator, DistEnv, EnvSource, TcpTestComm};
use smelt::telemetry::MetricsLog;
use smelt::train::{
    Algorithm, BatchSource, LossOutput, NextTokenLoss, TokenBatch, TrainConfig, Trainer,
    IGNORE_INDEX,
};
use smelt::{Model, ModelConfig, ModelType, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VOCAB: usize = 61;
const T: usize = 12;

/// A free TCP port on the loopback interface for one test's rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env(rank: usize, world: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        world_size: world,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        source: EnvSource::Torchrun,
    }
}

fn comm(rank: usize, world: usize, port: u16) -> TcpTestComm {
    TcpTestComm::connect(&env(rank, world, port), Duration::from_secs(60)).unwrap()
}

/// Runs `f(rank)` on `world` threads and returns their results in rank order.
fn ranks<R: Send + 'static>(
    world: usize,
    f: impl Fn(usize) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let f = f.clone();
            std::thread::spawn(move || f(r))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Row `i`: deterministic tokens; the first `i % 4` labels ignored, so micro-batches
/// carry different numbers of trained tokens (the normalisation must account for it).
fn row(i: usize) -> (Vec<u32>, Vec<i64>) {
    let ids: Vec<u32> = (0..T)
        .map(|t| ((i * 7 + t * 13 + (i * t) % 5) % VOCAB) as u32)
        .collect();
    let mut labels: Vec<i64> = ids[1..]
        .iter()
        .map(|&x| x as i64)
        .chain([IGNORE_INDEX])
        .collect();
    labels
        .iter_mut()
        .take(i % 4)
        .for_each(|l| *l = IGNORE_INDEX);
    (ids, labels)
}

/// In-memory source of `rows_per_batch` consecutive rows per micro-batch.
struct RowSource {
    rows_per_batch: usize,
    next_row: usize,
}

impl BatchSource<TokenBatch> for RowSource {
    fn next_batch(&mut self) -> Result<Option<TokenBatch>> {
        let start = self.next_row % 400;
        let (ids, labels): (Vec<_>, Vec<_>) = (start..start + self.rows_per_batch).map(row).unzip();
        self.next_row += self.rows_per_batch;
        TokenBatch::from_rows(&ids, None, &labels, &Device::Cpu).map(Some)
    }
    fn cursor(&self) -> Value {
        json!({ "next_row": self.next_row })
    }
    fn restore(&mut self, cursor: &Value) -> Result<()> {
        self.next_row = cursor["next_row"].as_u64().unwrap() as usize;
        Ok(())
    }
}

/// Next-token loss that records the first token of every micro-batch it trains on.
struct Recording {
    seen: Vec<u32>,
}

impl Algorithm for Recording {
    type Batch = TokenBatch;
    fn name(&self) -> &str {
        "pretrain"
    }
    fn loss_units(&self, b: &TokenBatch) -> f64 {
        NextTokenLoss.loss_units(b)
    }
    fn loss(&mut self, model: &Model, b: &TokenBatch) -> Result<LossOutput> {
        self.seen
            .push(b.input_ids.flatten_all()?.to_vec1::<u32>()?[0]);
        NextTokenLoss.loss(model, b)
    }
}

fn config(dir: &Path, max_steps: u64, accum: u64) -> TrainConfig {
    let mut c = TrainConfig {
        output_dir: dir.to_path_buf(),
        max_steps,
        grad_accumulation_steps: accum,
        learning_rate: 3e-3,
        save_every: 0,
        progress: false,
        plots: false,
        ..Default::default()
    };
    c.distributed.bucket_mb = 0.01; // several buckets even for the tiny model
    c
}

type Weights = Vec<(String, Vec<f32>)>;

/// What one rank's run leaves: final weights and the micro-batches it trained on.
struct RankRun {
    weights: Weights,
    seen: Vec<u32>,
}

/// Trains `steps` steps as one rank (`world` 1 = no communicator).
fn train_rank(
    rank: usize,
    world: usize,
    port: u16,
    cfg: TrainConfig,
    init_seed: u64,
) -> Result<RankRun> {
    let model = Model::new_random(
        ModelConfig::tiny(ModelType::Llama, VOCAB),
        &Device::Cpu,
        init_seed,
    )?;
    let mut trainer = Trainer::new(model, None, Recording { seen: vec![] }, cfg)?;
    if world > 1 {
        trainer.set_communicator(Box::new(comm(rank, world, port)));
    }
    trainer.fit(&mut RowSource {
        rows_per_batch: 2,
        next_row: 0,
    })?;
    let weights = trainer
        .model()
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    Ok(RankRun {
        weights,
        seen: trainer.algorithm().seen.clone(),
    })
}

/// Runs a `world`-rank job (threads) on `dir`; results in rank order.
fn job(
    world: usize,
    dir: PathBuf,
    steps: u64,
    accum: u64,
    tweak: fn(&mut TrainConfig),
) -> Vec<Result<RankRun>> {
    let port = free_port();
    ranks(world, move |r| {
        let mut cfg = config(&dir, steps, accum);
        tweak(&mut cfg);
        train_rank(r, world, port, cfg, 42)
    })
}

fn losses(dir: &Path) -> Vec<(u64, f64, f64)> {
    MetricsLog::read_all(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.get("event").is_none())
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["loss"].as_f64().unwrap(),
                r["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-12)
}

/// ‖a − b‖ / ‖b‖ per tensor.
fn assert_weights_close(a: &Weights, b: &Weights, tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let diff: f64 = va
            .iter()
            .zip(vb)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum();
        let norm: f64 = vb.iter().map(|y| (*y as f64).powi(2)).sum();
        let rel = (diff / norm.max(1e-30)).sqrt();
        assert!(rel <= tol, "{what}: `{na}` differs by {rel:e} (relative)");
    }
}

#[test]
fn tcp_test_comm_sums_broadcasts_and_waits() {
    let port = free_port();
    let out = ranks(3, move |r| {
        let c = comm(r, 3, port);
        let mut a = vec![r as f32 + 1.0, 10.0 * r as f32];
        c.all_reduce_sum_f32(&mut a).unwrap();
        let mut b = vec![0.1f64 * (r + 1) as f64];
        c.all_reduce_sum_f64(&mut b).unwrap();
        let mut m = vec![r as f32];
        c.all_reduce_mean_f32(&mut m).unwrap();
        let mut x = vec![r as f32; 4];
        c.broadcast_f32(&mut x, 2).unwrap();
        c.barrier().unwrap();
        // bucketed gradient reduction: shapes kept, values summed
        let mut grads = vec![
            Tensor::full(r as f32, (2, 3), &Device::Cpu).unwrap(),
            Tensor::full(1f32, 5, &Device::Cpu).unwrap(),
            Tensor::full(2f32, (4, 4), &Device::Cpu).unwrap(),
        ];
        all_reduce_grads(&c, &mut grads, 40).unwrap();
        let g: Vec<(Vec<usize>, f32)> = grads
            .iter()
            .map(|t| {
                (
                    t.dims().to_vec(),
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0],
                )
            })
            .collect();
        let bf = Tensor::full(0.5f32, 3, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let bf = c.all_reduce_sum_tensor(&bf).unwrap();
        (
            a,
            b,
            m,
            x,
            g,
            bf.dtype(),
            bf.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
        )
    });
    for (a, b, m, x, g, dt, bf) in out {
        assert_eq!(a, vec![6.0, 30.0]);
        assert!((b[0] - 0.6).abs() < 1e-12);
        assert_eq!(m, vec![1.0]);
        assert_eq!(x, vec![2.0; 4]);
        assert_eq!(
            g,
            vec![(vec![2, 3], 3.0), (vec![5], 3.0), (vec![4, 4], 6.0)]
        );
        assert_eq!((dt, bf), (DType::BF16, vec![1.5; 3]));
    }
}

#[test]
fn n_ranks_equal_one_rank_with_n_times_accumulation() {
    let root = tempfile::tempdir().unwrap();
    let (steps, accum_total) = (6, 4);
    let single = job(1, root.path().join("n1"), steps, accum_total, |_| {});
    let single = single.into_iter().next().unwrap().unwrap();
    let reference = losses(&root.path().join("n1"));
    assert_eq!(reference.len(), steps as usize);
    for world in [2usize, 4] {
        let dir = root.path().join(format!("n{world}"));
        let runs: Vec<RankRun> = job(
            world,
            dir.clone(),
            steps,
            accum_total / world as u64,
            |_| {},
        )
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
        let got = losses(&dir);
        assert_eq!(got.len(), reference.len(), "world {world}");
        for ((s1, l1, g1), (s2, l2, g2)) in reference.iter().zip(&got) {
            assert_eq!(s1, s2);
            assert!(
                rel_close(*l1, *l2, 1e-5),
                "world {world} step {s1}: loss {l2} vs {l1}"
            );
            assert!(
                rel_close(*g1, *g2, 1e-5),
                "world {world} step {s1}: grad norm {g2} vs {g1}"
            );
        }
        for (r, run) in runs.iter().enumerate() {
            // ranks hold bit-identical weights, within 1e-5 of the single process
            assert_eq!(
                run.weights, runs[0].weights,
                "world {world}: rank {r} drifted"
            );
            assert_weights_close(
                &run.weights,
                &single.weights,
                1e-5,
                &format!("world {world}"),
            );
        }
        // the ranks' shares partition the single process's micro-batches
        let mut union: Vec<u32> = runs.iter().flat_map(|r| r.seen.clone()).collect();
        let mut all = single.seen.clone();
        union.sort_unstable();
        all.sort_unstable();
        assert_eq!(union, all, "world {world}");
        // only rank 0 wrote checkpoints and metrics
        assert!(dir.join("metrics.jsonl").is_file());
    }
}

#[test]
fn init_is_identical_across_ranks_and_data_shards_are_per_rank_and_reproducible() {
    let root = tempfile::tempdir().unwrap();
    let run = |name: &str| -> Vec<RankRun> {
        let dir = root.path().join(name);
        let port = free_port();
        // every rank initialises with a *different* seed (the SmolLM3 TP-seed bug, inverted):
        // the loop must still start every rank from rank 0's weights
        ranks(2, move |r| {
            train_rank(r, 2, port, config(&dir, 3, 2), 100 + r as u64).unwrap()
        })
    };
    let a = run("a");
    assert_eq!(
        a[0].weights, a[1].weights,
        "ranks started from different weights"
    );
    let rank0_alone = train_rank(0, 1, 0, config(&root.path().join("alone"), 1, 1), 100).unwrap();
    let rank1_alone = train_rank(0, 1, 0, config(&root.path().join("alone1"), 1, 1), 101).unwrap();
    assert_ne!(
        rank0_alone.weights, rank1_alone.weights,
        "the two init seeds must differ"
    );
    // each rank trained on its own micro-batches: disjoint, and the same on a rerun
    assert!(
        a[0].seen.iter().all(|s| !a[1].seen.contains(s)),
        "{:?} vs {:?}",
        a[0].seen,
        a[1].seen
    );
    assert_eq!(a[0].seen.len(), 3 * 2);
    let b = run("b");
    assert_eq!(a[0].seen, b[0].seen);
    assert_eq!(a[1].seen, b[1].seen);
    assert_eq!(a[0].weights, b[0].weights);
}

#[test]
fn a_resumed_n_rank_run_reproduces_the_uninterrupted_one() {
    let root = tempfile::tempdir().unwrap();
    let whole: Vec<RankRun> = job(2, root.path().join("whole"), 6, 2, |c| c.save_every = 2)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let split_dir = root.path().join("split");
    let first = job(2, split_dir.clone(), 6, 2, |c| {
        c.save_every = 2;
        c.stop_after_steps = 3; // checkpoint at 2, stop after 3: step 3 is redone
    });
    assert!(first.into_iter().all(|r| r.is_ok()));
    let second: Vec<RankRun> = job(2, split_dir.clone(), 6, 2, |c| c.save_every = 2)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(losses(&root.path().join("whole")), losses(&split_dir));
    assert_eq!(whole[0].weights, second[0].weights);
    assert_eq!(whole[1].weights, second[1].weights);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(split_dir.join("latest/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2);
}

#[test]
fn resuming_with_another_world_size_fails_naming_both_sizes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    for r in job(2, dir.clone(), 4, 1, |c| c.save_every = 2) {
        r.unwrap();
    }
    let err = train_rank(0, 1, 0, config(&dir, 8, 2), 42)
        .err()
        .expect("a 1-rank resume of a 2-rank checkpoint must fail")
        .to_string();
    assert!(
        err.contains("world size 2") && err.contains("world size 1"),
        "{err}"
    );
    assert!(err.contains("trainer_state.json"), "{err}");
    // and a 4-rank job refuses it on every rank
    let errs = job(4, dir.clone(), 8, 1, |_| {});
    for e in errs {
        let msg = e.err().expect("must fail").to_string();
        assert!(
            msg.contains("world size 2") && msg.contains("world size 4"),
            "{msg}"
        );
    }
}

/// A source each rank samples on its own: micro-batch `k` of a rank starts at a row drawn
/// from `rank_seed(seed, rank)` and `k`.
struct PerRankSource {
    seed: u64,
    draws: u64,
}

impl BatchSource<TokenBatch> for PerRankSource {
    fn next_batch(&mut self) -> Result<Option<TokenBatch>> {
        let start = (smelt::rng::mix64(self.seed ^ smelt::rng::mix64(self.draws)) % 300) as usize;
        self.draws += 1;
        let (ids, labels): (Vec<_>, Vec<_>) = (start..start + 2).map(row).unzip();
        TokenBatch::from_rows(&ids, None, &labels, &Device::Cpu).map(Some)
    }
    // The cursor carries rank state (as GRPO's carries the rollouts in flight): restoring
    // another rank's cursor would continue that rank's stream.
    fn cursor(&self) -> Value {
        json!({ "draws": self.draws, "seed": self.seed })
    }
    fn restore(&mut self, cursor: &Value) -> Result<()> {
        self.draws = cursor["draws"].as_u64().unwrap();
        self.seed = cursor["seed"].as_u64().unwrap();
        Ok(())
    }
    fn per_rank(&self) -> bool {
        true
    }
}

fn per_rank_job(dir: PathBuf, tweak: fn(&mut TrainConfig)) -> Vec<RankRun> {
    let port = free_port();
    ranks(2, move |r| {
        let mut cfg = config(&dir, 6, 2);
        cfg.save_every = 2;
        tweak(&mut cfg);
        let model = Model::new_random(ModelConfig::tiny(ModelType::Llama, VOCAB), &Device::Cpu, 42)
            .unwrap();
        let mut trainer = Trainer::new(model, None, Recording { seen: vec![] }, cfg).unwrap();
        trainer.set_communicator(Box::new(comm(r, 2, port)));
        // every rank resumes (or starts) at draw 0: `fit` restores the saved cursors
        trainer
            .fit(&mut PerRankSource {
                seed: rank_seed(7, r),
                draws: 0,
            })
            .unwrap();
        RankRun {
            weights: trainer
                .model()
                .named_tensors()
                .into_iter()
                .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                .collect(),
            seen: trainer.algorithm().seen.clone(),
        }
    })
}

#[test]
fn per_rank_sources_differ_across_ranks_reproduce_and_resume_from_their_own_cursor() {
    let root = tempfile::tempdir().unwrap();
    let a = per_rank_job(root.path().join("a"), |_| {});
    let b = per_rank_job(root.path().join("b"), |_| {});
    assert_eq!(
        a[0].seen.len(),
        6 * 2,
        "each rank draws only its own accumulation"
    );
    assert_ne!(a[0].seen, a[1].seen, "ranks sampled the same data");
    assert_eq!(a[0].seen, b[0].seen);
    assert_eq!(a[1].seen, b[1].seen);
    assert_eq!(a[0].weights, a[1].weights);
    // stop after 3 steps (checkpoint at 2) and resume: every rank continues its own stream
    let split = root.path().join("split");
    per_rank_job(split.clone(), |c| c.stop_after_steps = 3);
    assert!(split.join("latest/data_cursor.rank1.json").is_file());
    let resumed = per_rank_job(split.clone(), |_| {});
    assert_eq!(losses(&root.path().join("a")), losses(&split));
    assert_eq!(a[0].weights, resumed[0].weights);
    assert_eq!(
        a[1].seen[4..],
        resumed[1].seen[..],
        "rank 1 resumed from another cursor"
    );
}
