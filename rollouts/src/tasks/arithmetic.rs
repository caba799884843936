//! Arithmetic word problems generated from a seed, in the three formats post-training
//! needs: SFT conversations, DPO preference pairs, GRPO prompts with answers.
//!
//! Key decision: row `i` depends only on `(seed, i)` (its own RNG stream), so
//! `prompts(10)` starts with `prompts(5)`, and the SFT, DPO and GRPO views of row `i`
//! are the same problem. One operation reads `What is 17 plus 25?`; more are nested
//! left to right with parentheses, `What is (17 plus 25) times 3?`, so there is no
//! precedence to guess. The SFT answer is phrased `17 plus 25 is 42.` (as
//! `shared/bench/reference.py`), whose last number is the answer [`crate::rewards::MathAnswer`]
//! extracts. Rows are serde_json values in TRL's conversational formats
//! (`messages`; `prompt` / `chosen` / `rejected`; `prompt` + `answer`).

use crate::sampler::request_seed;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use smelt::{Error, Result};

/// A generator of arithmetic problems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArithmeticTask {
    /// Seed of the problem stream. Default 0.
    pub seed: u64,
    /// Operands are drawn from `0..=max_operand` (≥ 1). Default 50.
    pub max_operand: u32,
    /// Operations per problem (≥ 1), among plus, minus, times. Default 1.
    pub num_operations: usize,
}

impl Default for ArithmeticTask {
    fn default() -> Self {
        ArithmeticTask {
            seed: 0,
            max_operand: 50,
            num_operations: 1,
        }
    }
}

/// One problem: the user's question and the exact answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The user message, e.g. `What is 17 plus 25?`.
    pub prompt: String,
    /// The expression as the answer restates it, e.g. `17 plus 25`.
    pub expression: String,
    /// The integer answer, e.g. `42`.
    pub answer: String,
}

impl TaskRow {
    /// The assistant's full answer for SFT, e.g. `17 plus 25 is 42.`.
    pub fn sft_answer(&self) -> String {
        format!("{} is {}.", self.expression, self.answer)
    }
}

impl ArithmeticTask {
    /// Checks the difficulty settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.max_operand == 0 {
            return Err(Error::Invalid(
                "arithmetic task: `max_operand` must be >= 1".into(),
            ));
        }
        if self.num_operations == 0 {
            return Err(Error::Invalid(
                "arithmetic task: `num_operations` must be >= 1".into(),
            ));
        }
        Ok(())
    }

    /// Problem `index` of the stream.
    pub fn row(&self, index: u64) -> Result<TaskRow> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(request_seed(self.seed, index));
        let mut value = rng.random_range(0..=self.max_operand) as i64;
        let mut expression = value.to_string();
        for op in 0..self.num_operations {
            let operand = rng.random_range(0..=self.max_operand) as i64;
            let (word, next) = match rng.random_range(0..3u8) {
                0 => ("plus", value + operand),
                1 => ("minus", value - operand),
                _ => ("times", value * operand),
            };
            if op > 0 {
                expression = format!("({expression})");
            }
            expression = format!("{expression} {word} {operand}");
            value = next;
        }
        Ok(TaskRow {
            prompt: format!("What is {expression}?"),
            expression,
            answer: value.to_string(),
        })
    }

    /// The first `n` problems.
    pub fn rows(&self, n: usize) -> Result<Vec<TaskRow>> {
        (0..n as u64).map(|i| self.row(i)).collect()
    }

    /// SFT rows: `{"messages": [user question, assistant "17 plus 25 is 42."]}`.
    pub fn sft_rows(&self, n: usize) -> Result<Vec<Value>> {
        Ok(self
            .rows(n)?
            .into_iter()
            .map(|r| {
                json!({"messages": [
                    {"role": "user", "content": r.prompt},
                    {"role": "assistant", "content": r.sft_answer()},
                ]})
            })
            .collect())
    }

    /// DPO rows: `{"prompt": [user], "chosen": [assistant answer], "rejected": [assistant
    /// wrong answer]}`; the wrong answer is off by 1 to 3 either way.
    pub fn preference_rows(&self, n: usize) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(n);
        for (i, r) in self.rows(n)?.into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(request_seed(self.seed ^ 0xD90, i as u64));
            let off = rng.random_range(1..=3i64) * if rng.random::<bool>() { 1 } else { -1 };
            let answer: i64 = r
                .answer
                .parse()
                .map_err(|_| Error::Invalid(format!("arithmetic task: bad answer {}", r.answer)))?;
            out.push(json!({
                "prompt": [{"role": "user", "content": r.prompt}],
                "chosen": [{"role": "assistant", "content": r.answer}],
                "rejected": [{"role": "assistant", "content": (answer + off).to_string()}],
            }));
        }
        Ok(out)
    }

    /// GRPO rows: `{"prompt": [user], "answer": "42"}` (the answer is what
    /// [`crate::rewards::MathAnswer`] compares with).
    pub fn prompts(&self, n: usize) -> Result<Vec<Value>> {
        Ok(self
            .rows(n)?
            .into_iter()
            .map(|r| {
                json!({
                    "prompt": [{"role": "user", "content": r.prompt}],
                    "answer": r.answer,
                })
            })
            .collect())
    }
}
