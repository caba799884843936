//! The slow, obviously-correct compositions of the decoder's differentiable ops.
//!
//! candle's fused `rms_norm`, `rope`, `softmax_last_dim`, its CPU flash attention and
//! `QMatMul` have no backward: the autograd graph is silently cut at them. Every op
//! here is a composition of candle ops that *do* have a backward, so gradients reach
//! every parameter. These compositions are the reference that the fused kernels
//! (with hand-written backward, in the sibling modules) are held equal to.

use candle_core::{DType, Result, Tensor, D};

/// RMSNorm as transformers computes it: `w * (x * rsqrt(mean(x², -1) + eps))`.
///
/// `x`: (..., H) any float dtype (half types computed in f32); `weight`: (H,).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    // half types are normalised in f32; f32 and f64 in their own precision
    let x = match dtype {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    let var = x.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
    let normed = x.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?; // (..., H)
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Softmax over the last dimension, numerically stable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// `[-x2, x1]` where `x = [x1, x2]` split in halves along the last dim.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Rotary position embedding in the rotate-half (HF / NeoX) layout.
///
/// `x`: (B, H, T, D); `cos`, `sin`: (B, 1, T, D), already gathered per position.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
}

/// SiLU-gated MLP activation `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `x @ w.T (+ b)` for `x`: (N, in), `w`: (out, in), `b`: (out,).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?; // (N, out)
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Label value that contributes no loss (PyTorch's `ignore_index` default).
pub const IGNORE_INDEX: i64 = -100;

/// Token-level cross-entropy, *summed* over the labels that are not [`IGNORE_INDEX`].
///
/// `logits`: (N, V) float; `labels`: (N,) i64. Returns `(loss_sum, count, correct)`:
/// the scalar summed negative log-likelihood (differentiable), the number of counted
/// labels, and how many of them are the argmax (for token accuracy).
pub fn cross_entropy_sum(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, f64, f64)> {
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits.clone(),
    };
    let labels = labels.to_dtype(DType::I64)?;
    let mask = labels.ge(0i64)?; // (N,) u8
    let safe = mask
        .where_cond(&labels, &labels.zeros_like()?)?
        .to_dtype(DType::U32)?; // (N,)
    let max = logits.max_keepdim(D::Minus1)?.detach(); // (N, 1), constant for stability
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?; // (N, 1)
    let picked = logits.gather(&safe.unsqueeze(1)?, 1)?; // (N, 1)
    let maskf = mask.to_dtype(logits.dtype())?; // (N,)
    let nll = (lse - picked)?.squeeze(1)?; // (N,)
    let loss_sum = (nll * &maskf)?.sum_all()?;
    let count = maskf.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    let hits = logits
        .argmax(D::Minus1)?
        .eq(&safe)?
        .to_dtype(logits.dtype())?; // (N,)
    let correct = (hits * maskf)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok((loss_sum, count, correct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Central finite difference of `f(x).sum()` w.r.t. each element of `x`, vs autograd.
    fn check_grad(x0: &[f32], shape: &[usize], f: impl Fn(&Tensor) -> Result<Tensor>) {
        let dev = Device::Cpu;
        let var = Var::from_tensor(
            &Tensor::from_slice(x0, shape, &dev)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        )
        .unwrap();
        // weight the output so the gradient is not trivially symmetric
        let out = f(var.as_tensor()).unwrap();
        let w = Tensor::arange(0f64, out.elem_count() as f64, &dev)
            .unwrap()
            .reshape(out.shape())
            .unwrap()
            .cos()
            .unwrap();
        let loss = (out * &w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<f64> = grads
            .get(&var)
            .expect("no gradient")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eps = 1e-6;
        for i in 0..x0.len() {
            let eval = |delta: f64| -> f64 {
                let mut x: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
                x[i] += delta;
                let t = Tensor::from_slice(&x, shape, &dev).unwrap();
                (f(&t).unwrap() * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "elem {i}: fd {fd} vs autograd {}",
                g[i]
            );
        }
    }

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37).sin() * 1.3) + 0.1)
            .collect()
    }

    #[test]
    fn rms_norm_matches_definition_and_fd() {
        let dev = Device::Cpu;
        let x = Tensor::from_slice(&[1f32, 2., 3., 4.], (1, 4), &dev).unwrap();
        let w = Tensor::from_slice(&[1f32, 1., 2., 0.5], 4, &dev).unwrap();
        let y: Vec<f32> = rms_norm(&x, &w, 0.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let rms = (30f32 / 4.).sqrt();
        let expect = [1. / rms, 2. / rms, 6. / rms, 2. / rms];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
        let w = Tensor::from_slice(&[0.5f64, 1.5, -1.0, 2.0, 0.7, 1.1], 6, &dev).unwrap();
        check_grad(&data(12), &[2, 6], |x| rms_norm(x, &w, 1e-5));
    }

    #[test]
    fn softmax_rows_sum_to_one_and_fd() {
        let x = Tensor::from_slice(&data(10), (2, 5), &Device::Cpu).unwrap();
        let s: Vec<f32> = softmax_last_dim(&x)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-6));
        check_grad(&data(10), &[2, 5], softmax_last_dim);
    }

    #[test]
    fn rope_rotates_pairs_and_fd() {
        let dev = Device::Cpu;
        // one position, D = 4, angle a for pair (0,2) and b for pair (1,3)
        let (a, b) = (0.3f64, 1.1f64);
        let cos =
            Tensor::from_slice(&[a.cos(), b.cos(), a.cos(), b.cos()], (1, 1, 1, 4), &dev).unwrap();
        let sin =
            Tensor::from_slice(&[a.sin(), b.sin(), a.sin(), b.sin()], (1, 1, 1, 4), &dev).unwrap();
        let x = Tensor::from_slice(&[1f64, 2., 3., 4.], (1, 1, 1, 4), &dev).unwrap();
        let y: Vec<f64> = apply_rope(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // pair (x0, x2) = (1, 3) rotated by a: (1 cos a - 3 sin a, 3 cos a + 1 sin a)
        assert!((y[0] - (a.cos() - 3. * a.sin())).abs() < 1e-12);
        assert!((y[2] - (3. * a.cos() + a.sin())).abs() < 1e-12);
        assert!((y[1] - (2. * b.cos() - 4. * b.sin())).abs() < 1e-12);
        check_grad(&data(4), &[1, 1, 1, 4], |x| apply_rope(x, &cos, &sin));
    }

    #[test]
    fn swiglu_and_linear_fd() {
        let dev = Device::Cpu;
        let up = Tensor::from_slice(
            &data(6).iter().map(|&v| v as f64 * 0.5).collect::<Vec<_>>(),
            (2, 3),
            &dev,
        )
        .unwrap();
        check_grad(&data(6), &[2, 3], |g| swiglu(g, &up));
        let w = Tensor::from_slice(
            &data(6).iter().map(|&v| v as f64).collect::<Vec<_>>(),
            (2, 3),
            &dev,
        )
        .unwrap();
        let b = Tensor::from_slice(&[0.1f64, -0.2], 2, &dev).unwrap();
        check_grad(&data(9), &[3, 3], |x| linear(x, &w, Some(&b)));
    }

    #[test]
    fn cross_entropy_sum_matches_hand_values_and_ignores_masked() {
        let dev = Device::Cpu;
        // row 0: logits [0, ln 3] -> p(label 1) = 3/4; row 1 ignored; row 2: uniform over 2 -> ln 2
        let logits =
            Tensor::from_slice(&[0f32, 3f32.ln(), 5.0, -5.0, 1.0, 1.0], (3, 2), &dev).unwrap();
        let labels = Tensor::from_slice(&[1i64, IGNORE_INDEX, 0], 3, &dev).unwrap();
        let (sum, count, correct) = cross_entropy_sum(&logits, &labels).unwrap();
        let want = -(0.75f64).ln() + 2f64.ln();
        assert!((sum.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
        assert_eq!(count, 2.0);
        assert_eq!(correct, 2.0); // argmax ties pick index 0 = label of row 2
        let x = data(6);
        let labels64 = Tensor::from_slice(&[1i64, IGNORE_INDEX, 0], 3, &dev).unwrap();
        check_grad(&x, &[3, 2], |l| {
            Ok(cross_entropy_sum(l, &labels64)?
                .0
                .to_dtype(DType::F64)?
                .reshape(1)?)
        });
    }
}
