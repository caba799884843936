//! The `Algorithm` trait: the only thing a training objective implements.
//!
//! An algorithm turns one micro-batch into a *summed* loss and metric sums. The loop
//! ([`super::Trainer`]) divides by the total number of loss units (e.g. trained
//! tokens) over the whole accumulated batch before backward, so gradient accumulation
//! never changes the loss: batch 8 × accumulation 1 and batch 1 × accumulation 8 give
//! the same update. Everything else — accumulation, clipping, optimizer, schedule,
//! logging, checkpointing, spike guard — belongs to the loop.

use crate::error::Result;
use crate::model::Model;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Metric sums and their weights; the loop reports `sum / weight` per metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    sums: BTreeMap<String, (f64, f64)>,
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `sum` over `weight` units to metric `name` (a mean is `add(name, x, 1.0)`).
    pub fn add(&mut self, name: &str, sum: f64, weight: f64) {
        let e = self.sums.entry(name.to_string()).or_insert((0.0, 0.0));
        e.0 += sum;
        e.1 += weight;
    }

    /// Merges another micro-batch's metrics into these.
    pub fn merge(&mut self, other: &Metrics) {
        for (k, (s, w)) in &other.sums {
            self.add(k, *s, *w);
        }
    }

    /// Weighted means, by metric name.
    pub fn means(&self) -> BTreeMap<String, f64> {
        self.sums
            .iter()
            .map(|(k, (s, w))| (k.clone(), if *w > 0.0 { s / w } else { 0.0 }))
            .collect()
    }

    /// Every metric as `(name, sum, weight)`, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64, f64)> {
        self.sums.iter().map(|(k, (s, w))| (k.as_str(), *s, *w))
    }

    /// The raw sum of metric `name` (e.g. a token count).
    pub fn sum(&self, name: &str) -> f64 {
        self.sums.get(name).map_or(0.0, |e| e.0)
    }
}

/// What an algorithm returns for one micro-batch.
#[derive(Debug)]
pub struct LossOutput {
    /// Scalar: the loss *summed* over this micro-batch's loss units.
    pub loss_sum: Tensor,
    /// Metric sums for logging.
    pub metrics: Metrics,
}

/// A training objective. Implementations are small: one file, one `loss`.
pub trait Algorithm {
    /// The micro-batch type this algorithm consumes.
    type Batch;

    /// Short name for logs and checkpoints (`"pretrain"`, `"sft"`, `"dpo"`, ...).
    fn name(&self) -> &str;

    /// Number of loss units in `batch` (trained tokens, or sequences/pairs). The loop
    /// normalises by the total over the accumulated batch.
    fn loss_units(&self, batch: &Self::Batch) -> f64;

    /// Summed loss over `batch` under `model`, differentiable w.r.t. its parameters.
    fn loss(&mut self, model: &Model, batch: &Self::Batch) -> Result<LossOutput>;

    /// Called before each optimizer step's micro-batches are drawn (e.g. GRPO pulls
    /// fresh rollouts, or publishes weights). Default: nothing.
    fn before_step(&mut self, _step: u64, _model: &Model) -> Result<()> {
        Ok(())
    }

    /// Called after the optimizer updated the weights. Default: nothing.
    fn after_step(&mut self, _step: u64, _model: &Model) -> Result<()> {
        Ok(())
    }

    /// State the objective carries across steps that is neither weights nor data
    /// position (a running statistic, an adaptive coefficient). It is saved in every
    /// checkpoint's `trainer_state.json` so a resumed run continues it exactly.
    /// Default: none (`Null`).
    fn checkpoint_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores what [`Algorithm::checkpoint_state`] saved (called on resume and on a
    /// spike-guard rollback; `Null` for checkpoints written without state). Default:
    /// nothing.
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// Where micro-batches come from; its position is saved in every checkpoint so a
/// resumed run sees exactly the batches the uninterrupted one would have.
pub trait BatchSource<B> {
    /// The next micro-batch (sources cycle epochs themselves; `None` ends training early).
    fn next_batch(&mut self) -> Result<Option<B>>;
    /// The current position, serialisable (saved as `data_cursor.json`).
    fn cursor(&self) -> serde_json::Value;
    /// Restores a position returned by [`BatchSource::cursor`].
    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()>;

    /// Whether this source already yields only this rank's data under data parallelism
    /// (e.g. GRPO rollouts sampled on each rank with its own seed). The loop then draws
    /// `grad_accumulation_steps` micro-batches from it per step, instead of drawing the
    /// whole global batch and keeping its share, and checkpoints each rank's cursor.
    /// Default `false`: every rank builds the same source.
    fn per_rank(&self) -> bool {
        false
    }
}
