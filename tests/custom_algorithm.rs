//! The README's "library in 30 lines" example, compiled and run: a user-defined
//! objective (label-smoothed next-token loss) trained by the one loop.

use candle_core::Device;
use serde_json::{json, Value};
use smelt::train::{Algorithm, BatchSource, LossOutput, Metrics, TokenBatch, TrainConfig, Trainer};
use smelt::{Model, ModelConfig, ModelType, Result};

/// Next-token loss with label smoothing, as a user-defined objective.
struct Smoothed {
    eps: f64,
}

impl Algorithm for Smoothed {
    type Batch = TokenBatch;
    fn name(&self) -> &str {
        "smoothed"
    }
    fn loss_units(&self, b: &TokenBatch) -> f64 {
        b.trained_tokens().unwrap_or(0.0)
    }
    fn loss(&mut self, model: &Model, b: &TokenBatch) -> Result<LossOutput> {
        let logits = model.forward(&b.input_ids, b.position_ids.as_ref())?; // (B, T, V)
        let (n, v) = (logits.dim(0)? * logits.dim(1)?, logits.dim(2)?);
        let logits = logits.reshape((n, v))?;
        let (nll, count, _) = smelt::ops::cross_entropy_sum(&logits, &b.labels.reshape(n)?)?;
        let mask = b
            .labels
            .reshape(n)?
            .ge(0i64)?
            .to_dtype(candle_core::DType::F32)?;
        let uniform = (candle_nn::ops::log_softmax(&logits, 1)?.mean(1)? * &mask)?
            .sum_all()?
            .neg()?;
        let loss_sum = ((nll * (1.0 - self.eps))? + (uniform * self.eps)?)?;
        let mut metrics = Metrics::new();
        metrics.add("tokens", count, 1.0);
        Ok(LossOutput { loss_sum, metrics })
    }
}

/// The same 4 rows every step.
struct Fixed;

impl BatchSource<TokenBatch> for Fixed {
    fn next_batch(&mut self) -> Result<Option<TokenBatch>> {
        let ids: Vec<Vec<u32>> = (0..4)
            .map(|r| (0..10).map(|t| (r * 3 + t * 7) % 50).collect())
            .collect();
        let labels: Vec<Vec<i64>> = ids
            .iter()
            .map(|r| r[1..].iter().map(|&x| x as i64).chain([-100]).collect())
            .collect();
        TokenBatch::from_rows(&ids, None, &labels, &Device::Cpu).map(Some)
    }
    fn cursor(&self) -> Value {
        json!({})
    }
    fn restore(&mut self, _: &Value) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_user_defined_algorithm_trains_through_the_one_loop() {
    let dir = tempfile::tempdir().unwrap();
    let model =
        Model::new_random(ModelConfig::tiny(ModelType::Llama, 50), &Device::Cpu, 0).unwrap();
    let config = TrainConfig {
        output_dir: dir.path().into(),
        max_steps: 15,
        learning_rate: 1e-2,
        save_every: 0,
        progress: false,
        plots: false,
        ..Default::default()
    };
    let summary = Trainer::new(model, None, Smoothed { eps: 0.1 }, config)
        .unwrap()
        .fit(&mut Fixed)
        .unwrap();
    assert!(summary.finished);
    let log = smelt::telemetry::MetricsLog::read_all(&summary.metrics_path).unwrap();
    let first = log[0]["loss"].as_f64().unwrap();
    assert!(
        summary.last_loss < first - 0.5,
        "loss {first} -> {}",
        summary.last_loss
    );
    assert!(
        summary.checkpoint.is_some(),
        "the last step is checkpointed"
    );
}
