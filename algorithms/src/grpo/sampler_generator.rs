//! `SamplerGenerator`: GRPO rollouts from the batched, continuously-batched `Sampler`.
//!
//! Each prompt gets `num_generations` requests whose seeds derive from the prompt
//! row's seed and the sample index, so a generation batch is a pure function of the
//! weights and the prompts (what exact resume and the async/sync equivalence need).
//! Behaviour log-probs come from the sampler under the unprocessed (temperature-only)
//! distribution; rewards from `WeightedRewards` on the decoded completion and the
//! dataset row.

use smelt::tokenizer::Tokenizer;
use smelt::{Model, Result};
use smelt_rollouts::service::{mix_seed, Generator, PromptRow};
use smelt_rollouts::{Request, Rollout, Sampler, SamplingParams, WeightedRewards};
use std::time::Instant;

/// Generates GRPO groups with the batched sampler.
pub struct SamplerGenerator {
    tokenizer: Tokenizer,
    params: SamplingParams,
    num_generations: usize,
    max_batch: usize,
    rewards: WeightedRewards,
}

impl SamplerGenerator {
    /// `params.seed` is replaced per sample; `max_batch` bounds concurrent sequences.
    pub fn new(
        tokenizer: Tokenizer,
        params: SamplingParams,
        num_generations: usize,
        max_batch: usize,
        rewards: WeightedRewards,
    ) -> Self {
        SamplerGenerator {
            tokenizer,
            params,
            num_generations,
            max_batch,
            rewards,
        }
    }
}

impl Generator for SamplerGenerator {
    fn generate(
        &mut self,
        model: &Model,
        prompts: &[PromptRow],
        version: u64,
    ) -> Result<Vec<Rollout>> {
        let started = Instant::now();
        let g = self.num_generations;
        let requests: Vec<Request> = prompts
            .iter()
            .enumerate()
            .flat_map(|(p, row)| (0..g).map(move |j| (p, j, row)))
            .map(|(p, j, row)| Request {
                id: (p * g + j) as u64,
                prompt_ids: row.prompt_ids.clone(),
                params: SamplingParams {
                    seed: mix_seed(row.seed ^ mix_seed(j as u64)),
                    ..self.params.clone()
                },
            })
            .collect();
        let sampler = Sampler::new(model, &self.tokenizer, self.max_batch)?;
        let completions = sampler.generate(requests)?;
        let secs = started.elapsed().as_secs_f64();
        let mut out = Vec::with_capacity(completions.len());
        for (k, c) in completions.into_iter().enumerate() {
            let row = &prompts[k / g];
            let prompt_text = self.tokenizer.decode(&row.prompt_ids, true)?;
            let (reward, rewards) = self.rewards.score_all(&prompt_text, &c.text, &row.data);
            out.push(Rollout {
                prompt_index: row.index,
                sample_index: (k % g) as u32,
                prompt_ids: row.prompt_ids.clone(),
                completion_ids: c.token_ids,
                completion_text: c.text,
                behaviour_logprobs: c.behaviour_logprobs,
                processed_logprobs: c.processed_logprobs,
                finish: c.finish,
                reward,
                rewards,
                weight_version: version,
                generation_s: secs,
            });
        }
        Ok(out)
    }
}
