//! Fused RMSNorm with a hand-written backward (gradients for `x` and the weight).
//!
//! Forward per row: `r = 1 / sqrt(mean(x²) + eps)`, `y = (x · r) · w`, in the same
//! operation order as [`super::reference::rms_norm`] so f32 results agree to rounding.
//! Backward per row, with `gw = g · w`:
//! `dx = r · gw − x · r³ · mean(gw · x)` and `dw = Σ_rows g · x · r` (per-thread
//! partial sums, reduced once). Key decision: the backward is one pass that emits
//! `dx` and `dw` packed in a single buffer, so nothing is recomputed twice.

use super::cpu::{par_row_blocks, slice, unsupported, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// RMSNorm over the last dim: `x` (..., H), `weight` (H,) → (..., H).
///
/// f32/f64 on the CPU run the fused kernel; other dtypes and devices use the
/// reference composition.
pub fn fused_rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    if !x.device().is_cpu()
        || !matches!(x.dtype(), DType::F32 | DType::F64)
        || weight.dtype() != x.dtype()
    {
        return super::reference::rms_norm(x, weight, eps);
    }
    if weight.dims() != [h] {
        candle_core::bail!(
            "rms_norm: weight shape {:?}, expected ({h},)",
            weight.dims()
        );
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps })
}

/// The forward op: `(x, w) → y`.
struct RmsNorm {
    eps: f64,
}

/// The backward op: `(x, w, grad_y) → [dx (N·H) | dw (H)]`.
struct RmsNormBwd {
    eps: f64,
}

fn inv_rms<T: Real>(row: &[T], eps: f64) -> T {
    let mut ss = T::zero();
    for &v in row {
        ss += v * v;
    }
    T::one() / (ss / T::from_f64(row.len() as f64) + T::from_f64(eps)).sqrt()
}

fn forward<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let mut y = vec![T::zero(); x.len()];
    par_row_blocks(&mut y, h, |row0, block| {
        for (i, out) in block.chunks_mut(h).enumerate() {
            let xr = &x[(row0 + i) * h..(row0 + i + 1) * h];
            let r = inv_rms(xr, eps);
            for j in 0..h {
                out[j] = (xr[j] * r) * w[j];
            }
        }
    });
    y
}

fn backward<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let n = x.len();
    let mut out = vec![T::zero(); n + h];
    let (dx, dw) = out.split_at_mut(n);
    let partials = par_row_blocks(dx, h, |row0, block| {
        let mut dw_part = vec![T::zero(); h];
        for (i, dxr) in block.chunks_mut(h).enumerate() {
            let off = (row0 + i) * h;
            let (xr, gr) = (&x[off..off + h], &g[off..off + h]);
            let r = inv_rms(xr, eps);
            let mut dot = T::zero(); // Σ g·w·x
            for j in 0..h {
                dot += gr[j] * w[j] * xr[j];
                dw_part[j] += gr[j] * xr[j] * r;
            }
            let c = r * r * r * dot / T::from_f64(h as f64);
            for j in 0..h {
                dxr[j] = r * gr[j] * w[j] - xr[j] * c;
            }
        }
        dw_part
    });
    for part in partials {
        for (a, b) in dw.iter_mut().zip(part) {
            *a += b;
        }
    }
    out
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "smelt-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward::<f32>(
                slice(s1, l1, self.name())?,
                slice(s2, l2, self.name())?,
                self.eps,
            )),
            DType::F64 => CpuStorage::F64(forward::<f64>(
                slice(s1, l1, self.name())?,
                slice(s2, l2, self.name())?,
                self.eps,
            )),
            d => return Err(unsupported(d, self.name())),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, h) = (x.elem_count(), w.elem_count());
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwd { eps: self.eps })?; // (N·H + H,)
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, h)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "smelt-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(backward::<f32>(
                slice(s1, l1, name)?,
                slice(s2, l2, name)?,
                slice(s3, l3, name)?,
                self.eps,
            )),
            DType::F64 => CpuStorage::F64(backward::<f64>(
                slice(s1, l1, name)?,
                slice(s2, l2, name)?,
                slice(s3, l3, name)?,
                self.eps,
            )),
            d => return Err(unsupported(d, name)),
        };
        let len = l1.shape().elem_count() + l2.shape().elem_count();
        Ok((out, Shape::from(len)))
    }
}
