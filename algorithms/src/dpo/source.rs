//! `PreferenceSource`: micro-batches of preference pairs for the training loop.
//!
//! Each epoch visits every kept example once in an order shuffled from `(seed, epoch)`
//! alone, so the order does not depend on the batch size (batch 1 × accumulation 4 sees
//! the same pairs as batch 4 × accumulation 1) and a cursor `{epoch, position}` restores
//! it exactly. The last batch of an epoch may be short (HF's `drop_last = false`).

use super::collate::{collate, CollateOptions, PairBatch};
use candle_core::Device;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde_json::{json, Value};
use smelt::data::PreferenceExample;
use smelt::train::BatchSource;
use smelt::{Error, Result};

/// Shuffled, epoch-cycling micro-batches of [`PairBatch`]es.
#[derive(Debug, Clone)]
pub struct PreferenceSource {
    examples: Vec<PreferenceExample>,
    /// Indices of the examples that survive truncation (see [`CollateOptions::keeps`]).
    kept: Vec<usize>,
    batch_size: usize,
    seed: u64,
    options: CollateOptions,
    device: Device,
    epoch: u64,
    position: usize,
    order: Vec<usize>,
    max_epochs: Option<u64>,
}

impl PreferenceSource {
    /// A source of `batch_size` pairs per micro-batch; examples a `keep_start` truncation
    /// would leave without a completion token are dropped (see [`Self::dropped`]).
    pub fn new(
        examples: Vec<PreferenceExample>,
        batch_size: usize,
        seed: u64,
        options: CollateOptions,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Invalid(
                "PreferenceSource: batch_size must be at least 1".into(),
            ));
        }
        let kept: Vec<usize> = (0..examples.len())
            .filter(|&i| options.keeps(&examples[i]))
            .collect();
        if kept.is_empty() {
            return Err(Error::Invalid(format!(
                "PreferenceSource: none of the {} examples has a completion token within max_length {:?}",
                examples.len(),
                options.max_length
            )));
        }
        let mut source = PreferenceSource {
            examples,
            kept,
            batch_size,
            seed,
            options,
            device: device.clone(),
            epoch: 0,
            position: 0,
            order: vec![],
            max_epochs: None,
        };
        source.order = source.epoch_order(0);
        Ok(source)
    }

    /// Ends the data (`next_batch` returns `None`) after `epochs` full passes.
    pub fn with_max_epochs(mut self, epochs: u64) -> Self {
        self.max_epochs = Some(epochs);
        self
    }

    /// All examples, by dataset index (including dropped ones).
    pub fn examples(&self) -> &[PreferenceExample] {
        &self.examples
    }

    /// Dataset indices of the examples that are trained on.
    pub fn kept(&self) -> &[usize] {
        &self.kept
    }

    /// Examples dropped because their prompt alone fills `max_length`.
    pub fn dropped(&self) -> usize {
        self.examples.len() - self.kept.len()
    }

    /// How sequences are truncated and padded.
    pub fn options(&self) -> &CollateOptions {
        &self.options
    }

    /// The device batches are built on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The kept indices in epoch `epoch`'s order.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.kept.clone();
        let mut rng = StdRng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        order
    }
}

impl BatchSource<PairBatch> for PreferenceSource {
    fn next_batch(&mut self) -> Result<Option<PairBatch>> {
        if self.position >= self.order.len() {
            self.epoch += 1;
            self.position = 0;
            self.order = self.epoch_order(self.epoch);
        }
        if self.max_epochs.is_some_and(|m| self.epoch >= m) {
            return Ok(None);
        }
        let end = (self.position + self.batch_size).min(self.order.len());
        let picked: Vec<(usize, &PreferenceExample)> = self.order[self.position..end]
            .iter()
            .map(|&i| (i, &self.examples[i]))
            .collect();
        let batch = collate(&picked, &self.options, &self.device)?;
        self.position = end;
        Ok(Some(batch))
    }

    fn cursor(&self) -> Value {
        json!({ "epoch": self.epoch, "position": self.position, "seed": self.seed, "examples": self.kept.len() })
    }

    fn restore(&mut self, cursor: &Value) -> Result<()> {
        let field = |k: &str| {
            cursor.get(k).and_then(Value::as_u64).ok_or_else(|| {
                Error::checkpoint(
                    "data_cursor.json",
                    format!("DPO cursor: missing or non-integer `{k}` in {cursor}"),
                )
            })
        };
        let (epoch, position, seed, n) = (
            field("epoch")?,
            field("position")? as usize,
            field("seed")?,
            field("examples")?,
        );
        if seed != self.seed || n as usize != self.kept.len() || position > self.kept.len() {
            return Err(Error::checkpoint(
                "data_cursor.json",
                format!(
                    "DPO cursor {cursor} does not fit this source (seed {}, {} examples)",
                    self.seed,
                    self.kept.len()
                ),
            ));
        }
        self.epoch = epoch;
        self.position = position;
        self.order = self.epoch_order(epoch);
        Ok(())
    }
}
