//! The `Reward` trait and `WeightedRewards`, the weighted sum GRPO optimises.
//!
//! Key decision: a reward function is untrusted code on the training path. A panic in
//! it, or a hang (a catastrophic regex, a verifier stuck on a pathological answer),
//! must cost one sample, not the run. [`WeightedRewards::score_all`] therefore runs
//! each reward on a worker thread and waits on a channel with a deadline: a panic
//! (caught with `catch_unwind`) or a missed deadline scores `None` and logs an error to
//! stderr. Rust cannot kill a thread, so a reward that never returns keeps its worker
//! thread until the process ends; the trainer moves on. With no timeout the reward
//! runs on the calling thread (still under `catch_unwind`).

use serde_json::Value;
use smelt::{Error, Result};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A scalar reward for one completion. Called from worker threads, hence `Send + Sync`.
pub trait Reward: Send + Sync {
    /// Name under which the value is logged (unique within a [`WeightedRewards`]).
    fn name(&self) -> &str;

    /// The reward of `completion` (the generated text) for `prompt`; `sample` is the
    /// dataset row (extras such as `answer`). `None` = not applicable to this sample.
    fn score(&self, prompt: &str, completion: &str, sample: &Value) -> Option<f32>;
}

/// Default deadline for one reward call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Several rewards with weights: `total = Σ weight · value` over the values that are `Some`.
#[derive(Clone)]
pub struct WeightedRewards {
    rewards: Vec<(Arc<dyn Reward>, f32)>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for WeightedRewards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, f32)> = self.rewards.iter().map(|(r, w)| (r.name(), *w)).collect();
        f.debug_struct("WeightedRewards")
            .field("rewards", &names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WeightedRewards {
    /// Rewards with their weights, each call limited to [`DEFAULT_TIMEOUT`]. Names must
    /// be unique and weights finite.
    pub fn new(rewards: Vec<(Box<dyn Reward>, f32)>) -> Result<Self> {
        let mut seen = std::collections::BTreeSet::new();
        for (r, w) in &rewards {
            if !seen.insert(r.name().to_string()) {
                return Err(Error::Invalid(format!(
                    "rewards: two rewards are named `{}`",
                    r.name()
                )));
            }
            if !w.is_finite() {
                return Err(Error::Invalid(format!(
                    "rewards: weight of `{}` is {w}",
                    r.name()
                )));
            }
        }
        Ok(WeightedRewards {
            rewards: rewards
                .into_iter()
                .map(|(r, w)| (Arc::from(r), w))
                .collect(),
            timeout: Some(DEFAULT_TIMEOUT),
        })
    }

    /// Sets the per-call deadline; `None` runs rewards inline on the calling thread.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Names and weights, in order.
    pub fn weights(&self) -> Vec<(String, f32)> {
        self.rewards
            .iter()
            .map(|(r, w)| (r.name().to_string(), *w))
            .collect()
    }

    /// Scores one completion with every reward: `(weighted total, name → value)`.
    /// A reward that panics, errs by returning a non-finite value, or misses the
    /// deadline is `None` (logged) and left out of the total.
    pub fn score_all(
        &self,
        prompt: &str,
        completion: &str,
        sample: &Value,
    ) -> (f32, BTreeMap<String, Option<f32>>) {
        let mut total = 0.0f32;
        let mut values = BTreeMap::new();
        for (reward, weight) in &self.rewards {
            let value = self.score_one(reward, prompt, completion, sample);
            if let Some(v) = value {
                total += weight * v;
            }
            values.insert(reward.name().to_string(), value);
        }
        (total, values)
    }

    fn score_one(
        &self,
        reward: &Arc<dyn Reward>,
        prompt: &str,
        completion: &str,
        sample: &Value,
    ) -> Option<f32> {
        let name = reward.name().to_string();
        let outcome = match self.timeout {
            None => catch_unwind(AssertUnwindSafe(|| {
                reward.score(prompt, completion, sample)
            }))
            .map_err(|p| format!("panicked: {}", panic_message(&p))),
            Some(deadline) => {
                let (tx, rx) = mpsc::sync_channel(1);
                let (r, p, c, s) = (
                    Arc::clone(reward),
                    prompt.to_string(),
                    completion.to_string(),
                    sample.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name(format!("reward-{name}"))
                    .spawn(move || {
                        let out = catch_unwind(AssertUnwindSafe(|| r.score(&p, &c, &s)))
                            .map_err(|p| format!("panicked: {}", panic_message(&p)));
                        let _ = tx.send(out); // the receiver may have given up
                    });
                match spawned {
                    Err(e) => Err(format!("cannot start a worker thread: {e}")),
                    Ok(_) => rx
                        .recv_timeout(deadline)
                        .unwrap_or_else(|_| Err(format!("timed out after {deadline:?}"))),
                }
            }
        };
        match outcome {
            Ok(Some(v)) if !v.is_finite() => {
                eprintln!("error: reward `{name}` returned {v}; scored None");
                None
            }
            Ok(v) => v,
            Err(msg) => {
                eprintln!("error: reward `{name}` {msg}; scored None");
                None
            }
        }
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic>".into())
}
