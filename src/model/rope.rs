//! Rotary embedding tables, gathered per position.
//!
//! Positions come from `position_ids` (which restart at every packed document), so
//! the tables are gathered per (row, token) instead of sliced from a prefix. The
//! frequencies are computed in f32 exactly as transformers does
//! (`1 / theta^(arange(0, d, 2) / d)`, then `pos * inv_freq` in f32) so that logits
//! agree to float rounding.

use super::config::{ModelConfig, RopeScaling};
use candle_core::{Device, Result, Tensor};

/// Inverse frequencies `(D/2,)` for `config`, with its rope scaling applied.
pub fn inv_freq(config: &ModelConfig) -> Vec<f32> {
    let d = config.head_dim;
    let base = config.rope_theta as f32;
    let mut freqs: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / d as f32))
        .collect();
    match &config.rope_scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            for f in freqs.iter_mut() {
                *f /= *factor as f32;
            }
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let old = *original_max_position_embeddings as f32;
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            for f in freqs.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - low) / (high - low);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
    }
    freqs
}

/// `cos` and `sin` tables `(B, 1, T, D)` for the given positions `(B, T)`.
pub fn tables(
    inv_freq: &[f32],
    positions: &[Vec<u32>],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = positions.len();
    let t = positions.first().map_or(0, |r| r.len());
    let half = inv_freq.len();
    let d = 2 * half;
    let mut cos = Vec::with_capacity(b * t * d);
    let mut sin = Vec::with_capacity(b * t * d);
    for row in positions {
        for &p in row {
            // emb = cat(freqs, freqs): the same angle for element i and i + D/2
            let angles: Vec<f32> = inv_freq.iter().map(|&f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
    }
    let cos = Tensor::from_vec(cos, (b, 1, t, d), device)?;
    let sin = Tensor::from_vec(sin, (b, 1, t, d), device)?;
    Ok((cos, sin))
}
