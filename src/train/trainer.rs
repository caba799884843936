//! `Trainer`: THE training loop. It exists once; every objective plugs into it.
//!
//! Per optimizer step: draw `grad_accumulation_steps` micro-batches, normalise each
//! micro-batch's summed loss by the loss units of the whole step, backward and
//! accumulate gradients, clip the global norm, judge the step with the spike guard,
//! update with AdamW at the scheduled learning rate, log, evaluate, checkpoint. A run
//! directory with a `latest` checkpoint is resumed exactly (weights, optimizer
//! moments, step, spike history, data position).
//!
//! Data parallelism: when the environment names more than one rank (`smelt launch`,
//! torchrun, `srun`) the loop joins the job through a [`Communicator`] at the start of
//! [`Trainer::fit`] (or uses one given with [`Trainer::set_communicator`]). Each rank
//! trains on its share of every global batch ([`super::parallel`]), gradients and the
//! step's loss units / metrics are summed over ranks, rank 0 alone writes checkpoints,
//! metrics and plots while the others wait at a barrier, and a checkpoint records the
//! world size it was written with.

use super::algorithm::{Algorithm, BatchSource, Metrics};
use super::config::TrainConfig;
use super::parallel;
use super::spike::Verdict;
use super::state::{self, CheckpointParts, TrainerState};
use crate::dist::{self, Communicator, DistEnv};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::optim::{clip_grad_norm, AdamW};
use crate::telemetry::{self, MetricsLog, Progress, ThroughputMonitor};
use crate::tokenizer::Tokenizer;
use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// An evaluation hook: metrics (reported with an `eval_` prefix) for the model at a step.
pub type Evaluator = Box<dyn FnMut(&Model, u64) -> Result<BTreeMap<String, f64>>>;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps completed in total.
    pub step: u64,
    /// Loss of the last step taken in this process (NaN if none).
    pub last_loss: f64,
    /// Steps taken by this process.
    pub steps_this_process: u64,
    /// The checkpoint `latest` names at the end, if any.
    pub checkpoint: Option<PathBuf>,
    /// Rollbacks performed over the whole run.
    pub rollbacks: u32,
    /// Where the metrics were written.
    pub metrics_path: PathBuf,
    /// PNG plots written at the end.
    pub plots: Vec<PathBuf>,
    /// Whether the run reached `max_steps`.
    pub finished: bool,
}

/// The training loop over one model and one algorithm.
pub struct Trainer<A: Algorithm> {
    config: TrainConfig,
    model: Model,
    tokenizer: Option<Tokenizer>,
    algorithm: A,
    optimizer: AdamW,
    state: TrainerState,
    evaluator: Option<Evaluator>,
    flops_per_token: Option<f64>,
    /// The data-parallel job, when there is more than one rank.
    comm: Option<Box<dyn Communicator>>,
}

/// One step's numbers before the update is applied.
struct StepResult {
    loss: f64,
    grads: Vec<Tensor>,
    metrics: Metrics,
    tokens: f64,
    data_wait_s: f64,
}

impl<A: Algorithm> Trainer<A> {
    /// A trainer for `model` with `algorithm`; the tokenizer (if any) is saved in checkpoints.
    /// The model runs at `config.precision` from here on, and the process flushes
    /// subnormal floats to zero (they only slow the GEMMs down).
    pub fn new(
        mut model: Model,
        tokenizer: Option<Tokenizer>,
        algorithm: A,
        config: TrainConfig,
    ) -> Result<Self> {
        config.validate()?;
        model.set_precision(config.precision);
        crate::ops::gemm::flush_denormals_to_zero();
        crate::runtime::keep_freed_memory();
        let optimizer = AdamW::new(model.vars(), config.optimizer.clone())?;
        let state = TrainerState {
            lr_scale: 1.0,
            algorithm: algorithm.name().to_string(),
            ..Default::default()
        };
        Ok(Trainer {
            config,
            model,
            tokenizer,
            algorithm,
            optimizer,
            state,
            evaluator: None,
            flops_per_token: None,
            comm: None,
        })
    }

    /// Trains as one rank of a data-parallel job over `comm` (instead of joining the
    /// job the environment describes when [`Trainer::fit`] starts).
    pub fn set_communicator(&mut self, comm: Box<dyn Communicator>) {
        self.comm = Some(comm);
    }

    /// `(rank, world_size)` of this trainer's job (`(0, 1)` for one process).
    pub fn rank_and_world(&self) -> (usize, usize) {
        self.comm
            .as_ref()
            .map_or((0, 1), |c| (c.rank(), c.world_size()))
    }

    /// Joins the job the environment names, unless a communicator was given.
    fn join_job(&mut self) -> Result<()> {
        if self.comm.is_none() {
            let env = DistEnv::from_env()?;
            self.comm = dist::connect(&env, &self.config.distributed, self.model.device())?;
        }
        Ok(())
    }

    /// Waits for every rank (no-op for one process).
    fn barrier(&self) -> Result<()> {
        self.comm.as_ref().map_or(Ok(()), |c| c.barrier())
    }

    /// Sets the evaluation hook run every `eval_every` steps and at the end.
    pub fn set_evaluator(&mut self, evaluator: Evaluator) {
        self.evaluator = Some(evaluator);
    }

    /// Enables the MFU estimate with the given training FLOPs per token.
    pub fn set_flops_per_token(&mut self, flops: f64) {
        self.flops_per_token = Some(flops);
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The algorithm (e.g. to read its state after training).
    pub fn algorithm(&self) -> &A {
        &self.algorithm
    }

    /// The loop state (step, tokens seen, rollbacks).
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Trains until `max_steps` (or the data ends, or `stop_after_steps`), resuming
    /// from the run directory's `latest` checkpoint when there is one.
    pub fn fit(&mut self, data: &mut dyn BatchSource<A::Batch>) -> Result<TrainSummary> {
        self.join_job()?;
        let (rank, world) = self.rank_and_world();
        let main = rank == 0;
        let run_dir = self.config.output_dir.clone();
        std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
        if main {
            state::clean_stale_temps(&run_dir)?;
        }
        self.barrier()?;
        if let Some(dir) = state::latest_checkpoint(&run_dir)? {
            let (st, cursor) = state::load_checkpoint(&dir, &self.model, &mut self.optimizer)?;
            parallel::check_world_size(st.world_size, world, &dir)?;
            self.algorithm.restore_state(&st.algorithm_state)?;
            let own = if rank > 0 && data.per_rank() {
                parallel::load_rank_cursor(&dir, rank)?
            } else {
                None
            };
            if rank > 0 && data.per_rank() && own.is_none() {
                eprintln!(
                    "warning: rank {rank}: {} has no cursor of this rank; continuing from rank 0's",
                    dir.display()
                );
            }
            data.restore(own.as_ref().unwrap_or(&cursor))?;
            self.state = st;
        } else if let Some(comm) = &self.comm {
            parallel::broadcast_parameters(comm.as_ref(), &self.model)?;
        }
        self.state.world_size = world as u64;
        let metrics_path = run_dir.join("metrics.jsonl");
        // rank 0 alone writes metrics and shows progress
        let mut log = if main {
            let mut log = MetricsLog::open(&metrics_path)?;
            log.truncate_after_step(self.state.step)?;
            Some(log)
        } else {
            None
        };
        let mut progress = if main {
            Progress::new(self.config.max_steps, self.state.step, self.config.progress)
        } else {
            Progress::with_writer(
                self.config.max_steps,
                self.state.step,
                Box::new(std::io::sink()),
            )
        };
        if world > 1 && main {
            progress.println(&format!(
                "data parallel: {world} ranks ({} backend), global batch = {} micro-batches",
                self.comm.as_ref().map_or("single", |c| c.backend()),
                self.config.grad_accumulation_steps * world as u64
            ));
        }
        if self.state.step > 0 {
            progress.println(&format!(
                "resumed from step {} in {}",
                self.state.step,
                run_dir.display()
            ));
        }
        let mut monitor = ThroughputMonitor::new(self.config.throughput.clone())?;
        let (mut steps_this_process, mut last_loss, mut finished) = (0u64, f64::NAN, false);
        loop {
            if self.state.step >= self.config.max_steps {
                finished = true;
                break;
            }
            if self.config.stop_after_steps > 0
                && steps_this_process >= self.config.stop_after_steps
            {
                break;
            }
            let step = self.state.step;
            self.algorithm.before_step(step, &self.model)?;
            let started = Instant::now();
            let Some(mut result) = self.forward_backward(data)? else {
                break;
            };
            let grad_norm = clip_grad_norm(&mut result.grads, self.config.max_grad_norm)?;
            match self
                .state
                .spike
                .judge(&self.config.spike_guard, result.loss, grad_norm)
            {
                Verdict::Ok => {}
                bad => {
                    self.roll_back(&bad, data, log.as_mut(), &progress)?;
                    continue;
                }
            }
            let lr = self.config.learning_rate
                * self.config.schedule.factor(step, self.config.max_steps)
                * self.state.lr_scale;
            self.optimizer.step(self.model.vars(), &result.grads, lr)?;
            self.state.step += 1;
            self.state.tokens_seen += result.tokens;
            self.algorithm.after_step(self.state.step, &self.model)?;
            steps_this_process += 1;
            last_loss = result.loss;

            let step_s = started.elapsed().as_secs_f64();
            let tokens_per_s = result.tokens / step_s.max(1e-9);
            let mut record = json!({
                "step": self.state.step, "loss": result.loss, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_s, "tokens_seen": self.state.tokens_seen,
                "step_s": step_s, "data_wait_s": result.data_wait_s,
            });
            for (k, v) in result.metrics.means() {
                record[k] = v.into();
            }
            if let Some(f) = self
                .flops_per_token
                .filter(|_| self.config.peak_flops > 0.0)
            {
                record["mfu"] = telemetry::mfu(f, tokens_per_s, self.config.peak_flops).into();
            }
            if let Some(w) =
                monitor.observe(self.state.step, tokens_per_s, result.data_wait_s, step_s)
            {
                progress.println(&format!("warning: {}", w.message));
                record["warning"] = w.message.clone().into();
            }
            let last = self.state.step == self.config.max_steps;
            if main
                && self.evaluator.is_some()
                && (last
                    || (self.config.eval_every > 0
                        && self.state.step % self.config.eval_every == 0))
            {
                for (k, v) in
                    (self.evaluator.as_mut().expect("checked"))(&self.model, self.state.step)?
                {
                    record[format!("eval_{k}")] = v.into();
                }
            }
            let has_eval = record
                .as_object()
                .is_some_and(|m| m.keys().any(|k| k.starts_with("eval_")));
            if let Some(log) = log
                .as_mut()
                .filter(|_| last || self.state.step % self.config.log_every == 0 || has_eval)
            {
                log.write(&record)?;
            }
            progress.update(self.state.step, result.loss, lr, tokens_per_s);
            let save_now =
                self.config.save_every > 0 && self.state.step % self.config.save_every == 0;
            if save_now || last {
                if main {
                    self.save(&*data)?;
                }
                self.barrier()?; // the checkpoint is complete before any rank moves on
                if data.per_rank() && world > 1 {
                    if !main {
                        let dir = state::checkpoint_dir(&run_dir, self.state.step);
                        parallel::save_rank_cursor(&dir, rank, &data.cursor())?;
                    }
                    self.barrier()?;
                }
            }
        }
        progress.finish();
        let plots = if main && finished && self.config.plots {
            telemetry::plot_metrics(&metrics_path, &run_dir.join("plots"))?
        } else {
            vec![]
        };
        Ok(TrainSummary {
            step: self.state.step,
            last_loss,
            steps_this_process,
            checkpoint: state::latest_checkpoint(&run_dir)?,
            rollbacks: self.state.rollbacks,
            metrics_path,
            plots,
            finished,
        })
    }

    /// Draws the step's micro-batches, runs forward and backward on each, and returns
    /// the accumulated gradients; `None` when the data is exhausted.
    fn forward_backward(
        &mut self,
        data: &mut dyn BatchSource<A::Batch>,
    ) -> Result<Option<StepResult>> {
        let wait_start = Instant::now();
        let world = self.rank_and_world().1;
        let accumulation = self.config.grad_accumulation_steps as usize;
        let shard = parallel::draw_shard(data, accumulation, self.comm.as_deref())?;
        let data_wait_s = wait_start.elapsed().as_secs_f64();
        // Every rank agrees on `global_count` (same draws, or reduced for per-rank sources).
        if shard.global_count < world {
            return Ok(None); // the data ended (a partial last step needs one batch per rank)
        }
        let micro = shard.local;
        let mut units: f64 = micro.iter().map(|b| self.algorithm.loss_units(b)).sum();
        if let Some(comm) = &self.comm {
            // normalise by the units of the whole global batch: reduce before dividing
            let mut u = [units];
            comm.all_reduce_sum_f64(&mut u)?;
            units = u[0];
        }
        if units <= 0.0 {
            return Err(Error::Invalid(format!(
                "step {}: the batch has no trained units (every label ignored?)",
                self.state.step + 1
            )));
        }
        let params = self.model.vars();
        let mut acc: Vec<Option<Tensor>> = vec![None; params.len()];
        let (mut loss_sum, mut metrics) = (0.0f64, Metrics::new());
        for batch in &micro {
            let out = self.algorithm.loss(&self.model, batch)?;
            loss_sum += out
                .loss_sum
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            // d(loss_sum / units): every micro-batch is weighted by its share of the step's units
            let grads = (out.loss_sum / units)?.backward()?;
            for (slot, (_, var)) in acc.iter_mut().zip(params) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(prev) => (prev + g)?,
                        None => g.clone(),
                    });
                }
            }
            metrics.merge(&out.metrics);
        }
        let mut grads = acc
            .into_iter()
            .zip(params)
            .map(|(g, (_, var))| g.map_or_else(|| var.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if let Some(comm) = &self.comm {
            dist::all_reduce_grads(
                comm.as_ref(),
                &mut grads,
                self.config.distributed.bucket_bytes(),
            )?;
            let mut l = [loss_sum];
            comm.all_reduce_sum_f64(&mut l)?;
            loss_sum = l[0];
            metrics = parallel::reduce_metrics(comm.as_ref(), &metrics)?;
        }
        let tokens = metrics.sum("tokens");
        Ok(Some(StepResult {
            loss: loss_sum / units,
            grads,
            metrics,
            tokens,
            data_wait_s,
        }))
    }

    /// Handles a bad step: restore the last good checkpoint (weights, optimizer, step)
    /// but keep the data position, so the offending batches are skipped.
    fn roll_back(
        &mut self,
        verdict: &Verdict,
        data: &mut dyn BatchSource<A::Batch>,
        log: Option<&mut MetricsLog>,
        progress: &Progress,
    ) -> Result<()> {
        let guard = &self.config.spike_guard;
        let reason = match verdict {
            Verdict::NonFinite(what) => format!("non-finite {what}"),
            Verdict::Spike { loss, z } => format!("loss spike {loss:.4} (z = {z:.1})"),
            Verdict::Ok => return Ok(()),
        };
        if !guard.enabled {
            return Err(Error::Invalid(format!(
                "step {}: {reason} (spike guard disabled)",
                self.state.step + 1
            )));
        }
        let (rollbacks, mut lr_scale) = (self.state.rollbacks + 1, self.state.lr_scale);
        if rollbacks > guard.max_rollbacks {
            return Err(Error::Invalid(format!(
                "step {}: {reason}; giving up after {} rollbacks",
                self.state.step + 1,
                guard.max_rollbacks
            )));
        }
        if guard.lr_backoff_after > 0 && rollbacks % guard.lr_backoff_after == 0 {
            lr_scale *= guard.lr_backoff_factor;
        }
        let bad_step = self.state.step + 1;
        let skipped_to = data.cursor();
        let run_dir = self.config.output_dir.clone();
        let restored = match state::latest_checkpoint(&run_dir)? {
            Some(dir) => {
                let (st, _cursor) = state::load_checkpoint(&dir, &self.model, &mut self.optimizer)?;
                self.algorithm.restore_state(&st.algorithm_state)?;
                let history = std::mem::take(&mut self.state.spike);
                self.state = st;
                self.state.spike = history; // keep what we learned about normal losses
                Some(dir)
            }
            None => None, // nothing to roll back to: the update is simply not applied
        };
        self.state.rollbacks = rollbacks;
        self.state.lr_scale = lr_scale;
        let msg = format!(
            "rollback at step {bad_step}: {reason}; restored {} (step {}), skipping the batches since; lr scale {lr_scale}",
            restored.as_ref().map_or("nothing (no checkpoint yet)".into(), |d| d.display().to_string()),
            self.state.step
        );
        progress.println(&msg);
        let Some(log) = log else { return Ok(()) }; // ranks other than 0 keep no log
        log.truncate_after_step(self.state.step)?;
        log.write(&json!({
            "step": self.state.step, "event": "rollback", "bad_step": bad_step, "reason": reason,
            "skipped_to_data_cursor": skipped_to, "lr_scale": lr_scale, "rollbacks": rollbacks,
        }))?;
        Ok(())
    }

    /// Writes a checkpoint for the current step.
    fn save(&self, data: &dyn BatchSource<A::Batch>) -> Result<PathBuf> {
        let cursor: Value = data.cursor();
        let mut state = self.state.clone();
        state.algorithm_state = self.algorithm.checkpoint_state();
        let parts = CheckpointParts {
            model: &self.model,
            tokenizer: self.tokenizer.as_ref(),
            optimizer: &self.optimizer,
            state: &state,
            cursor: &cursor,
            seed: self.config.seed,
        };
        state::save_checkpoint(&self.config.output_dir, &parts, self.config.keep_last)
    }
}
