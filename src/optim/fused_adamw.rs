//! The AdamW update of one f32 CPU parameter in a single in-place pass.
//!
//! The op-by-op update (`AdamW::step`'s portable path) makes about a dozen full passes
//! over each parameter and allocates a fresh buffer for most of them; on a 135 M
//! parameter model that was ~15 % of a training step, mostly page faults and memory
//! traffic. Here parameter, first and second moment are updated where they live, in one
//! pass that reads `p, g, m, v` and writes `p, m, v`, split across the worker threads.
//!
//! Key decision: the arithmetic is the op-by-op path's, rounding for rounding (every
//! candle `affine` is `x * f32(mul) + f32(add)`), so the two paths give bit-identical
//! weights and moments and the PyTorch golden test covers both
//! (`tests/optim_golden.rs`, `fused_and_op_by_op_updates_are_bit_identical`).
//!
//! Mutable access to three tensors' storages goes through nested candle in-place ops
//! ([`with_f32_mut`]), so no lock is bypassed and nothing is `unsafe`.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};

use crate::Result;

/// The scalars of one update, already rounded the way the op-by-op path rounds them.
#[derive(Clone, Copy, Debug)]
pub(super) struct UpdateScalars {
    /// `1 - lr * weight_decay` when the parameter decays, `None` otherwise.
    pub decay_mul: Option<f64>,
    pub beta1: f64,
    pub beta2: f64,
    /// `1 / sqrt(1 - beta2^step)`.
    pub inv_bias_correction2_sqrt: f64,
    pub eps: f64,
    /// `lr / (1 - beta1^step)`.
    pub step_size: f64,
}

/// Whether `update_in_place` can take this parameter: f32 on the CPU, contiguous, and
/// an f32 contiguous gradient of the same size.
pub(super) fn applies(param: &Tensor, grad: &Tensor, moments: [&Tensor; 2]) -> bool {
    let cpu_f32_contiguous = |t: &Tensor| {
        matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.is_contiguous()
    };
    cpu_f32_contiguous(param)
        && cpu_f32_contiguous(grad)
        && moments.iter().all(|m| cpu_f32_contiguous(m))
        && grad.elem_count() == param.elem_count()
        && moments.iter().all(|m| m.elem_count() == param.elem_count())
}

/// Updates `param`, `exp_avg` and `exp_avg_sq` in place from `grad` (all f32, CPU,
/// contiguous, same size: check with [`applies`] first).
pub(super) fn update_in_place(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    scalars: UpdateScalars,
) -> Result<()> {
    let (g_storage, g_layout) = grad.storage_and_layout();
    let g = match &*g_storage {
        candle_core::Storage::Cpu(cpu) => crate::ops::cpu::slice::<f32>(cpu, g_layout, "adamw")?,
        _ => {
            return Err(candle_core::Error::Msg("adamw: gradient is not on the CPU".into()).into())
        }
    };
    with_f32_mut(exp_avg, |m| {
        with_f32_mut(exp_avg_sq, |v| {
            with_f32_mut(param, |p| {
                par_update(p, g, m, v, scalars);
                Ok(())
            })
        })
    })?;
    Ok(())
}

/// A one-shot closure over a mutable f32 slice.
type SliceFn<'f> = Box<dyn FnOnce(&mut [f32]) -> candle_core::Result<()> + 'f>;

/// Runs `f` on the contiguous f32 elements of `t`, mutably, under candle's storage
/// write lock (a one-shot in-place op).
fn with_f32_mut<'f>(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> candle_core::Result<()> + 'f,
) -> candle_core::Result<()> {
    struct WithMut<'f>(RefCell<Option<SliceFn<'f>>>);
    impl InplaceOp1 for WithMut<'_> {
        fn name(&self) -> &'static str {
            "adamw-in-place"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
                candle_core::Error::Msg("adamw: tensor must be contiguous".into())
            })?;
            let f =
                self.0.borrow_mut().take().ok_or_else(|| {
                    candle_core::Error::Msg("adamw: in-place op ran twice".into())
                })?;
            match storage {
                CpuStorage::F32(data) => f(&mut data[start..end]),
                other => Err(crate::ops::cpu::unsupported(other.dtype(), "adamw")),
            }
        }
    }
    t.inplace_op1(&WithMut(RefCell::new(Some(Box::new(f)))))
}

/// Splits the four slices into one block per worker thread (small parameters stay on
/// the calling thread) and updates each block.
fn par_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: UpdateScalars) {
    let n = p.len();
    let threads = candle_core::utils::get_num_threads().max(1);
    // below ~64k elements a thread costs more than it saves
    if threads == 1 || n < 64 * 1024 {
        update_block(p, g, m, v, s);
        return;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        for (((p, g), m), v) in p
            .chunks_mut(per)
            .zip(g.chunks(per))
            .zip(m.chunks_mut(per))
            .zip(v.chunks_mut(per))
        {
            scope.spawn(move || update_block(p, g, m, v, s));
        }
    });
}

/// The update of one block, element by element, in the op-by-op path's rounding.
fn update_block(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: UpdateScalars) {
    let decay = s.decay_mul.map(|d| d as f32);
    let (b1, one_minus_b1) = (s.beta1 as f32, (1.0 - s.beta1) as f32);
    let (b2, one_minus_b2) = (s.beta2 as f32, (1.0 - s.beta2) as f32);
    let inv_bc2 = s.inv_bias_correction2_sqrt as f32;
    let eps = s.eps as f32;
    let step_size = s.step_size as f32;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mut param = *p;
        if let Some(d) = decay {
            param = param * d + 0.0;
        }
        // m = b1 m + (1 - b1) g
        let m_new = (*m * b1 + 0.0) + (g * one_minus_b1 + 0.0);
        // v = b2 v + (1 - b2) g²
        let v_new = (*v * b2 + 0.0) + ((g * g) * one_minus_b2 + 0.0);
        // denom = sqrt(v) / sqrt(1 - b2^t) + eps
        let denom = ((v_new.sqrt() * inv_bc2 + 0.0) * 1.0) + eps;
        // p -= step_size * m / denom
        *p = param - ((m_new / denom) * step_size + 0.0);
        *m = m_new;
        *v = v_new;
    }
}
