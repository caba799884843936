//! Learning-rate schedules: a multiplier of the peak learning rate per optimizer step.
//!
//! Sources, matched formula for formula (`tests/optim_golden.rs` holds them equal to
//! 1e-9 against values recorded by `scripts/make_optim_fixtures.py`):
//! - `constant`, `linear`, `cosine`: transformers `optimization.py`
//!   (`get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//!   `get_cosine_with_min_lr_schedule_with_warmup`, which is
//!   `get_cosine_schedule_with_warmup` when `min_lr_ratio = 0`).
//! - `wsd`: warmup-stable-decay, introduced by MiniCPM (Hu et al. 2024,
//!   arXiv:2404.06395) and used by SmolLM2/SmolLM3 (decay over the last 10% of
//!   training); the `1-sqrt` decay shape is from Hägele et al. 2024 (arXiv:2405.18392).
//!   Formulas are transformers' `get_wsd_schedule` (linear warmup from `min_lr_ratio`).
//!
//! Design decisions:
//! - A schedule is a pure function of the 0-based optimizer step, so resuming needs only
//!   the step count, never scheduler state.
//! - Warmup counts the step being taken: step `s < warmup_steps` gets
//!   `(s + 1) / warmup_steps` (HF's formula evaluated at `s + 1`), so the first update
//!   is not wasted at learning rate 0 as it is with HF's `LambdaLR` (whose first update
//!   uses `lambda(0) = 0`). From `warmup_steps` on, the value is HF's at `s` exactly.
//! - Past `total_steps` every schedule holds at its final value (`min_lr_ratio`, or 1 for
//!   `constant`) instead of, e.g., cosine rising again.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Shape of the WSD decay phase, decaying from 1 to `min_lr_ratio`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WsdDecay {
    /// `1 - progress` (TOML `"linear"`). SmolLM3's choice.
    #[default]
    #[serde(rename = "linear")]
    Linear,
    /// `1 - sqrt(progress)` (TOML `"1-sqrt"`, as transformers spells it). Hägele et
    /// al. 2024 find it beats linear decay at equal cost.
    #[serde(rename = "1-sqrt", alias = "one_minus_sqrt")]
    OneMinusSqrt,
}

fn default_decay_fraction() -> f64 {
    0.1
}

/// A learning-rate schedule, in TOML a table tagged by `kind`:
///
/// ```toml
/// [schedule]
/// kind = "wsd"          # constant | cosine | linear | wsd
/// warmup_steps = 2000
/// decay_fraction = 0.1
/// decay = "linear"      # or "1-sqrt"
/// ```
///
/// Every step count is in optimizer steps (after gradient accumulation); every ratio is
/// a fraction of the peak learning rate. Unknown keys are errors that name the key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Linear warmup, then the peak learning rate forever
    /// (transformers `get_constant_schedule_with_warmup`).
    Constant {
        /// Warmup length in optimizer steps. Default 0.
        #[serde(default)]
        warmup_steps: u64,
    },
    /// Linear warmup, then half-cosine decay to `min_lr_ratio` at `total_steps`
    /// (transformers `get_cosine_with_min_lr_schedule_with_warmup`, `num_cycles = 0.5`).
    Cosine {
        /// Warmup length in optimizer steps. Default 0.
        #[serde(default)]
        warmup_steps: u64,
        /// Final multiplier, in [0, 1]. Default 0 (transformers); Llama/nanotron
        /// recipes commonly use 0.1.
        #[serde(default)]
        min_lr_ratio: f64,
    },
    /// Linear warmup, then linear decay to `min_lr_ratio` at `total_steps`
    /// (transformers `get_linear_schedule_with_warmup`, TRL's default; the floor is
    /// applied as `f * (1 - min_lr_ratio) + min_lr_ratio`).
    Linear {
        /// Warmup length in optimizer steps. Default 0.
        #[serde(default)]
        warmup_steps: u64,
        /// Final multiplier, in [0, 1]. Default 0 (transformers).
        #[serde(default)]
        min_lr_ratio: f64,
    },
    /// Warmup-stable-decay (MiniCPM; SmolLM3): linear warmup from `min_lr_ratio`, the
    /// peak until the last `decay_fraction` of training, then `decay` down to
    /// `min_lr_ratio` (transformers `get_wsd_schedule`, linear warmup).
    Wsd {
        /// Warmup length in optimizer steps. Default 0 (SmolLM3 used 2000).
        #[serde(default)]
        warmup_steps: u64,
        /// Fraction of `total_steps` spent decaying, in [0, 1]; the decay length is
        /// `round(decay_fraction * total_steps)` steps. Default 0.1 (SmolLM2/SmolLM3).
        #[serde(default = "default_decay_fraction")]
        decay_fraction: f64,
        /// Decay shape, `"linear"` (default, SmolLM3) or `"1-sqrt"` (Hägele et al. 2024).
        #[serde(default)]
        decay: WsdDecay,
        /// Multiplier at the start of warmup and at the end of decay, in [0, 1].
        /// Default 0 (SmolLM3 decays to 0).
        #[serde(default)]
        min_lr_ratio: f64,
    },
}

impl Default for Schedule {
    /// `constant` with no warmup: the peak learning rate at every step.
    fn default() -> Self {
        Schedule::Constant { warmup_steps: 0 }
    }
}

/// Maps `f` in [0, 1] onto [`min_lr_ratio`, 1] and clamps at 0, as transformers does.
fn floor_at(f: f64, min_lr_ratio: f64) -> f64 {
    (f * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
}

impl Schedule {
    /// Warmup length in optimizer steps.
    pub fn warmup_steps(&self) -> u64 {
        match *self {
            Schedule::Constant { warmup_steps }
            | Schedule::Cosine { warmup_steps, .. }
            | Schedule::Linear { warmup_steps, .. }
            | Schedule::Wsd { warmup_steps, .. } => warmup_steps,
        }
    }

    /// WSD's decay length in optimizer steps for a run of `total_steps`
    /// (`round(decay_fraction * total_steps)`); 0 for other schedules.
    pub fn decay_steps(&self, total_steps: u64) -> u64 {
        match *self {
            Schedule::Wsd { decay_fraction, .. } => {
                (decay_fraction.clamp(0.0, 1.0) * total_steps as f64).round() as u64
            }
            _ => 0,
        }
    }

    /// Learning-rate multiplier at optimizer step `step` (0-based) of `total_steps`.
    ///
    /// A pure function of its arguments, so resume needs only the step. Assumes
    /// [`Schedule::validate`] passed for `total_steps`; it never panics either way.
    pub fn factor(&self, step: u64, total_steps: u64) -> f64 {
        let warmup = self.warmup_steps();
        if step < warmup {
            // (step + 1) / warmup: the step being taken counts (see module docs).
            let ramp = (step + 1) as f64 / warmup as f64;
            return match *self {
                Schedule::Wsd { min_lr_ratio, .. } => floor_at(ramp, min_lr_ratio),
                _ => ramp,
            };
        }
        let s = step as f64;
        let w = warmup as f64;
        let t = total_steps as f64;
        match *self {
            Schedule::Constant { .. } => 1.0,
            Schedule::Linear { min_lr_ratio, .. } => {
                // HF: max(0, (T - s) / max(1, T - w))
                let f = ((t - s) / (t - w).max(1.0)).max(0.0);
                floor_at(f, min_lr_ratio)
            }
            Schedule::Cosine { min_lr_ratio, .. } => {
                // HF: 0.5 (1 + cos(pi * 2 * 0.5 * progress)), progress held at 1 past T.
                let progress = ((s - w) / (t - w).max(1.0)).min(1.0);
                let f = 0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos());
                floor_at(f, min_lr_ratio)
            }
            Schedule::Wsd {
                decay,
                min_lr_ratio,
                ..
            } => {
                let decay_steps = self.decay_steps(total_steps);
                let stable = total_steps.saturating_sub(warmup + decay_steps);
                if step < warmup + stable {
                    return 1.0;
                }
                if step >= warmup + stable + decay_steps {
                    return min_lr_ratio;
                }
                let progress = (step - warmup - stable) as f64 / decay_steps.max(1) as f64;
                let f = match decay {
                    WsdDecay::Linear => 1.0 - progress,
                    WsdDecay::OneMinusSqrt => 1.0 - progress.sqrt(),
                };
                floor_at(f, min_lr_ratio)
            }
        }
    }

    /// Checks the schedule against a run of `total_steps` optimizer steps; errors name
    /// the offending field (`schedule.decay_fraction = 1.5: must be in [0, 1]`).
    pub fn validate(&self, total_steps: u64) -> Result<()> {
        let bad = |key: &str, value: String, why: &str| {
            Err(Error::Invalid(format!("schedule.{key} = {value}: {why}")))
        };
        if total_steps == 0 {
            return bad(
                "total_steps",
                "0".into(),
                "a run needs at least one optimizer step",
            );
        }
        let warmup = self.warmup_steps();
        if warmup > total_steps {
            return bad(
                "warmup_steps",
                warmup.to_string(),
                &format!("exceeds the run's total_steps = {total_steps}"),
            );
        }
        match *self {
            Schedule::Constant { .. } => {}
            Schedule::Cosine { min_lr_ratio, .. } | Schedule::Linear { min_lr_ratio, .. } => {
                if !(0.0..=1.0).contains(&min_lr_ratio) {
                    return bad(
                        "min_lr_ratio",
                        min_lr_ratio.to_string(),
                        "must be in [0, 1]",
                    );
                }
            }
            Schedule::Wsd {
                decay_fraction,
                min_lr_ratio,
                ..
            } => {
                if !(0.0..=1.0).contains(&min_lr_ratio) {
                    return bad(
                        "min_lr_ratio",
                        min_lr_ratio.to_string(),
                        "must be in [0, 1]",
                    );
                }
                if !(0.0..=1.0).contains(&decay_fraction) {
                    return bad(
                        "decay_fraction",
                        decay_fraction.to_string(),
                        "must be in [0, 1]",
                    );
                }
                let decay_steps = self.decay_steps(total_steps);
                if warmup + decay_steps > total_steps {
                    return bad(
                        "decay_fraction",
                        decay_fraction.to_string(),
                        &format!(
                            "warmup_steps ({warmup}) + decay steps ({decay_steps}) exceed total_steps = {total_steps}"
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WSD, 10 warmup + 70 stable + 20 decay steps, linear decay to 0.1:
    /// warmup 0.1 + 0.9 (s+1)/10, stable exactly 1, decay 1 - 0.9 (s-80)/20, then 0.1.
    #[test]
    fn wsd_phases_by_hand() {
        let s = Schedule::Wsd {
            warmup_steps: 10,
            decay_fraction: 0.2,
            decay: WsdDecay::Linear,
            min_lr_ratio: 0.1,
        };
        s.validate(100).unwrap();
        assert!((s.factor(0, 100) - (0.1 + 0.9 * 0.1)).abs() < 1e-15);
        assert_eq!(s.factor(9, 100), 1.0);
        for step in 10..80 {
            assert_eq!(s.factor(step, 100), 1.0, "stable phase at step {step}");
        }
        assert_eq!(s.factor(80, 100), 1.0);
        assert!((s.factor(90, 100) - (1.0 - 0.9 * 0.5)).abs() < 1e-15);
        assert!((s.factor(99, 100) - (1.0 - 0.9 * 19.0 / 20.0)).abs() < 1e-15);
        assert_eq!(s.factor(100, 100), 0.1);
        assert_eq!(s.factor(1000, 100), 0.1);
    }

    /// Cosine with warmup 4 of 20, floor 0.1: halfway through the decay (step 12) the
    /// cosine is 0.5, so 0.5 * 0.9 + 0.1 = 0.55; at and past the end it is the floor.
    #[test]
    fn cosine_by_hand() {
        let s = Schedule::Cosine {
            warmup_steps: 4,
            min_lr_ratio: 0.1,
        };
        assert_eq!(s.factor(0, 20), 0.25);
        assert_eq!(s.factor(3, 20), 1.0);
        assert_eq!(s.factor(4, 20), 1.0);
        assert!((s.factor(12, 20) - 0.55).abs() < 1e-12);
        assert!((s.factor(20, 20) - 0.1).abs() < 1e-12);
        assert!((s.factor(37, 20) - 0.1).abs() < 1e-12);
    }

    /// Linear with no warmup over 4 steps: 1, 3/4, 1/2, 1/4 (HF), floor 0 then 0.
    #[test]
    fn linear_by_hand() {
        let s = Schedule::Linear {
            warmup_steps: 0,
            min_lr_ratio: 0.0,
        };
        let got: Vec<f64> = (0..6).map(|i| s.factor(i, 4)).collect();
        assert_eq!(got, vec![1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        assert_eq!(Schedule::default().factor(7, 4), 1.0);
    }

    #[test]
    fn validate_names_the_field() {
        let s = Schedule::Wsd {
            warmup_steps: 95,
            decay_fraction: 0.1,
            decay: WsdDecay::OneMinusSqrt,
            min_lr_ratio: 0.0,
        };
        let err = s.validate(100).unwrap_err().to_string();
        assert!(err.contains("decay_fraction"), "{err}");
        let err = Schedule::Constant { warmup_steps: 11 }
            .validate(10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("warmup_steps"), "{err}");
        let err = Schedule::Cosine {
            warmup_steps: 0,
            min_lr_ratio: -0.5,
        }
        .validate(10)
        .unwrap_err()
        .to_string();
        assert!(err.contains("min_lr_ratio"), "{err}");
    }
}
