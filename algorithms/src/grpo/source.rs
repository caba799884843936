//! `GrpoSource`: the `BatchSource` that turns generation batches into micro-batches.
//!
//! Each optimizer step trains on one generation batch (`per_device_train_batch_size ×
//! grad_accumulation_steps` completions, groups of `num_generations`), split into
//! `grad_accumulation_steps` micro-batches, reused for `num_iterations` (μ) steps.
//!
//! The key decision: the source holds a clone of the trainer's `Model`, which *shares* its
//! `Var`s — so it always sees the current weights without the loop having to pass them.
//! Synchronously it generates from them directly; asynchronously it publishes a deep copy
//! to the [`RolloutService`] at each step's first draw (version = steps drawn so far) and
//! takes the next batch, generated from exactly the version the service's schedule names
//! (`max(0, n·μ − max_staleness)` for batch `n`). Both paths call the same [`Generator`]
//! on the same prompts and seeds, so with `max_staleness = 0` they train identically.
//! `max_staleness` applies to the asynchronous path only; the synchronous one is always
//! on-policy.
//!
//! Resume is exact for any `max_staleness`. The cursor holds the next generation-batch
//! index, the draws so far, the batch being reused (μ > 1) with its old log-probs, and
//! — asynchronously — every batch the service generated (or must generate) from a weight
//! version older than the checkpoint's: saving waits for those in flight to finish
//! ([`RolloutService::collect`]) and stores their rollouts. A resumed run trains on them
//! first and then restarts the service at the checkpoint's version, whose schedule then
//! needs no older weights; the prompts and seeds of later batches are a pure function of
//! their index. So a resumed run regenerates nothing it cannot reproduce.

use super::advantages::{generation_metrics, group_advantages};
use super::batch::{collate, per_rollout, RolloutBatch};
use super::config::GrpoConfig;
use crate::dpo::token_logps_fused;
use serde::{Deserialize, Serialize};
use smelt::train::{BatchSource, Metrics};
use smelt::{Error, Model, Result};
use smelt_rollouts::service::{
    GeneratedBatch, Generator, PromptSource, RolloutService, ServiceConfig,
};
use smelt_rollouts::Rollout;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Instant;

/// A generation batch being trained on, serialisable for the data cursor.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    index: u64,
    version: u64,
    rollouts: Vec<Rollout>,
    advantages: Vec<f32>,
    /// Per rollout, the trainer's log-probs at first use (μ > 1 only).
    old_logps: Option<Vec<Vec<f32>>>,
    iteration: u64,
    micro: usize,
    #[serde(skip)]
    metrics: Option<Metrics>,
}

enum Mode {
    Sync(Box<dyn Generator>, Box<dyn PromptSource>),
    /// Behind a `RefCell` because saving a cursor (`&self`) waits for in-flight batches.
    Async(Box<RefCell<AsyncState>>),
}

/// The asynchronous side of the source.
struct AsyncState {
    /// The service's parts until it starts, lazily at the first draw (after a resume set
    /// the position).
    parts: Option<(Box<dyn Generator>, Box<dyn PromptSource>)>,
    service: Option<RolloutService>,
    /// Batches received ahead of use, in index order: restored from a checkpoint, or
    /// collected while saving one.
    ready: VecDeque<GeneratedBatch>,
    /// Why collecting for a cursor failed; the next draw reports it.
    failed: Option<String>,
}

/// See the module docs.
pub struct GrpoSource {
    policy: Model,
    mode: Mode,
    config: GrpoConfig,
    accumulation: u64,
    draws: u64,
    next_index: u64,
    pending: Option<Pending>,
}

impl GrpoSource {
    /// A source for a trainer whose model `policy` shares its `Var`s with (pass
    /// `model.clone()`), drawing `grad_accumulation_steps` micro-batches per step.
    pub fn new(
        policy: Model,
        generator: Box<dyn Generator>,
        prompts: Box<dyn PromptSource>,
        config: GrpoConfig,
        grad_accumulation_steps: u64,
    ) -> Result<Self> {
        config.validate(grad_accumulation_steps)?;
        let mode = if config.async_generation {
            Mode::Async(Box::new(RefCell::new(AsyncState {
                parts: Some((generator, prompts)),
                service: None,
                ready: VecDeque::new(),
                failed: None,
            })))
        } else {
            Mode::Sync(generator, prompts)
        };
        Ok(GrpoSource {
            policy,
            mode,
            config,
            accumulation: grad_accumulation_steps,
            draws: 0,
            next_index: 0,
            pending: None,
        })
    }

    /// Prompts per generation batch.
    pub fn prompts_per_batch(&self) -> usize {
        self.config.generation_batch_size(self.accumulation) / self.config.num_generations
    }

    /// Batches and rollouts the service dropped as too stale (0 when synchronous).
    pub fn dropped(&self) -> (u64, u64) {
        match &self.mode {
            Mode::Async(state) => state
                .borrow()
                .service
                .as_ref()
                .map_or((0, 0), |s| s.dropped()),
            Mode::Sync(..) => (0, 0),
        }
    }

    /// The trainer's weight version: optimizer steps drawn so far.
    fn version(&self) -> u64 {
        self.draws / self.accumulation
    }

    fn fetch(&mut self, version: u64) -> Result<GeneratedBatch> {
        match &mut self.mode {
            Mode::Sync(generator, prompts) => {
                let rows = prompts.batch(self.next_index)?;
                let started = Instant::now();
                let rollouts = generator.generate(&self.policy, &rows, version)?;
                Ok(GeneratedBatch {
                    index: self.next_index,
                    version,
                    rollouts,
                    generation_s: started.elapsed().as_secs_f64(),
                })
            }
            Mode::Async(state) => {
                let state = state.get_mut();
                if let Some(why) = state.failed.take() {
                    return Err(Error::Invalid(why));
                }
                match state.ready.pop_front() {
                    Some(b) if b.index != self.next_index => Err(Error::Invalid(format!(
                        "grpo: buffered generation batch {} does not follow batch {}",
                        b.index,
                        self.next_index.saturating_sub(1)
                    ))),
                    Some(b) => Ok(b),
                    None => state
                        .service
                        .as_mut()
                        .expect("started in publish()")
                        .next(version),
                }
            }
        }
    }

    /// Async: start the service if needed and hand it the current weights.
    fn publish(&mut self, version: u64) -> Result<()> {
        let Mode::Async(state) = &mut self.mode else {
            return Ok(());
        };
        let state = state.get_mut();
        if state.service.is_none() {
            let (generator, prompts) = state
                .parts
                .take()
                .ok_or_else(|| Error::Invalid("grpo: the rollout service died".into()))?;
            state.service = Some(RolloutService::start(
                generator,
                prompts,
                ServiceConfig {
                    max_staleness: self.config.max_staleness,
                    capacity: self.config.rollout_buffer,
                    steps_per_batch: self.config.num_iterations,
                    start_batch: self.next_index + state.ready.len() as u64,
                    start_version: version,
                    generator_threads: self.config.generator_threads,
                },
            )?);
        }
        state
            .service
            .as_mut()
            .expect("just set")
            .publish(version, &self.policy)
    }

    fn start_batch(&mut self, version: u64) -> Result<Pending> {
        let gb = self.fetch(version)?;
        let expected = self.prompts_per_batch() * self.config.num_generations;
        if gb.rollouts.len() != expected {
            return Err(Error::Invalid(format!(
                "grpo: generation batch {} has {} rollouts, expected {expected} ({} prompts × num_generations {})",
                gb.index,
                gb.rollouts.len(),
                self.prompts_per_batch(),
                self.config.num_generations
            )));
        }
        self.next_index = gb.index + 1;
        let rewards: Vec<f64> = gb.rollouts.iter().map(|r| r.reward as f64).collect();
        let (adv, zero_std) = group_advantages(
            &rewards,
            self.config.num_generations,
            self.config.scale_rewards,
        );
        let mut metrics = generation_metrics(&gb.rollouts, &zero_std);
        let tokens = gb
            .rollouts
            .iter()
            .map(|r| r.completion_ids.len())
            .sum::<usize>();
        metrics.add(
            "generation/tokens_per_s",
            tokens as f64 / gb.generation_s.max(1e-9),
            1.0,
        );
        metrics.add("generation/seconds", gb.generation_s, 1.0);
        let mut pending = Pending {
            index: gb.index,
            version: gb.version,
            advantages: adv.iter().map(|a| *a as f32).collect(),
            rollouts: gb.rollouts,
            old_logps: None,
            iteration: 0,
            micro: 0,
            metrics: Some(metrics),
        };
        if self.config.num_iterations > 1 {
            pending.old_logps = Some(self.old_logps(&pending)?);
        }
        Ok(pending)
    }

    /// The trainer's current log-probs of every rollout (TRL's `old_per_token_logps`).
    fn old_logps(&self, p: &Pending) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(p.rollouts.len());
        for chunk in p.rollouts.chunks(self.config.per_device_train_batch_size) {
            let b = collate(
                chunk,
                &vec![0.0; chunk.len()],
                None,
                false,
                self.policy.device(),
            )?;
            let hidden = self.policy.forward_hidden(&b.input_ids, None)?.detach(); // (B, T, H)
            let logps =
                token_logps_fused(&self.policy, &hidden, &b.targets, self.config.temperature)?; // (B, T)
            out.extend(per_rollout(&logps, chunk)?);
        }
        Ok(out)
    }
}

impl BatchSource<RolloutBatch> for GrpoSource {
    fn next_batch(&mut self) -> Result<Option<RolloutBatch>> {
        let version = self.version();
        let first_of_step = self.draws.is_multiple_of(self.accumulation);
        if first_of_step {
            self.publish(version)?;
        }
        let mut pending = match self.pending.take() {
            Some(p) => p,
            None => self.start_batch(version)?,
        };
        let size = self.config.per_device_train_batch_size;
        let range = pending.micro * size..(pending.micro + 1) * size;
        let old = pending.old_logps.as_ref().map(|o| &o[range.clone()]);
        let mut batch = collate(
            &pending.rollouts[range.clone()],
            &pending.advantages[range],
            old,
            self.config.mask_truncated_completions,
            self.policy.device(),
        )?;
        if first_of_step {
            let mut m = pending.metrics.take().unwrap_or_default();
            m.add(
                "staleness",
                version.saturating_sub(pending.version) as f64,
                1.0,
            );
            let (dropped, _) = self.dropped();
            m.add("staleness/dropped_batches", dropped as f64, 1.0);
            batch.step_metrics = Some(m);
        }
        self.draws += 1;
        pending.micro += 1;
        if pending.micro as u64 == self.accumulation {
            pending.micro = 0;
            pending.iteration += 1;
        }
        if pending.iteration < self.config.num_iterations {
            self.pending = Some(pending);
        }
        Ok(Some(batch))
    }

    /// Rollouts are sampled on every rank from its own prompts and seeds (see `run_grpo`).
    fn per_rank(&self) -> bool {
        true
    }

    fn cursor(&self) -> serde_json::Value {
        let (ready, complete) = match &self.mode {
            Mode::Sync(..) => (VecDeque::new(), true),
            Mode::Async(state) => {
                let state = &mut *state.borrow_mut();
                if let Some(service) = state.service.as_mut() {
                    match service.collect(self.version()) {
                        Ok(batches) => state.ready.extend(batches),
                        Err(e) => state.failed = Some(e.to_string()),
                    }
                }
                (state.ready.clone(), state.failed.is_none())
            }
        };
        serde_json::json!({
            "draws": self.draws,
            "next_index": self.next_index,
            "pending": self.pending,
            "ready": ready,
            "ready_complete": complete,
        })
    }

    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        let bad = |key: &str| Error::Invalid(format!("grpo data cursor: missing or bad `{key}`"));
        self.draws = cursor["draws"].as_u64().ok_or_else(|| bad("draws"))?;
        self.next_index = cursor["next_index"]
            .as_u64()
            .ok_or_else(|| bad("next_index"))?;
        self.pending =
            serde_json::from_value(cursor["pending"].clone()).map_err(|_| bad("pending"))?;
        // cursors from synchronous runs (and older ones) hold no batches ahead
        let ready: VecDeque<GeneratedBatch> = match cursor.get("ready") {
            None | Some(serde_json::Value::Null) => VecDeque::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| bad("ready"))?,
        };
        if let Some((i, b)) = ready
            .iter()
            .enumerate()
            .find(|(i, b)| b.index != self.next_index + *i as u64)
        {
            return Err(Error::Invalid(format!(
                "grpo data cursor: `ready` batch {i} has index {}, expected {}",
                b.index,
                self.next_index + i as u64
            )));
        }
        if cursor["ready_complete"].as_bool() == Some(false) {
            eprintln!(
                "warning: this checkpoint lacks some rollouts that were in flight when it was saved; \
                 they are regenerated from the restored weights, so this resume is not bit-exact"
            );
        }
        match &mut self.mode {
            Mode::Async(state) => {
                let state = state.get_mut();
                if state.service.is_some() {
                    return Err(Error::Invalid(
                        "grpo: cannot restore a data position once the rollout service has started"
                            .into(),
                    ));
                }
                state.ready = ready;
            }
            Mode::Sync(..) => {
                if !ready.is_empty() {
                    eprintln!(
                        "warning: resuming synchronously from an asynchronous checkpoint: \
                         {} stored generation batches are regenerated on-policy",
                        ready.len()
                    );
                }
            }
        }
        Ok(())
    }
}
