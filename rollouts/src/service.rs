//! `RolloutService`: the asynchronous rollout generator with versioned weights.
//!
//! A tokio task produces generation batches (prompts × `num_generations` [`Rollout`]s)
//! into a bounded channel while the trainer trains on the previous batch. The trainer
//! [`publish`](RolloutService::publish)es a *deep copy* of its weights after each optimizer
//! step (candle `Var::set` writes in place, so a shared `Model` clone would change under
//! the generator's feet).
//!
//! The key decision is **deterministic bounded staleness** ([`Schedule`]): generation batch
//! `n`, first trained on at step `n · steps_per_batch`, is generated from *exactly* weight
//! version `max(floor, n · steps_per_batch − max_staleness)`, never from "whatever is
//! newest". The task keeps a small map version → snapshot of the versions a batch still
//! needs (publishing a version no batch needs copies nothing; a snapshot is dropped once
//! no later batch needs it), so at most about `max_staleness / steps_per_batch + 1`
//! snapshots are alive. Consequences: `max_staleness = 0` is exactly synchronous
//! on-policy GRPO; for any staleness the rollouts are a pure function of seeds and the
//! trainer's weights, whatever the thread timing; and a checkpoint can make resume exact
//! by [`collect`](RolloutService::collect)ing the batches generated from versions older
//! than the saved weights and storing them (the caller's data cursor does). On receipt,
//! [`RolloutService::next`] still drops (and counts) any batch staler than the bound for
//! the version the caller asks with — by construction none is.
//!
//! Failure is loud, never a hang: a generator that panics or errors ends the task and the
//! next [`RolloutService::next`] returns the error; a needed version that was skipped is
//! an error naming it; dropping the service closes both channels and the task ends at its
//! next await point.

mod inputs;
mod schedule;

pub use inputs::{mix_seed, CyclingPrompts, Generator, PromptRow, PromptSource};
pub use schedule::Schedule;

use crate::rollout::Rollout;
use smelt::{Error, Model, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

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
    /// The trainer's weight version when the service starts (0, or a resumed run's
    /// step): no batch is generated from an older one.
    pub start_version: u64,
    /// Threads of the generator's own rayon pool (0 = share the global pool with the
    /// trainer). Separate pools keep generation and training from queueing behind each
    /// other's parallel kernels when both run at once.
    pub generator_threads: usize,
}

impl ServiceConfig {
    /// The version schedule these settings give.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            max_staleness: self.max_staleness,
            steps_per_batch: self.steps_per_batch,
            start_batch: self.start_batch,
            floor: self.start_version,
        }
    }
}

/// One generation batch as produced by the service.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

struct Snapshot {
    version: u64,
    model: Arc<Model>,
}

/// The asynchronous generator: see the module docs.
pub struct RolloutService {
    runtime: Option<tokio::runtime::Runtime>,
    weights: Option<mpsc::UnboundedSender<Snapshot>>,
    batches: Option<mpsc::Receiver<Result<GeneratedBatch>>>,
    config: ServiceConfig,
    schedule: Schedule,
    /// Index of the next batch to receive from the channel.
    receive_index: u64,
    dropped_batches: u64,
    dropped_rollouts: u64,
    published: Option<u64>,
}

impl RolloutService {
    /// Starts the task; it waits for the first needed [`publish`](Self::publish) before generating.
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
        let pool = match config.generator_threads {
            0 => None,
            n => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("smelt-generate-{i}"))
                    .build()
                    .map_err(|e| {
                        Error::Invalid(format!(
                            "rollout service: cannot start {n} generator threads: {e}"
                        ))
                    })?,
            )),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("smelt-rollouts")
            .build()
            .map_err(|e| Error::Invalid(format!("rollout service: cannot start tokio: {e}")))?;
        let (wtx, wrx) = mpsc::unbounded_channel();
        let (btx, brx) = mpsc::channel(config.capacity);
        let schedule = config.schedule();
        runtime.spawn(produce(generator, prompts, wrx, btx, schedule, pool));
        Ok(RolloutService {
            runtime: Some(runtime),
            weights: Some(wtx),
            batches: Some(brx),
            receive_index: config.start_batch,
            config,
            schedule,
            dropped_batches: 0,
            dropped_rollouts: 0,
            published: None,
        })
    }

    /// Hands the generator a deep copy of `model` as weight version `version` — only when
    /// some batch is generated from that version (otherwise nothing is copied). Versions
    /// must be published in increasing order.
    pub fn publish(&mut self, version: u64, model: &Model) -> Result<()> {
        if self.published.is_some_and(|p| version <= p) || !self.schedule.needs(version) {
            return Ok(());
        }
        let snapshot = Snapshot {
            version,
            model: Arc::new(deep_copy(model)?),
        };
        let sender = self.weights.as_ref().expect("open until drop");
        // no receiver means the task ended; `next` reports why
        let _ = sender.send(snapshot);
        self.published = Some(version);
        Ok(())
    }

    /// The next batch, blocking until it is ready, for a trainer at weight version
    /// `version`; a batch staler than the bound for that version is dropped and counted
    /// (the schedule never produces one). Errors when the generator failed or the task is gone.
    pub fn next(&mut self, version: u64) -> Result<GeneratedBatch> {
        let needed = self.schedule.version_of(self.receive_index);
        if needed > version {
            return Err(Error::Invalid(format!(
                "rollout service: batch {} is generated from weight version {needed}, but the trainer asks for it at version {version} (it would wait forever)",
                self.receive_index
            )));
        }
        loop {
            let batch = self.receive()?;
            if version.saturating_sub(batch.version) > self.config.max_staleness {
                self.dropped_batches += 1;
                self.dropped_rollouts += batch.rollouts.len() as u64;
                continue;
            }
            return Ok(batch);
        }
    }

    /// Every not-yet-received batch generated from a version older than `version`,
    /// waiting for those still being generated. A checkpoint of weights at `version`
    /// stores these to resume exactly: the older snapshots they came from are not saved.
    pub fn collect(&mut self, version: u64) -> Result<Vec<GeneratedBatch>> {
        let mut out = vec![];
        while self.schedule.version_of(self.receive_index) < version {
            out.push(self.receive()?);
        }
        Ok(out)
    }

    /// The next batch in index order, checked against the schedule.
    fn receive(&mut self) -> Result<GeneratedBatch> {
        let rx = self.batches.as_mut().expect("open until drop");
        let Some(item) = rx.blocking_recv() else {
            return Err(Error::Invalid(
                "rollout service: the generator task ended without a batch".into(),
            ));
        };
        let batch = item?;
        let (want_index, want_version) = (
            self.receive_index,
            self.schedule.version_of(self.receive_index),
        );
        if (batch.index, batch.version) != (want_index, want_version) {
            return Err(Error::Invalid(format!(
                "rollout service: got batch {} from version {}, expected batch {want_index} from version {want_version}",
                batch.index, batch.version
            )));
        }
        self.receive_index += 1;
        Ok(batch)
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

/// Waits until the snapshot of `needed` has arrived; `None` when the service is closing.
/// Errors when a later version arrived first: then `needed` was skipped and never comes.
async fn snapshot_of(
    needed: u64,
    snapshots: &mut BTreeMap<u64, Arc<Model>>,
    weights: &mut mpsc::UnboundedReceiver<Snapshot>,
    tx: &mpsc::Sender<Result<GeneratedBatch>>,
    index: u64,
) -> Option<Result<Arc<Model>>> {
    loop {
        if let Some(m) = snapshots.get(&needed) {
            return Some(Ok(m.clone()));
        }
        if let Some((&latest, _)) = snapshots.last_key_value().filter(|(v, _)| **v > needed) {
            return Some(Err(Error::Invalid(format!(
                "rollout service: batch {index} needs weight version {needed}, but it was never published (version {latest} was)"
            ))));
        }
        tokio::select! {
            s = weights.recv() => match s {
                Some(s) => { snapshots.insert(s.version, s.model); }
                None => return None,
            },
            _ = tx.closed() => return None,
        }
    }
}

/// The task: wait for the scheduled version, generate on a blocking thread, send, repeat.
async fn produce(
    mut generator: Box<dyn Generator>,
    mut prompts: Box<dyn PromptSource>,
    mut weights: mpsc::UnboundedReceiver<Snapshot>,
    tx: mpsc::Sender<Result<GeneratedBatch>>,
    schedule: Schedule,
    pool: Option<Arc<rayon::ThreadPool>>,
) {
    let mut snapshots: BTreeMap<u64, Arc<Model>> = BTreeMap::new();
    let mut index = schedule.start_batch;
    loop {
        let version = schedule.version_of(index);
        // no batch from here on needs an older snapshot
        snapshots.retain(|v, _| *v >= version);
        let model = match snapshot_of(version, &mut snapshots, &mut weights, &tx, index).await {
            None => return,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
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
        let pool = pool.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let out = match &pool {
                Some(p) => p.install(|| generator.generate(&model, &rows, version)),
                None => generator.generate(&model, &rows, version),
            };
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
        // free what only this batch needed before waiting on a full channel
        snapshots.retain(|v, _| *v >= schedule.version_of(index + 1));
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
