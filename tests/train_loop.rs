//! The training loop's invariants on a tiny model:
//! - batch 8 × accumulation 1 equals batch 1 × accumulation 8 (losses, grad norms);
//! - a run stopped and resumed from its checkpoint reproduces the uninterrupted run
//!   bit for bit (every logged loss, final weights);
//! - a NaN or a loss spike triggers rollback to the last checkpoint, skips the
//!   offending batches, is logged, and training recovers.

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use smelt::telemetry::MetricsLog;
use smelt::train::{
    Algorithm, BatchSource, LossOutput, NextTokenLoss, TokenBatch, TrainConfig, Trainer,
    IGNORE_INDEX,
};
use smelt::{Model, ModelConfig, ModelType, Result};
use std::path::Path;

const VOCAB: usize = 61;
const T: usize = 12;

/// Row `i`: a deterministic token sequence; the first `i % 4` labels ignored, so rows
/// have different numbers of trained tokens (the normalisation must account for it).
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

/// In-memory source: micro-batches of `rows_per_batch` consecutive rows, cycling.
struct RowSource {
    rows_per_batch: usize,
    next_row: usize,
    total_rows: usize,
    poison: Vec<usize>, // batch indices (by first row) that get a marker label
}

impl RowSource {
    fn new(rows_per_batch: usize) -> Self {
        RowSource {
            rows_per_batch,
            next_row: 0,
            total_rows: 400,
            poison: vec![],
        }
    }
}

impl BatchSource<TokenBatch> for RowSource {
    fn next_batch(&mut self) -> Result<Option<TokenBatch>> {
        let start = self.next_row % self.total_rows;
        let (ids, mut labels): (Vec<_>, Vec<_>) =
            (start..start + self.rows_per_batch).map(row).unzip();
        if self.poison.contains(&start) {
            labels[0][0] = -7; // marker understood by `Poisoned`
        }
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

/// Next-token loss, except a batch carrying the marker label yields `poison(loss)`.
struct Poisoned {
    inner: NextTokenLoss,
    poison: fn(Tensor) -> Tensor,
}

impl Algorithm for Poisoned {
    type Batch = TokenBatch;
    fn name(&self) -> &str {
        "poisoned"
    }
    fn loss_units(&self, b: &TokenBatch) -> f64 {
        self.inner.loss_units(b)
    }
    fn loss(&mut self, model: &Model, b: &TokenBatch) -> Result<LossOutput> {
        let marked = b.labels.flatten_all()?.to_vec1::<i64>()?.contains(&-7);
        let clean = TokenBatch {
            labels: b
                .labels
                .maximum(IGNORE_INDEX)?
                .clamp(IGNORE_INDEX, i64::MAX)?,
            ..b.clone()
        };
        let clean = if marked { unmark(&clean)? } else { clean };
        let mut out = self.inner.loss(model, &clean)?;
        if marked {
            out.loss_sum = (self.poison)(out.loss_sum);
        }
        Ok(out)
    }
}

fn unmark(b: &TokenBatch) -> Result<TokenBatch> {
    let labels: Vec<Vec<i64>> = b.labels.to_vec2()?;
    let labels: Vec<Vec<i64>> = labels
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|l| if l == -7 { IGNORE_INDEX } else { l })
                .collect()
        })
        .collect();
    Ok(TokenBatch {
        labels: Tensor::new(labels, &Device::Cpu)?,
        ..b.clone()
    })
}

fn model() -> Model {
    Model::new_random(ModelConfig::tiny(ModelType::Llama, VOCAB), &Device::Cpu, 42).unwrap()
}

fn config(dir: &Path, max_steps: u64, accum: u64) -> TrainConfig {
    TrainConfig {
        output_dir: dir.to_path_buf(),
        max_steps,
        grad_accumulation_steps: accum,
        learning_rate: 3e-3,
        save_every: 0,
        progress: false,
        plots: false,
        ..Default::default()
    }
}

fn records(dir: &Path) -> Vec<Value> {
    MetricsLog::read_all(&dir.join("metrics.jsonl")).unwrap()
}

fn series(recs: &[Value], key: &str) -> Vec<f64> {
    recs.iter()
        .filter(|r| r.get("event").is_none())
        .map(|r| r[key].as_f64().unwrap())
        .collect()
}

#[test]
fn batch_8_equals_batch_1_times_accumulation_8() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    Trainer::new(model(), None, NextTokenLoss, config(a.path(), 10, 1))
        .unwrap()
        .fit(&mut RowSource::new(8))
        .unwrap();
    Trainer::new(model(), None, NextTokenLoss, config(b.path(), 10, 8))
        .unwrap()
        .fit(&mut RowSource::new(1))
        .unwrap();
    let (ra, rb) = (records(a.path()), records(b.path()));
    assert_eq!(ra.len(), 10);
    for key in ["loss", "grad_norm"] {
        let (sa, sb) = (series(&ra, key), series(&rb, key));
        for (step, (x, y)) in sa.iter().zip(&sb).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5,
                "{key} at step {}: {x} vs {y}",
                step + 1
            );
        }
    }
    // the loss actually moved, so the comparison covered real updates
    let losses = series(&ra, "loss");
    assert!(losses[9] < losses[0] - 0.05, "{losses:?}");
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_run_bit_for_bit() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = config(a.path(), 12, 2);
    cfg.save_every = 3;
    let mut full = Trainer::new(model(), None, NextTokenLoss, cfg.clone()).unwrap();
    full.fit(&mut RowSource::new(2)).unwrap();

    cfg.output_dir = b.path().to_path_buf();
    for stop in [5, 4, 100] {
        // each "process" gets a fresh model and data source, as after a crash
        let mut c = cfg.clone();
        c.stop_after_steps = stop;
        Trainer::new(model(), None, NextTokenLoss, c)
            .unwrap()
            .fit(&mut RowSource::new(2))
            .unwrap();
    }
    let resumed = Trainer::new(model(), None, NextTokenLoss, cfg).unwrap();
    let (ra, rb) = (records(a.path()), records(b.path()));
    assert_eq!(series(&ra, "step"), series(&rb, "step"));
    assert_eq!(
        series(&ra, "loss"),
        series(&rb, "loss"),
        "losses must be bit-identical"
    );
    // final weights: load `latest` of both runs
    let (wa, _) =
        smelt::checkpoint::load_folder(&a.path().join("latest"), &Device::Cpu, false).unwrap();
    let (wb, _) =
        smelt::checkpoint::load_folder(&b.path().join("latest"), &Device::Cpu, false).unwrap();
    for ((n, x), (_, y)) in wa.named_tensors().iter().zip(wb.named_tensors()) {
        let d: f32 = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "{n} differs after resume");
    }
    drop(resumed);
    // keep_last prunes old checkpoints
    let n = std::fs::read_dir(b.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .count();
    assert!(n <= 3, "{n} checkpoints kept");
}

fn nan_loss(t: Tensor) -> Tensor {
    (t * f64::NAN).unwrap()
}

fn huge_loss(t: Tensor) -> Tensor {
    (t * 1000.0).unwrap()
}

#[test]
fn nan_batch_rolls_back_skips_and_recovers() {
    for (poison, reason) in [
        (nan_loss as fn(Tensor) -> Tensor, "non-finite"),
        (huge_loss, "spike"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 20, 1);
        cfg.save_every = 5;
        cfg.spike_guard.min_history = 5;
        let mut source = RowSource::new(2);
        source.poison = vec![2 * 12]; // the batch of step 13
        let algo = Poisoned {
            inner: NextTokenLoss,
            poison,
        };
        let mut trainer = Trainer::new(model(), None, algo, cfg).unwrap();
        let summary = trainer.fit(&mut source).unwrap();
        assert!(summary.finished);
        assert_eq!(summary.rollbacks, 1);
        let recs = records(dir.path());
        let events: Vec<&Value> = recs.iter().filter(|r| r.get("event").is_some()).collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["bad_step"], 13);
        assert_eq!(
            events[0]["step"], 10,
            "rolled back to the step-10 checkpoint"
        );
        assert!(
            events[0]["reason"].as_str().unwrap().contains(reason),
            "{:?}",
            events[0]
        );
        let losses = series(&recs, "loss");
        assert_eq!(
            series(&recs, "step"),
            (1..=20).map(|s| s as f64).collect::<Vec<_>>()
        );
        assert!(
            losses.iter().all(|l| l.is_finite() && *l < 10.0),
            "{losses:?}"
        );
        // the skipped batches are never seen again: 20 good steps + the 3 lost ones
        assert_eq!(source.cursor()["next_row"], 2 * 23);
    }
}

#[test]
fn bad_config_values_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 10, 1);
    cfg.grad_accumulation_steps = 0;
    let e = Trainer::new(model(), None, NextTokenLoss, cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("grad_accumulation_steps"), "{e}");
    let e = toml::from_str::<TrainConfig>("max_stepz = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_stepz"), "{e}");
}

#[test]
fn a_checkpoint_with_non_finite_weights_is_never_written() {
    use smelt::optim::{AdamW, AdamWConfig};
    use smelt::train::state::{save_checkpoint, CheckpointParts, TrainerState};
    let dir = tempfile::tempdir().unwrap();
    let model = model();
    let optimizer = AdamW::new(model.vars(), AdamWConfig::default()).unwrap();
    let state = TrainerState {
        step: 7,
        lr_scale: 1.0,
        ..Default::default()
    };
    let cursor = json!({});
    let parts = |m| CheckpointParts {
        model: m,
        tokenizer: None,
        optimizer: &optimizer,
        state: &state,
        cursor: &cursor,
        seed: 0,
    };
    // a good checkpoint first, so there is something `latest` must keep pointing at
    save_checkpoint(dir.path(), &parts(&model), 3).unwrap();
    let (name, var) = &model.vars()[1];
    let poisoned = var.as_tensor().affine(0.0, f64::NAN).unwrap();
    var.set(&poisoned).unwrap();
    let mut later = state.clone();
    later.step = 8;
    let parts8 = CheckpointParts {
        state: &later,
        ..parts(&model)
    };
    let err = save_checkpoint(dir.path(), &parts8, 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-finite") && err.contains(name.as_str()),
        "{err}"
    );
    assert!(
        !dir.path().join("checkpoint-000008").exists(),
        "a poisoned checkpoint was written"
    );
    let latest = std::fs::read_link(dir.path().join("latest")).unwrap();
    assert_eq!(latest, Path::new("checkpoint-000007"));
}
