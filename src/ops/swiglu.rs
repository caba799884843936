//! Fused SwiGLU activation `silu(gate) · up` with a hand-written backward.
//!
//! With `s = sigmoid(g)`: `y = g·s·u`, `dgate = dy · u · s · (1 + g·(1 − s))`,
//! `dup = dy · g·s`. Key decision: the backward recomputes the sigmoid from the saved
//! inputs (one `exp` per element) instead of keeping an activation-sized buffer alive.

use super::cpu::{par_row_blocks, slice, unsupported, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `silu(gate) * up` for same-shape `gate`, `up` (any shape).
///
/// f32/f64 on the CPU run the fused kernel; other dtypes and devices use the
/// reference composition.
pub fn fused_swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !gate.device().is_cpu()
        || !matches!(gate.dtype(), DType::F32 | DType::F64)
        || up.dtype() != gate.dtype()
    {
        return super::reference::swiglu(gate, up);
    }
    if gate.shape() != up.shape() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        );
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// The forward op: `(gate, up) → y`.
struct SwiGlu;

/// The backward op: `(gate, up, dy) → [dgate | dup]`.
struct SwiGluBwd;

const ROW: usize = 4096; // elements per parallel work unit

fn forward<T: Real>(g: &[T], u: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); g.len()];
    par_row_blocks(&mut y, ROW.min(g.len().max(1)), |row0, block| {
        let off = row0 * ROW.min(g.len().max(1));
        for (i, out) in block.iter_mut().enumerate() {
            let (gv, uv) = (g[off + i], u[off + i]);
            *out = gv / ((T::zero() - gv).exp() + T::one()) * uv;
        }
    });
    y
}

fn backward<T: Real>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let row = ROW.min(n.max(1));
    let mut out = vec![T::zero(); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    par_row_blocks(dg, row, |row0, block| {
        let off = row0 * row;
        for (i, d) in block.iter_mut().enumerate() {
            let (gv, uv) = (g[off + i], u[off + i]);
            let s = T::one() / ((T::zero() - gv).exp() + T::one());
            *d = dy[off + i] * uv * s * (T::one() + gv * (T::one() - s));
        }
    });
    par_row_blocks(du, row, |row0, block| {
        let off = row0 * row;
        for (i, d) in block.iter_mut().enumerate() {
            let gv = g[off + i];
            *d = dy[off + i] * (gv / ((T::zero() - gv).exp() + T::one()));
        }
    });
    out
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "smelt-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.name();
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward::<f32>(slice(s1, l1, n)?, slice(s2, l2, n)?)),
            DType::F64 => CpuStorage::F64(forward::<f64>(slice(s1, l1, n)?, slice(s2, l2, n)?)),
            d => return Err(unsupported(d, n)),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let packed = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBwd)?; // (2N,)
        let dg = packed.narrow(0, 0, n)?.reshape(gate.shape())?;
        let du = packed.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "smelt-swiglu-bwd"
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
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(backward::<f32>(
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
            )),
            DType::F64 => CpuStorage::F64(backward::<f64>(
                slice(s1, l1, n)?,
                slice(s2, l2, n)?,
                slice(s3, l3, n)?,
            )),
            d => return Err(unsupported(d, n)),
        };
        Ok((out, Shape::from(2 * l1.shape().elem_count())))
    }
}
