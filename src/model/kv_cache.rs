//! The key/value cache for generation: an explicit value the caller owns.
//!
//! The model never hides a cache inside itself (so one model can serve a trainer and
//! several samplers at once). Keys are stored *after* rope, per layer, with shape
//! `(B, KV, T, D)`; appending concatenates along T.

use candle_core::{Result, Tensor};

/// Per-layer cached keys and values of the tokens decoded so far.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Number of tokens cached per row.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every cached token.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// Number of layers this cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Appends `k`, `v` `(B, KV, T_new, D)` to layer `layer`; returns the full `(B, KV, T, D)` pair.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Records that `t_new` tokens were appended to every layer.
    pub(crate) fn advance(&mut self, t_new: usize) {
        self.len += t_new;
    }
}
