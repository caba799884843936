//! Fused SwiGLU activation `silu(gate) · up` with a hand-written backward.
//!
//! With `s = sigmoid(g)`: `y = g·s·u`, `dgate = dy · u · s · (1 + g·(1 − s))`,
//! `dup = dy · g·s`. Key decision: the backward recomputes the sigmoid from the saved
//! inputs (one `exp` per element, one pass for both gradients) instead of keeping an
//! activation-sized buffer alive.

use super::cpu::{par_row_blocks, par_zip_blocks, slice, unsupported, Real};
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

/// The elementwise loops, per element type: f32 gets AVX2 lanes and a polynomial `exp`
/// where the CPU has them (the portable build targets baseline x86-64), f64 stays on
/// libm (it is the finite-difference path).
trait Kernel: Real {
    /// `y = silu(g) · u`.
    fn forward_block(g: &[Self], u: &[Self], y: &mut [Self]);
    /// `dg = dy · u · s · (1 + g·(1 − s))`, `du = dy · g·s`, with `s = sigmoid(g)`.
    fn backward_block(g: &[Self], u: &[Self], dy: &[Self], dg: &mut [Self], du: &mut [Self]);
}

impl Kernel for f64 {
    fn forward_block(g: &[f64], u: &[f64], y: &mut [f64]) {
        forward_body(g, u, y, f64::exp);
    }
    fn backward_block(g: &[f64], u: &[f64], dy: &[f64], dg: &mut [f64], du: &mut [f64]) {
        backward_body(g, u, dy, dg, du, f64::exp);
    }
}

impl Kernel for f32 {
    fn forward_block(g: &[f32], u: &[f32], y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::ops::cpu::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { forward_avx2(g, u, y) };
        }
        forward_body(g, u, y, f32::exp);
    }
    fn backward_block(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::ops::cpu::has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { backward_avx2(g, u, dy, dg, du) };
        }
        backward_body(g, u, dy, dg, du, f32::exp);
    }
}

/// `y = silu(g) · u` over f32 slices (the fused op's forward loop, for callers that
/// work on plain buffers such as [`crate::model::DecodeSession`]).
pub(crate) fn forward_f32(g: &[f32], u: &[f32], y: &mut [f32]) {
    <f32 as Kernel>::forward_block(g, u, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(g: &[f32], u: &[f32], y: &mut [f32]) {
    forward_body(g, u, y, super::attention::exp_f32);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    backward_body(g, u, dy, dg, du, super::attention::exp_f32);
}

#[inline(always)]
fn forward_body<T: Real>(g: &[T], u: &[T], y: &mut [T], exp: impl Fn(T) -> T) {
    for ((out, &gv), &uv) in y.iter_mut().zip(g).zip(u) {
        *out = gv / (exp(T::zero() - gv) + T::one()) * uv;
    }
}

#[inline(always)]
fn backward_body<T: Real>(
    g: &[T],
    u: &[T],
    dy: &[T],
    dg: &mut [T],
    du: &mut [T],
    exp: impl Fn(T) -> T,
) {
    for i in 0..dg
        .len()
        .min(du.len())
        .min(g.len())
        .min(u.len())
        .min(dy.len())
    {
        let (gv, uv, d) = (g[i], u[i], dy[i]);
        let s = T::one() / (exp(T::zero() - gv) + T::one());
        dg[i] = d * uv * s * (T::one() + gv * (T::one() - s));
        du[i] = d * (gv * s);
    }
}

fn forward<T: Kernel>(g: &[T], u: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); g.len()];
    par_row_blocks(&mut y, 1, |off, block| {
        T::forward_block(&g[off..], &u[off..], block)
    });
    y
}

/// `[dgate | dup]` in one buffer; one pass computes both (one `exp` per element).
fn backward<T: Kernel>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::zero(); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    par_zip_blocks(dg, du, |off, dg, du| {
        T::backward_block(&g[off..], &u[off..], &dy[off..], dg, du)
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
