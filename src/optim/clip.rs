//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`.
//!
//! Design decision: the norm is accumulated in f64 over all gradients (a 135M-parameter
//! sum of squares loses digits in f32), and a non-finite norm leaves the gradients
//! alone and is returned as is: deciding what to do with a NaN/Inf step (skip it,
//! count a spike) is the training loop's spike guard's job, not the clipper's.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// PyTorch's guard against dividing by a zero norm (`clip_grad_norm_` adds 1e-6).
const NORM_EPS: f64 = 1e-6;

/// Global L2 norm of all `grads` (accumulated in f64), and, if `max_norm > 0` and the
/// norm exceeds it, every gradient scaled in place by `max_norm / (norm + 1e-6)`.
///
/// Returns the pre-clip norm. Exactly `clip_grad_norm_`'s rule: it scales by
/// `min(1, max_norm / (norm + 1e-6))`, a no-op unless that is below 1. A non-finite
/// norm is returned with the gradients untouched. `max_norm <= 0` only measures.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() {
        return Err(Error::Invalid("clip_grad_norm: max_norm is NaN".into()));
    }
    let mut sum_sq = 0.0f64;
    for g in grads.iter() {
        // (any shape) -> scalar, summed in f64
        sum_sq += g
            .detach()
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = sum_sq.sqrt();
    if !norm.is_finite() || max_norm <= 0.0 {
        return Ok(norm);
    }
    let coef = max_norm / (norm + NORM_EPS);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = g.detach().affine(coef, 0.0)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn three_four_five() -> Result<()> {
        // |(3, 4)| = 5; clipped to 1 the gradient is (3, 4) / (5 + 1e-6).
        let mut grads = vec![
            Tensor::new(&[3.0f32], &Device::Cpu)?,
            Tensor::new(&[4.0f32], &Device::Cpu)?,
        ];
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert_eq!(norm, 5.0);
        let a = grads[0].to_vec1::<f32>()?[0] as f64;
        let b = grads[1].to_vec1::<f32>()?[0] as f64;
        assert!((a - 3.0 / (5.0 + 1e-6)).abs() < 1e-7, "{a}");
        assert!((b - 4.0 / (5.0 + 1e-6)).abs() < 1e-7, "{b}");
        // Below the threshold: untouched.
        let norm = clip_grad_norm(&mut grads, 10.0)?;
        assert!((norm - 1.0).abs() < 1e-6);
        assert_eq!(grads[0].to_vec1::<f32>()?[0] as f64, a);
        Ok(())
    }

    #[test]
    fn non_finite_norm_leaves_grads_alone() -> Result<()> {
        let mut grads = vec![Tensor::new(&[f32::INFINITY, 1.0], &Device::Cpu)?];
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert!(norm.is_infinite());
        assert_eq!(grads[0].to_vec1::<f32>()?, vec![f32::INFINITY, 1.0]);
        let mut grads = vec![Tensor::new(&[f32::NAN, 1.0], &Device::Cpu)?];
        assert!(clip_grad_norm(&mut grads, 1.0)?.is_nan());
        assert_eq!(grads[0].to_vec1::<f32>()?[1], 1.0);
        Ok(())
    }
}
