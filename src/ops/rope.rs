//! Fused rotary position embedding (rotate-half / NeoX layout) with its backward.
//!
//! With `h = D/2`, per row of `x` and the row's tables `c`, `s` (D each):
//! `y[i] = x[i]·c[i] − x[i+h]·s[i]`, `y[i+h] = x[i+h]·c[i+h] + x[i]·s[i+h]`.
//! The map is linear in `x`, so the backward is its transpose:
//! `dx[i] = g[i]·c[i] + g[i+h]·s[i+h]`, `dx[i+h] = g[i+h]·c[i+h] − g[i]·s[i]` — the
//! same kernel with a flag. Key decision: the tables are gathered per (row, token)
//! (positions restart at every packed document) and treated as constants (no
//! gradient), as they are in every Llama-family model; NoPE layers simply do not call
//! this op.

use super::cpu::{par_row_blocks, slice, unsupported, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Rotary embedding of `x` (B, NH, T, D) with tables `cos`, `sin` (B or 1, 1, T, D).
///
/// f32/f64 on the CPU run the fused kernel; other dtypes and devices use the
/// reference composition. `cos` and `sin` receive no gradient.
pub fn fused_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu()
        || !matches!(x.dtype(), DType::F32 | DType::F64)
        || cos.dtype() != x.dtype()
        || sin.dtype() != x.dtype()
    {
        return super::reference::apply_rope(x, cos, sin);
    }
    let (b, _, t, d) = x.dims4()?;
    let (bc, one, tc, dc) = cos.dims4()?;
    if !(bc == b || bc == 1)
        || one != 1
        || tc != t
        || dc != d
        || sin.dims() != cos.dims()
        || d % 2 != 0
    {
        candle_core::bail!(
            "rope: x {:?} with cos {:?} / sin {:?}: tables must be (B or 1, 1, T, D), D even",
            x.dims(),
            cos.dims(),
            sin.dims()
        );
    }
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { transpose: false },
    )
}

/// `(x, cos, sin) → y`; with `transpose` the adjoint map (used as the backward).
struct Rope {
    transpose: bool,
}

fn kernel<T: Real>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    dims: [usize; 4],
    bc: usize,
    transpose: bool,
) -> Vec<T> {
    let [_, nh, t, d] = dims;
    let h = d / 2;
    let mut y = vec![T::zero(); x.len()];
    par_row_blocks(&mut y, d, |row0, block| {
        for (i, out) in block.chunks_mut(d).enumerate() {
            let r = row0 + i; // row index over (B, NH, T)
            let (bi, ti) = (r / (nh * t), r % t);
            let tab = (if bc == 1 { 0 } else { bi } * t + ti) * d;
            let (c, s) = (&cos[tab..tab + d], &sin[tab..tab + d]);
            let xr = &x[r * d..(r + 1) * d];
            for j in 0..h {
                let (a, b) = (xr[j], xr[j + h]);
                if transpose {
                    out[j] = a * c[j] + b * s[j + h];
                    out[j + h] = b * c[j + h] - a * s[j];
                } else {
                    out[j] = a * c[j] - b * s[j];
                    out[j + h] = b * c[j + h] + a * s[j + h];
                }
            }
        }
    });
    y
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        if self.transpose {
            "smelt-rope-bwd"
        } else {
            "smelt-rope"
        }
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
        let n = self.name();
        let (b, nh, t, d) = l1.shape().dims4()?;
        let bc = l2.shape().dims()[0];
        let dims = [b, nh, t, d];
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(kernel::<f32>(
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
                dims,
                bc,
                self.transpose,
            )),
            DType::F64 => CpuStorage::F64(kernel::<f64>(
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
                dims,
                bc,
                self.transpose,
            )),
            dt => return Err(unsupported(dt, n)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                transpose: !self.transpose,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}
