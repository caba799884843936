//! The model's parameters as plain f32 slices for the length of one decode call.
//!
//! A [`DecodeSession`](super::DecodeSession) reads the model's own `Var` storages (no
//! copy, so it always decodes the current weights): it takes each storage's read
//! lock for one `extend` call and hands the kernels `&[f32]`. Key decision: the locks
//! are held per call, not per session, so a trainer sharing the model can update the
//! weights in place between steps.

use super::super::layer::{Layer, Proj};
use super::super::Model;
use crate::error::{Error, Result};
use candle_core::{Storage, Tensor};

/// Read guards on every tensor a decode step reads, in [`visit`] order.
pub(super) struct Guards<'m> {
    guards: Vec<(candle_core::StorageRef<'m>, &'m candle_core::Layout)>,
}

/// One layer's parameters.
pub(super) struct LayerWeights<'a> {
    pub input_norm: &'a [f32],
    pub q: ProjWeights<'a>,
    pub k: ProjWeights<'a>,
    pub v: ProjWeights<'a>,
    pub o: ProjWeights<'a>,
    pub qk_norm: Option<(&'a [f32], &'a [f32])>,
    pub post_norm: &'a [f32],
    pub gate: ProjWeights<'a>,
    pub up: ProjWeights<'a>,
    pub down: ProjWeights<'a>,
    pub use_rope: bool,
}

/// A projection's weight `(out, in)` and optional bias `(out,)`.
#[derive(Clone, Copy)]
pub(super) struct ProjWeights<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
}

/// Every parameter of the model as slices.
pub(super) struct Weights<'a> {
    pub embed: &'a [f32],
    pub layers: Vec<LayerWeights<'a>>,
    pub final_norm: &'a [f32],
    pub lm_head: &'a [f32],
}

/// Calls `f` on each tensor a decode step reads, in a fixed order.
fn visit<'m>(model: &'m Model, mut f: impl FnMut(&'m Tensor)) {
    f(&model.embed);
    f(&model.final_norm);
    f(&model.lm_head);
    for layer in &model.layers {
        visit_layer(layer, &mut f);
    }
}

fn visit_layer<'m>(layer: &'m Layer, f: &mut impl FnMut(&'m Tensor)) {
    let mut proj = |p: &'m Proj| {
        f(&p.0);
        if let Some(b) = &p.1 {
            f(b);
        }
    };
    proj(&layer.q);
    proj(&layer.k);
    proj(&layer.v);
    proj(&layer.o);
    proj(&layer.gate);
    proj(&layer.up);
    proj(&layer.down);
    f(&layer.input_norm);
    f(&layer.post_norm);
    if let Some((qn, kn)) = &layer.qk_norm {
        f(qn);
        f(kn);
    }
}

impl<'m> Guards<'m> {
    /// Read-locks every tensor of `model`.
    pub fn lock(model: &'m Model) -> Self {
        let mut guards = Vec::new();
        visit(model, |t| guards.push(t.storage_and_layout()));
        Guards { guards }
    }

    /// The slices, or an error naming why the model cannot be decoded here (not on
    /// the CPU, not f32, not contiguous).
    pub fn weights(&self, model: &'m Model) -> Result<Weights<'_>> {
        let mut slices = Vec::with_capacity(self.guards.len());
        for (storage, layout) in &self.guards {
            let Storage::Cpu(cpu) = &**storage else {
                return Err(unsupported("its parameters are not on the CPU"));
            };
            let all = cpu
                .as_slice::<f32>()
                .map_err(|_| unsupported("its parameters are not f32"))?;
            let (a, z) = layout
                .contiguous_offsets()
                .ok_or_else(|| unsupported("a parameter is not contiguous"))?;
            slices.push(&all[a..z]);
        }
        let mut it = slices.into_iter();
        let mut next = || it.next().expect("visit order is fixed");
        let embed = next();
        let final_norm = next();
        let lm_head = next();
        let mut layers = Vec::with_capacity(model.layers.len());
        for layer in &model.layers {
            let mut proj = |p: &Proj| ProjWeights {
                w: next(),
                b: p.1.as_ref().map(|_| next()),
            };
            let (q, k, v, o) = (
                proj(&layer.q),
                proj(&layer.k),
                proj(&layer.v),
                proj(&layer.o),
            );
            let (gate, up, down) = (proj(&layer.gate), proj(&layer.up), proj(&layer.down));
            let input_norm = next();
            let post_norm = next();
            let qk_norm = layer.qk_norm.as_ref().map(|_| (next(), next()));
            layers.push(LayerWeights {
                input_norm,
                q,
                k,
                v,
                o,
                qk_norm,
                post_norm,
                gate,
                up,
                down,
                use_rope: layer.use_rope,
            });
        }
        Ok(Weights {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}

fn unsupported(why: &str) -> Error {
    Error::Invalid(format!(
        "DecodeSession needs a CPU model with contiguous f32 parameters: {why}"
    ))
}
