//! What the rollout service consumes: prompt rows, where they come from
//! ([`PromptSource`], [`CyclingPrompts`]) and what turns them into rollouts ([`Generator`]).
//!
//! Prompts and per-sample seeds are a pure function of the generation-batch index, so
//! the synchronous loop and the service produce the same rollouts from the same
//! weights, and a resumed run can regenerate any batch.

use crate::rollout::Rollout;
use rand::{seq::SliceRandom, SeedableRng};
use smelt::{Error, Model, Result};

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
