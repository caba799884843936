//! Supervised fine-tuning: TRL's `SFTTrainer` semantics as one [`Algorithm`].
//!
//! The data pipeline (`smelt::data`) turns records into [`SftExample`]s whose loss mask
//! already encodes `assistant_only_loss` / `completion_only_loss`; [`SftBatches`] serves them
//! as micro-batches (one example per row right-padded, or best-fit-decreasing packed rows
//! with restarting `position_ids`, or TRL's padding-free single row), reshuffled every epoch;
//! [`Sft`] is the next-token loss over the labelled tokens. Key decision: the loss is a
//! *sum* and [`Sft::loss_units`] counts trained tokens, so the loop divides by the trained
//! tokens of the whole accumulated step — every token weighs the same whatever the
//! micro-batch size, padding or packing (TRL's `average_tokens_across_devices` behaviour),
//! and batch 1 × accumulation 4 equals batch 4 × accumulation 1.

use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use smelt::data::{pack_bfd, packed_batch, padded_batch, SftEncodeOptions, SftExample};
use smelt::rng::splitmix64;
use smelt::train::{Algorithm, BatchSource, LossOutput, Metrics, NextTokenLoss, TokenBatch};
use smelt::{Error, Model, Result};

/// How examples are packed (TRL `packing_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackingStrategy {
    /// Best-fit decreasing, over-long examples truncated (TRL default `"bfd"`).
    Bfd,
}

/// SFT settings, with TRL `SFTConfig` names and defaults (TRL 1.16).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Tokens kept per example (`keep_start` truncation), and the packed row length. TRL default 1024.
    pub max_length: usize,
    /// Pack examples into rows of `max_length` tokens (TRL default false).
    pub packing: bool,
    /// How to pack (TRL default `bfd`).
    pub packing_strategy: PackingStrategy,
    /// Without packing, put each micro-batch's examples in one row with restarting
    /// `position_ids` instead of padding (TRL default false; packing implies it).
    pub padding_free: bool,
    /// Train only on assistant tokens of conversations (TRL default false).
    pub assistant_only_loss: bool,
    /// Train only on completions; unset = TRL's auto (true for prompt–completion data).
    pub completion_only_loss: Option<bool>,
    /// Rows (examples, or packed rows) per micro-batch (HF `per_device_train_batch_size`, default 8).
    pub per_device_train_batch_size: usize,
    /// Seed of the per-epoch shuffle (HF `seed`, default 42).
    pub seed: u64,
    /// Reshuffle the rows every epoch, as HF Trainer's random sampler does (default true).
    pub shuffle: bool,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            max_length: 1024,
            packing: false,
            packing_strategy: PackingStrategy::Bfd,
            padding_free: false,
            assistant_only_loss: false,
            completion_only_loss: None,
            per_device_train_batch_size: 8,
            seed: 42,
            shuffle: true,
        }
    }
}

impl SftConfig {
    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str| {
            Err(Error::config(
                "sft config",
                format!("`{key}` must be at least 1"),
            ))
        };
        if self.max_length == 0 {
            return bad("max_length");
        }
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size");
        }
        Ok(())
    }

    /// The encoder options these settings imply.
    pub fn encode_options(&self) -> SftEncodeOptions {
        SftEncodeOptions {
            max_length: Some(self.max_length),
            assistant_only_loss: self.assistant_only_loss,
            completion_only_loss: self.completion_only_loss,
        }
    }
}

/// How rows become a micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One example per row, right-padded.
    Padded,
    /// One packed bin per row, padded to the longest.
    Packed,
    /// All the micro-batch's examples in a single row.
    PaddingFree,
}

/// Micro-batches of SFT examples, shuffled per epoch; the position is `(epoch, next row)`.
///
/// A "row" is one example, or one packed bin of examples (packing is done once, over the
/// dataset in its order, as TRL packs the prepared dataset). The order of epoch `e` is a
/// pure function of `(seed, e)`, so [`BatchSource::restore`] reproduces it exactly. The
/// last micro-batch of an epoch may be smaller (HF `dataloader_drop_last` false).
pub struct SftBatches {
    rows: Vec<Vec<SftExample>>,
    layout: Layout,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    pad_id: u32,
    device: Device,
    epoch: u64,
    next: usize,
    order: Vec<usize>,
}

impl SftBatches {
    /// A source over `examples` (already encoded and truncated); `pad_id` fills padding.
    pub fn new(
        examples: Vec<SftExample>,
        config: &SftConfig,
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if examples.is_empty() {
            return Err(Error::Invalid(
                "SFT: the dataset has no examples with trained tokens".into(),
            ));
        }
        let (rows, layout) = if config.packing {
            let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
            let bins = pack_bfd(&lengths, config.max_length);
            let rows = bins
                .into_iter()
                .map(|bin| {
                    bin.into_iter()
                        .map(|i| cut(&examples[i], config.max_length))
                        .collect()
                })
                .collect();
            (rows, Layout::Packed)
        } else {
            let layout = if config.padding_free {
                Layout::PaddingFree
            } else {
                Layout::Padded
            };
            (examples.into_iter().map(|e| vec![e]).collect(), layout)
        };
        let mut source = SftBatches {
            rows,
            layout,
            batch_size: config.per_device_train_batch_size,
            seed: config.seed,
            shuffle: config.shuffle,
            pad_id,
            device: device.clone(),
            epoch: 0,
            next: 0,
            order: vec![],
        };
        source.order = source.epoch_order(0);
        Ok(source)
    }

    /// Rows (examples or packed bins) per epoch.
    pub fn rows_per_epoch(&self) -> usize {
        self.rows.len()
    }

    /// The rows of epoch `epoch` in the order served: a Fisher–Yates shuffle driven by
    /// SplitMix64 of `(seed, epoch)` (self-contained, so the order never changes with a
    /// dependency upgrade and old cursors stay exact).
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        if self.shuffle {
            let mut state = self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
            for i in (1..order.len()).rev() {
                let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        order
    }
}

/// `ex` cut to `max` tokens (BFD truncates over-long examples rather than splitting them).
fn cut(ex: &SftExample, max: usize) -> SftExample {
    let n = ex.input_ids.len().min(max);
    SftExample {
        input_ids: ex.input_ids[..n].to_vec(),
        loss_mask: ex.loss_mask[..n].to_vec(),
    }
}

impl BatchSource<TokenBatch> for SftBatches {
    fn next_batch(&mut self) -> Result<Option<TokenBatch>> {
        if self.next >= self.order.len() {
            self.epoch += 1;
            self.next = 0;
            self.order = self.epoch_order(self.epoch);
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let rows: Vec<&Vec<SftExample>> = self.order[self.next..end]
            .iter()
            .map(|&i| &self.rows[i])
            .collect();
        self.next = end;
        let batch = match self.layout {
            Layout::Padded => padded_batch(
                &rows.iter().map(|r| &r[0]).collect::<Vec<_>>(),
                self.pad_id,
                &self.device,
            ),
            Layout::Packed => {
                let rows: Vec<Vec<&SftExample>> = rows.iter().map(|r| r.iter().collect()).collect();
                packed_batch(&rows, self.pad_id, &self.device)
            }
            Layout::PaddingFree => packed_batch(
                &[rows.iter().map(|r| &r[0]).collect()],
                self.pad_id,
                &self.device,
            ),
        }?;
        Ok(Some(batch))
    }

    fn cursor(&self) -> Value {
        json!({ "epoch": self.epoch, "next": self.next, "rows": self.rows.len() })
    }

    fn restore(&mut self, cursor: &Value) -> Result<()> {
        let field = |k: &str| {
            cursor[k]
                .as_u64()
                .ok_or_else(|| Error::config("data_cursor.json", format!("missing integer `{k}`")))
        };
        let (epoch, next, rows) = (
            field("epoch")?,
            field("next")? as usize,
            field("rows")? as usize,
        );
        if rows != self.rows.len() || next > rows {
            return Err(Error::config(
                "data_cursor.json",
                format!(
                    "the cursor is for a dataset of {rows} rows, this one has {}",
                    self.rows.len()
                ),
            ));
        }
        self.epoch = epoch;
        self.next = next;
        self.order = self.epoch_order(epoch);
        Ok(())
    }
}

/// The SFT objective: cross-entropy summed over the labelled tokens.
#[derive(Debug, Clone, Default)]
pub struct Sft {
    inner: NextTokenLoss,
}

impl Sft {
    /// The objective (it has no settings: everything lives in the data's labels).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Algorithm for Sft {
    type Batch = TokenBatch;

    fn name(&self) -> &str {
        "sft"
    }

    /// Trained (labelled) tokens: the loop averages over all of them in the step.
    fn loss_units(&self, batch: &TokenBatch) -> f64 {
        self.inner.loss_units(batch)
    }

    /// Metrics: `mean_token_accuracy` (argmax == label over trained tokens, as TRL),
    /// `num_tokens` (tokens in the micro-batch, padding included; TRL's cumulative count is
    /// the loop's `tokens_seen`), `trained_tokens`, and `tokens` (which the loop sums).
    fn loss(&mut self, model: &Model, batch: &TokenBatch) -> Result<LossOutput> {
        let out = self.inner.loss(model, batch)?;
        let means = out.metrics.means();
        let trained = out.metrics.sum("trained_tokens");
        let tokens = out.metrics.sum("tokens");
        let mut metrics = Metrics::new();
        metrics.add(
            "mean_token_accuracy",
            means.get("token_accuracy").copied().unwrap_or(0.0) * trained,
            trained,
        );
        metrics.add("num_tokens", tokens, 1.0);
        metrics.add("trained_tokens", trained, 1.0);
        metrics.add("tokens", tokens, 1.0);
        Ok(LossOutput {
            loss_sum: out.loss_sum,
            metrics,
        })
    }
}
