//! Spike detection: is this step's loss (or gradient norm) a spike?
//!
//! A step is bad when its loss or gradient norm is not finite, or when its loss is
//! more than `z_threshold` standard deviations above the mean of the last `window`
//! good losses (after `min_history` of them). Only good losses enter the window, so a
//! spike cannot raise the bar for the next one.

use super::config::SpikeGuardConfig;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Why a step was judged bad.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Normal step.
    Ok,
    /// Loss or gradient norm is NaN or infinite.
    NonFinite(String),
    /// Loss z-score above the threshold.
    Spike {
        /// The offending loss.
        loss: f64,
        /// Its z-score against the window.
        z: f64,
    },
}

/// Running window of good losses (saved in checkpoints so resume judges identically).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SpikeDetector {
    /// Recent good losses, oldest first.
    pub history: VecDeque<f64>,
}

impl SpikeDetector {
    /// Judges a step; records the loss when the step is good.
    pub fn judge(&mut self, config: &SpikeGuardConfig, loss: f64, grad_norm: f64) -> Verdict {
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Verdict::NonFinite(format!("loss {loss}, grad norm {grad_norm}"));
        }
        if config.enabled && self.history.len() >= config.min_history {
            let n = self.history.len() as f64;
            let mean = self.history.iter().sum::<f64>() / n;
            let var = self.history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            // floor the std so a perfectly flat history does not flag tiny wiggles
            let std = var.sqrt().max(1e-3 * mean.abs()).max(1e-8);
            let z = (loss - mean) / std;
            if z > config.z_threshold {
                return Verdict::Spike { loss, z };
            }
        }
        self.history.push_back(loss);
        while self.history.len() > config.window {
            self.history.pop_front();
        }
        Verdict::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_non_finite_and_spikes_but_not_noise() {
        let cfg = SpikeGuardConfig {
            min_history: 5,
            ..Default::default()
        };
        let mut d = SpikeDetector::default();
        assert!(matches!(
            d.judge(&cfg, f64::NAN, 1.0),
            Verdict::NonFinite(_)
        ));
        assert!(matches!(
            d.judge(&cfg, 1.0, f64::INFINITY),
            Verdict::NonFinite(_)
        ));
        for i in 0..10 {
            assert_eq!(d.judge(&cfg, 3.0 + 0.01 * (i % 3) as f64, 1.0), Verdict::Ok);
        }
        assert_eq!(d.judge(&cfg, 3.02, 1.0), Verdict::Ok);
        assert!(matches!(d.judge(&cfg, 9.0, 1.0), Verdict::Spike { .. }));
        assert_eq!(d.history.len(), 11, "spikes never enter the window");
    }
}
