//! `RolloutService`: the asynchronous rollout generator with versioned weights.
//!
//! A tokio task owns a weight snapshot tagged with a version and produces generation
//! batches (prompts × `num_generations` [`Rollout`]s) into a bounded channel while the
//! trainer trains on the previous batch. The trainer [`publish`](RolloutService::publish)es
//! a *deep copy* of its weights after each optimizer step (candle `Var::set` writes in
//! place, so a shared `Model` clone would change under the generator's feet).
//!
//! The key decision is **staleness by gating, checked again on receipt**. Generation batch
//! `n` is first trained on at step `n · steps_per_batch`; the task starts it only once it
//! holds weights of version `≥ n · steps_per_batch − max_staleness`. So `max_staleness = 0`
//! is exactly synchronous on-policy GRPO (batch `n` is generated from the very weights the
//! trainer has when it uses it), and `max_staleness = k` lets generation run `k` versions
//! ahead. On receipt, [`RolloutService::next`] drops (and counts) any batch older than
//! `max_staleness` versions anyway (the trainer's version can jump, e.g. several updates
//! per batch), so no sample staler than the bound is ever trained on.
//!
//! Prompts and per-sample seeds are a pure function of the batch index
//! ([`PromptSource::batch`]), so the synchronous loop and the service produce the same
//! rollouts from the same weights. Failure is loud, never a hang: a generator that panics
//! or errors ends the task and the next [`RolloutService::next`] returns the error; dropping
//! the service closes both channels and the task ends at its next await point.

use crate::rollout::Rollout;
use rand::{seq::SliceRandom, SeedableRng};
use smelt::{Error, Model, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// One prompt to sample `num_generations` completions of.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptRow {
    /// Index of the prompt in its dataset (the GRPO group key).
    pub index: u64,
    /// Prompt token ids (chat template applied).
    pub prompt_ids: Vec<u32>,
    /// Seed of this prompt's samples in this batch (sample `j` uses a seed derived from it).
    pub seed: u64,
    /// The dataset row (reference answer, metadata) for reward functions.
    pub data: serde_json::Value,
}

/// Turns prompts into scored rollouts with the given weights.
pub trait Generator: Send {
    /// `num_generations` rollouts per prompt, grouped by prompt in `prompts` order, each
    /// tagged with `version` as its `weight_version`.
    fn generate(
        &mut self,
        model: &Model,
        prompts: &[PromptRow],
        version: u64,
    ) -> Result<Vec<Rollout>>;
}

/// Where each generation batch's prompts come from.
pub trait PromptSource: Send {
    /// The prompts of generation batch `index`: a pure function of `index`, so the batch
    /// can be regenerated after a resume.
    fn batch(&mut self, index: u64) -> Result<Vec<PromptRow>>;
}

/// SplitMix64 finaliser: decorrelates seeds derived from small integers.
pub fn mix_seed(x: u64) -> u64 {
    smelt::rng::mix64(x)
}

/// A fixed prompt list served `per_batch` at a time, reshuffled every epoch from `seed`.
#[derive(Debug, Clone)]
pub struct CyclingPrompts {
    rows: Vec<(Vec<u32>, serde_json::Value)>,
    per_batch: usize,
    seed: u64,
}

impl CyclingPrompts {
    /// Serves `rows` (prompt ids, data) `per_batch` per generation batch.
    pub fn new(
        rows: Vec<(Vec<u32>, serde_json::Value)>,
        per_batch: usize,
        seed: u64,
    ) -> Result<Self> {
        if rows.is_empty() || per_batch == 0 {
            return Err(Error::Invalid(format!(
                "prompts: need at least one prompt and per_batch >= 1 (got {} prompts, per_batch {per_batch})",
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|r| r.0.is_empty()) {
            return Err(Error::Invalid(format!("prompts: prompt {i} has no tokens")));
        }
        Ok(CyclingPrompts {
            rows,
            per_batch,
            seed,
        })
    }

    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix_seed(self.seed ^ mix_seed(epoch)));
        order.shuffle(&mut rng);
        order
    }
}

impl PromptSource for CyclingPrompts {
    fn batch(&mut self, index: u64) -> Result<Vec<PromptRow>> {
        let len = self.rows.len() as u64;
        let (mut cached_epoch, mut order) = (u64::MAX, vec![]);
        (0..self.per_batch as u64)
            .map(|j| {
                let global = index * self.per_batch as u64 + j;
                let epoch = global / len;
                if epoch != cached_epoch {
                    order = self.order(epoch);
                    cached_epoch = epoch;
                }
                let i = order[(global % len) as usize];
                Ok(PromptRow {
                    index: i as u64,
                    prompt_ids: self.rows[i].0.clone(),
                    seed: mix_seed(self.seed ^ mix_seed(global.wrapping_add(1))),
                    data: self.rows[i].1.clone(),
                })
            })
            .collect()
    }
}

/// A deep copy of `model`: fresh storage for every parameter, sharing nothing with it.
pub fn deep_copy(model: &Model) -> Result<Model> {
    let tensors = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.detach().copy()?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Model::from_tensors(
        model.config().clone(),
        tensors,
        model.device(),
        Path::new("<weight snapshot>"),
    )
}

/// Settings of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Versions a batch may lag the trainer when first used (0 = synchronous on-policy).
    pub max_staleness: u64,
    /// Finished batches buffered in the channel (≥ 1).
    pub capacity: usize,
    /// Optimizer steps that train on each generation batch (GRPO's `num_iterations`).
    pub steps_per_batch: u64,
    /// Index of the first generation batch (a resumed run's position).
    pub start_batch: u64,
}

/// One generation batch as produced by the service.
#[derive(Debug, Clone)]
pub struct GeneratedBatch {
    /// Generation batch index.
    pub index: u64,
    /// Weight version it was generated with.
    pub version: u64,
    /// Rollouts, grouped by prompt.
    pub rollouts: Vec<Rollout>,
    /// Wall-clock seconds spent generating it.
    pub generation_s: f64,
}

impl GeneratedBatch {
    /// Completion tokens generated.
    pub fn completion_tokens(&self) -> usize {
        self.rollouts.iter().map(|r| r.completion_ids.len()).sum()
    }
}

#[derive(Clone)]
struct Snapshot {
    version: u64,
    model: Arc<Model>,
}

/// The asynchronous generator: see the module docs.
pub struct RolloutService {
    runtime: Option<tokio::runtime::Runtime>,
    weights: Option<watch::Sender<Option<Snapshot>>>,
    batches: Option<mpsc::Receiver<Result<GeneratedBatch>>>,
    config: ServiceConfig,
    dropped_batches: u64,
    dropped_rollouts: u64,
    published: Option<u64>,
}

impl RolloutService {
    /// Starts the task; it waits for the first [`publish`](Self::publish) before generating.
    pub fn start(
        generator: Box<dyn Generator>,
        prompts: Box<dyn PromptSource>,
        config: ServiceConfig,
    ) -> Result<Self> {
        if config.capacity == 0 || config.steps_per_batch == 0 {
            return Err(Error::Invalid(format!(
                "rollout service: capacity and steps_per_batch must be >= 1 (got {} and {})",
                config.capacity, config.steps_per_batch
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("smelt-rollouts")
            .build()
            .map_err(|e| Error::Invalid(format!("rollout service: cannot start tokio: {e}")))?;
        let (wtx, wrx) = watch::channel(None);
        let (btx, brx) = mpsc::channel(config.capacity);
        runtime.spawn(produce(generator, prompts, wrx, btx, config.clone()));
        Ok(RolloutService {
            runtime: Some(runtime),
            weights: Some(wtx),
            batches: Some(brx),
            config,
            dropped_batches: 0,
            dropped_rollouts: 0,
            published: None,
        })
    }

    /// Hands the generator a deep copy of `model` as weight version `version`.
    pub fn publish(&mut self, version: u64, model: &Model) -> Result<()> {
        if self.published == Some(version) {
            return Ok(());
        }
        let snapshot = Snapshot {
            version,
            model: Arc::new(deep_copy(model)?),
        };
        let sender = self.weights.as_ref().expect("open until drop");
        // no receiver means the task ended; `next` reports why
        let _ = sender.send(Some(snapshot));
        self.published = Some(version);
        Ok(())
    }

    /// The next batch fresh enough for a trainer at weight version `version`, blocking
    /// until one is ready; staler batches are dropped and counted. Errors when the
    /// generator failed or the task is gone.
    pub fn next(&mut self, version: u64) -> Result<GeneratedBatch> {
        let rx = self.batches.as_mut().expect("open until drop");
        loop {
            let Some(item) = rx.blocking_recv() else {
                return Err(Error::Invalid(
                    "rollout service: the generator task ended without a batch".into(),
                ));
            };
            let batch = item?;
            if version.saturating_sub(batch.version) > self.config.max_staleness {
                self.dropped_batches += 1;
                self.dropped_rollouts += batch.rollouts.len() as u64;
                continue;
            }
            return Ok(batch);
        }
    }

    /// Batches and rollouts dropped as too stale so far.
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped_batches, self.dropped_rollouts)
    }

    /// The settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Stops the task (also done on drop): closes the channels and returns at once; a
    /// batch being generated finishes on its blocking thread and is discarded.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.weights.take();
        self.batches.take();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for RolloutService {
    fn drop(&mut self) {
        self.close();
    }
}

/// The task: wait for fresh-enough weights, generate on a blocking thread, send, repeat.
async fn produce(
    mut generator: Box<dyn Generator>,
    mut prompts: Box<dyn PromptSource>,
    mut weights: watch::Receiver<Option<Snapshot>>,
    tx: mpsc::Sender<Result<GeneratedBatch>>,
    config: ServiceConfig,
) {
    let mut index = config.start_batch;
    loop {
        let needed = (index * config.steps_per_batch).saturating_sub(config.max_staleness);
        let snapshot = loop {
            let current = weights.borrow_and_update().clone();
            if let Some(s) = current.filter(|s| s.version >= needed) {
                break s;
            }
            tokio::select! {
                changed = weights.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        };
        let rows = match prompts.batch(index) {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let started = Instant::now();
        let version = snapshot.version;
        let joined = tokio::task::spawn_blocking(move || {
            let out = generator.generate(&snapshot.model, &rows, version);
            (generator, out)
        })
        .await;
        let generation_s = started.elapsed().as_secs_f64();
        let result = match joined {
            Ok((g, out)) => {
                generator = g;
                out
            }
            Err(e) => {
                let why = if e.is_panic() {
                    panic_message(e.into_panic())
                } else {
                    "cancelled".into()
                };
                let msg =
                    format!("rollout service: the generator panicked on batch {index}: {why}");
                let _ = tx.send(Err(Error::Invalid(msg))).await;
                return;
            }
        };
        let failed = result.is_err();
        let item = result.map(|rollouts| GeneratedBatch {
            index,
            version,
            rollouts,
            generation_s,
        });
        if tx.send(item).await.is_err() || failed {
            return;
        }
        index += 1;
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}
