//! One pre-norm decoder layer, in two interchangeable implementations.
//!
//! - [`Kernels::Reference`]: the slow compositions of candle ops from
//!   [`crate::ops::reference`] (rms_norm, apply_rope, swiglu, linear), `repeat_kv`
//!   copies and softmax(QKᵀ + mask)·V with an explicit additive mask. It is what the
//!   fused path is held equal to (`tests/model_kernels.rs`).
//! - [`Kernels::Fused`]: the fused `CustomOp`s with hand-written backward
//!   ([`ops::fused_rms_norm`], [`ops::fused_rope`], [`ops::fused_swiglu`],
//!   [`ops::fused_linear`], [`ops::fused_attention`]). Grouped-query heads are read
//!   in place (no `repeat_kv`), documents are `segments` ids (no mask tensor).
//!
//! Key decision (fused path): activations stay token-major, `(B·T, heads, 1, D)` —
//! the layout the projections produce — through qk-norm and rope (the rope tables are
//! viewed as one row per token), so the only layout changes are the strided views
//! handed to attention. The KV cache stores keys token-major for the same reason.

use super::kv_cache::KvCache;
use crate::error::Result;
use crate::ops::{self, Precision};
use candle_core::Tensor;

/// Which implementation of the decoder's ops a [`super::Model`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Fused CPU kernels with hand-written backward (the default).
    #[default]
    Fused,
    /// The slow compositions of candle ops the fused kernels are tested against.
    Reference,
}

/// A projection: weight `(out, in)` and optional bias `(out,)`.
pub(crate) type Proj = (Tensor, Option<Tensor>);

/// The tensors of one decoder layer (handles into the model's `Var`s).
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub input_norm: Tensor,
    pub q: Proj,
    pub k: Proj,
    pub v: Proj,
    pub o: Proj,
    pub qk_norm: Option<(Tensor, Tensor)>,
    pub post_norm: Tensor,
    pub gate: Proj,
    pub up: Proj,
    pub down: Proj,
    pub use_rope: bool,
}

/// Shapes and numerics shared by every layer of one model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub kernels: Kernels,
    pub precision: Precision,
}

/// Who may attend to whom, in the encoding each kernel family wants.
#[derive(Debug, Clone)]
pub(crate) enum Visibility {
    /// Reference path: additive mask `(B|1, 1, Tq, Tk)`; `None` = attend everything.
    Mask(Option<Tensor>),
    /// Fused path: segment id per key slot `(B, Tk)`; `None` = one document per row.
    Segments(Option<Tensor>),
}

/// Rotary tables for the fused path: one row per token, `(B·T, 1, 1, D)` each.
pub(crate) type RopeRows<'a> = Option<(&'a Tensor, &'a Tensor)>;

impl LayerSpec {
    /// `x (N, in) · Wᵀ (+ b)` at the model's precision (the reference op at f32 on
    /// the reference path).
    pub fn linear(&self, x: &Tensor, p: &Proj) -> Result<Tensor> {
        Ok(match (self.kernels, self.precision) {
            (Kernels::Reference, Precision::F32) => ops::linear(x, &p.0, p.1.as_ref())?,
            _ => ops::fused_linear(x, &p.0, p.1.as_ref(), self.precision)?,
        })
    }

    /// RMSNorm over the last dim with this path's kernel.
    pub fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(match self.kernels {
            Kernels::Reference => ops::rms_norm(x, w, self.eps)?,
            Kernels::Fused => ops::fused_rms_norm(x, w, self.eps)?,
        })
    }

    /// One layer on `x` `(B, T, H)`: the reference or fused implementation.
    /// `rope` holds the tables in the layout that path expects (`(B, 1, T, D)` for
    /// the reference, `(B·T, 1, 1, D)` for the fused path).
    pub fn forward(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        rope: RopeRows,
        visibility: &Visibility,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let attn = match (self.kernels, visibility) {
            (Kernels::Reference, Visibility::Mask(mask)) => {
                self.reference_attention(layer, index, x, rope, mask.as_ref(), cache)?
            }
            (Kernels::Fused, Visibility::Segments(segments)) => {
                self.fused_attention(layer, index, x, rope, segments.as_ref(), cache)?
            }
            _ => {
                return Err(crate::error::Error::Invalid(
                    "internal: attention visibility does not match the kernels".into(),
                ))
            }
        }; // (B*T, H)
        let x = (x + attn.reshape((b, t, h))?)?;

        let normed = self.rms_norm(&x, &layer.post_norm)?.reshape((b * t, h))?; // (B*T, H)
        let gate = self.linear(&normed, &layer.gate)?; // (B*T, I)
        let up = self.linear(&normed, &layer.up)?; // (B*T, I)
        let act = match self.kernels {
            Kernels::Reference => ops::swiglu(&gate, &up)?,
            Kernels::Fused => ops::fused_swiglu(&gate, &up)?,
        };
        let mlp = self.linear(&act, &layer.down)?; // (B*T, H)
        Ok((x + mlp.reshape((b, t, h))?)?)
    }

    /// Attention block of the reference path → `(B*T, H)` after `o_proj`.
    fn reference_attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        rope: RopeRows,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let (nq, nkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let normed = self.rms_norm(x, &layer.input_norm)?.reshape((b * t, h))?; // (B*T, H)
        let heads = |p: &Proj, n: usize| -> Result<Tensor> {
            Ok(self
                .linear(&normed, p)? // (B*T, n*D)
                .reshape((b, t, n, d))?
                .transpose(1, 2)? // (B, n, T, D)
                .contiguous()?)
        };
        let (mut q, mut k, v) = (
            heads(&layer.q, nq)?,
            heads(&layer.k, nkv)?,
            heads(&layer.v, nkv)?,
        );
        if let Some((qn, kn)) = &layer.qk_norm {
            q = self.rms_norm(&q, qn)?;
            k = self.rms_norm(&k, kn)?;
        }
        if let Some((cos, sin)) = rope {
            q = ops::apply_rope(&q, cos, sin)?;
            k = ops::apply_rope(&k, cos, sin)?;
        }
        let (k, v) = match cache {
            Some(cache) => {
                // the cache is token-major: (B, T, KV, D)
                let (k, v) = cache.append(
                    index,
                    &k.transpose(1, 2)?.contiguous()?,
                    &v.transpose(1, 2)?.contiguous()?,
                )?;
                (
                    k.transpose(1, 2)?.contiguous()?,
                    v.transpose(1, 2)?.contiguous()?,
                ) // (B, KV, Tk, D)
            }
            None => (k, v),
        };
        let k = repeat_kv(&k, nq / nkv)?; // (B, nq, Tk, D)
        let v = repeat_kv(&v, nq / nkv)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?; // (B, nq, T, Tk)
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = ops::softmax_last_dim(&scores)?;
        let attn = probs
            .matmul(&v)? // (B, nq, T, D)
            .transpose(1, 2)? // (B, T, nq, D)
            .reshape((b * t, nq * d))?;
        self.linear(&attn, &layer.o)
    }

    /// Attention block of the fused path → `(B*T, H)` after `o_proj`.
    fn fused_attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        rope: RopeRows,
        segments: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let (nq, nkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let normed = self.rms_norm(x, &layer.input_norm)?.reshape((b * t, h))?; // (B*T, H)
                                                                                // token-major heads: (B*T, n, 1, D) is (B, T, n, D) in memory
        let heads = |p: &Proj, n: usize| -> Result<Tensor> {
            Ok(self.linear(&normed, p)?.reshape((b * t, n, 1, d))?)
        };
        let (mut q, mut k, v) = (
            heads(&layer.q, nq)?,
            heads(&layer.k, nkv)?,
            heads(&layer.v, nkv)?,
        );
        if let Some((qn, kn)) = &layer.qk_norm {
            q = ops::fused_rms_norm(&q, qn, self.eps)?;
            k = ops::fused_rms_norm(&k, kn, self.eps)?;
        }
        if let Some((cos, sin)) = rope {
            q = ops::fused_rope(&q, cos, sin)?; // tables (B*T, 1, 1, D)
            k = ops::fused_rope(&k, cos, sin)?;
        }
        let q = q.reshape((b, t, nq, d))?; // (B, T, nq, D)
        let (k, v) = (k.reshape((b, t, nkv, d))?, v.reshape((b, t, nkv, d))?);
        let (k, v) = match cache {
            Some(cache) => cache.append(index, &k, &v)?, // (B, Tk, KV, D) views
            None => (k, v),
        };
        let attn = ops::fused_attention(
            &q.transpose(1, 2)?, // (B, nq, T, D) view
            &k.transpose(1, 2)?, // (B, KV, Tk, D) view
            &v.transpose(1, 2)?,
            segments,
            1.0 / (d as f64).sqrt(),
        )?; // (B, nq, T, D)
        let attn = attn.transpose(1, 2)?.reshape((b * t, nq * d))?; // (B*T, nq*D)
        self.linear(&attn, &layer.o)
    }
}

/// Repeats each key/value head `groups` times: `(B, KV, T, D)` → `(B, KV*groups, T, D)`.
fn repeat_kv(x: &Tensor, groups: usize) -> candle_core::Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, groups, t, d))?
        .reshape((b, kv * groups, t, d))
}
