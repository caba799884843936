//! The key/value cache for generation: an explicit value the caller owns.
//!
//! The model never hides a cache inside itself (so one model can serve a trainer and
//! several samplers at once). Keys are stored *after* rope, per layer, with shape
//! `(B, KV, T, D)`; appending concatenates along T.
//!
//! For batched generation of sequences of different lengths (the rollout sampler's
//! continuous batching) rows share the physical length T and shorter rows are
//! *left-padded*: [`KvCache::cat_left_padded`] merges caches, [`KvCache::select_rows`]
//! drops finished rows, [`KvCache::drop_front`] trims padding every row has, and
//! [`super::Model::decode_left_padded`] masks each row's padding slots.

use candle_core::{bail, Result, Tensor};

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

    /// Number of rows (sequences) cached; `None` while the cache is empty.
    pub fn batch_size(&self) -> Option<usize> {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[0])
    }

    /// A cache holding only `rows` (indices into the batch, in that order).
    pub fn select_rows(&self, rows: &[usize]) -> Result<KvCache> {
        if self.is_empty() {
            bail!("KvCache::select_rows on an empty cache");
        }
        let b = self.batch_size().unwrap_or(0);
        if let Some(&bad) = rows.iter().find(|&&r| r >= b) {
            bail!("KvCache::select_rows: row {bad} out of range for batch {b}");
        }
        let idx = Tensor::new(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            self.device()?,
        )?;
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: self.len,
        })
    }

    /// Drops the first `n` cached slots of every row (padding that every row has).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if n > self.len {
            bail!("KvCache::drop_front({n}) on a cache of length {}", self.len);
        }
        let keep = self.len - n;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, n, keep)?;
            *v = v.narrow(2, n, keep)?;
        }
        self.len = keep;
        Ok(())
    }

    /// Stacks caches along the batch dimension, left-padding the shorter ones with zero
    /// slots up to the longest length. Row `i` of the result holds `max_len - caches[i].len()`
    /// padding slots first: the caller must mask them (see `Model::decode_left_padded`).
    pub fn cat_left_padded(caches: &[&KvCache]) -> Result<KvCache> {
        let Some(first) = caches.first() else {
            bail!("KvCache::cat_left_padded of no caches");
        };
        let num_layers = first.num_layers();
        if let Some(c) = caches
            .iter()
            .find(|c| c.num_layers() != num_layers || c.is_empty())
        {
            bail!(
                "KvCache::cat_left_padded: caches must be non-empty with {num_layers} layers (got {} layers, length {})",
                c.num_layers(),
                c.len()
            );
        }
        let len = caches.iter().map(|c| c.len()).max().unwrap_or(0);
        let pad = |t: &Tensor, n: usize| -> Result<Tensor> {
            if n == 0 {
                return Ok(t.clone());
            }
            let (b, kv, _, d) = t.dims4()?;
            let zeros = Tensor::zeros((b, kv, n, d), t.dtype(), t.device())?; // (B, KV, n, D)
            Tensor::cat(&[&zeros, t], 2)
        };
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let mut ks = Vec::with_capacity(caches.len());
            let mut vs = Vec::with_capacity(caches.len());
            for c in caches {
                let Some((k, v)) = &c.layers[l] else {
                    bail!("KvCache::cat_left_padded: layer {l} is empty");
                };
                ks.push(pad(k, len - c.len())?);
                vs.push(pad(v, len - c.len())?);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?))); // (ΣB, KV, len, D)
        }
        Ok(KvCache { layers, len })
    }

    fn device(&self) -> Result<&candle_core::Device> {
        match self.layers.iter().flatten().next() {
            Some((k, _)) => Ok(k.device()),
            None => bail!("empty KvCache has no device"),
        }
    }
}
