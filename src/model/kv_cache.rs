//! The key/value cache for generation: an explicit value the caller owns.
//!
//! The model never hides a cache inside itself (so one model can serve a trainer and
//! several samplers at once). Keys are stored *after* rope, per layer, in the layout
//! the projections produce them: `(B, T, KV, D)` (token-major, so a step's keys are
//! written without a transpose).
//!
//! Key decision: each layer owns one preallocated buffer `(B, capacity, KV, D)` per
//! tensor and a step writes its keys and values *in place* (`slice_set`) after the
//! slots already filled; attention reads a view of the filled slots. Nothing is
//! re-allocated per token: a buffer grows (to twice what is needed, or to the
//! capacity asked for with [`KvCache::with_capacity`]) only when it is full, so a
//! generation that knows its length (prompt + `max_new_tokens`) allocates once.
//! The filled slots are `start..start + len` of the buffer, so dropping padding at the
//! front ([`KvCache::drop_front`]) moves `start` and copies nothing. Because the
//! buffers are written in place, [`Clone`] copies them (a clone never aliases).
//!
//! For batched generation of sequences of different lengths (the rollout sampler's
//! continuous batching) rows share the physical length T and shorter rows are
//! *left-padded*: [`KvCache::cat_left_padded`] merges caches, [`KvCache::select_rows`]
//! drops finished rows, [`KvCache::drop_front`] trims padding every row has, and
//! [`super::Model::decode_left_padded`] keeps each row's padding out of attention.

use candle_core::{bail, Result, Tensor};

/// Slots a buffer allocated without a capacity hint keeps free after its first write.
const MIN_HEADROOM: usize = 64;

/// Per-layer cached keys and values of the tokens decoded so far.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer `(keys, values)` buffers `(B, capacity, KV, D)`; `None` until written.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// First filled slot of every buffer.
    start: usize,
    /// Number of filled slots (tokens cached per row).
    len: usize,
    /// Slots to allocate on the first write (0 = as needed plus headroom).
    capacity: usize,
}

impl Clone for KvCache {
    /// A deep copy: the buffers are written in place, so a clone must not share them.
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|(k, v)| {
                    (
                        k.copy().expect("copying a CPU tensor cannot fail"),
                        v.copy().expect("copying a CPU tensor cannot fail"),
                    )
                })
            })
            .collect();
        KvCache {
            layers,
            start: self.start,
            len: self.len,
            capacity: self.capacity,
        }
    }
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers; buffers grow as needed.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache whose buffers hold `capacity` tokens per row from the first
    /// write (prompt + `max_new_tokens` for a generation), so decoding up to that
    /// length never re-allocates. Longer sequences still work (the buffers grow).
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            start: 0,
            len: 0,
            capacity,
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

    /// Tokens per row the buffers hold before they must grow (0 while unallocated).
    pub fn capacity(&self) -> usize {
        self.buffer_slots().saturating_sub(self.start)
    }

    /// Drops every cached token (and the buffers).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.start = 0;
        self.len = 0;
    }

    /// Number of layers this cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Physical slots of the allocated buffers (0 while unallocated).
    fn buffer_slots(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map_or(0, |(k, _)| k.dims()[1])
    }

    /// Makes room for `t_new` more tokens in every layer: when the buffers are full,
    /// moves the filled slots to the front of new buffers twice as large as needed.
    /// Called once per step before any layer appends.
    pub(crate) fn reserve(&mut self, t_new: usize) -> Result<()> {
        let slots = self.buffer_slots();
        if slots == 0 || self.start + self.len + t_new <= slots {
            return Ok(());
        }
        let cap = (2 * (self.len + t_new)).max(self.capacity);
        let (start, len) = (self.start, self.len);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = regrow(k, start, len, cap)?;
            *v = regrow(v, start, len, cap)?;
        }
        self.start = 0;
        Ok(())
    }

    /// Writes `k`, `v` `(B, T_new, KV, D)` into layer `layer` after the filled slots
    /// (in place); returns views `(B, T, KV, D)` of every filled slot including the
    /// new ones. [`KvCache::reserve`] must have made room first.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t_new, kv, d) = k.dims4()?;
        if v.dims() != k.dims() {
            bail!(
                "KvCache::append: keys {:?} but values {:?}",
                k.dims(),
                v.dims()
            );
        }
        if self.layers[layer].is_none() {
            if self.len != 0 {
                bail!(
                    "KvCache::append: layer {layer} was never written but {} tokens are cached",
                    self.len
                );
            }
            let cap = if self.capacity >= t_new {
                self.capacity
            } else {
                t_new + MIN_HEADROOM
            };
            let cap = cap.max(self.buffer_slots());
            let zeros = || Tensor::zeros((b, cap, kv, d), k.dtype(), k.device());
            self.layers[layer] = Some((zeros()?, zeros()?));
        }
        let Some((kb, vb)) = &self.layers[layer] else {
            unreachable!("allocated above")
        };
        let (bb, slots, bkv, bd) = kb.dims4()?;
        if (bb, bkv, bd) != (b, kv, d) || kb.dtype() != k.dtype() {
            bail!(
                "KvCache::append: layer {layer} holds (B, KV, D) = ({bb}, {bkv}, {bd}) {:?}, got ({b}, {kv}, {d}) {:?}",
                kb.dtype(),
                k.dtype()
            );
        }
        let at = self.start + self.len;
        if at + t_new > slots {
            bail!("KvCache::append: {t_new} tokens do not fit after slot {at} of {slots} (reserve first)");
        }
        kb.slice_set(&k.contiguous()?, 1, at)?;
        vb.slice_set(&v.contiguous()?, 1, at)?;
        let total = self.len + t_new;
        Ok((
            kb.narrow(1, self.start, total)?,
            vb.narrow(1, self.start, total)?,
        ))
    }

    /// Records that `t_new` tokens were appended to every layer.
    pub(crate) fn advance(&mut self, t_new: usize) {
        self.len += t_new;
    }

    /// Number of rows (sequences) cached; `None` while the cache is empty.
    pub fn batch_size(&self) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
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
            start: self.start,
            len: self.len,
            capacity: self.capacity,
        })
    }

    /// Drops the first `n` cached slots of every row (padding that every row has).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        if n > self.len {
            bail!("KvCache::drop_front({n}) on a cache of length {}", self.len);
        }
        self.start += n;
        self.len -= n;
        Ok(())
    }

    /// Stacks caches along the batch dimension, left-padding the shorter ones with zero
    /// slots up to the longest length. Row `i` of the result holds `max_len - caches[i].len()`
    /// padding slots first: the caller must mask them (see `Model::decode_left_padded`).
    /// The result keeps the largest capacity of its parts (and at least `MIN_HEADROOM` free
    /// slots), in fresh buffers: it never shares storage with a part, so one part may be
    /// passed for several rows.
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
        let cap = caches
            .iter()
            .map(|c| c.capacity())
            .max()
            .unwrap_or(0)
            .max(len + MIN_HEADROOM);
        // one part of the merged buffer: zeros, the filled slots, free slots
        let part = |t: &Tensor, c: &KvCache| -> Result<Tensor> {
            let (b, _, kv, d) = t.dims4()?;
            let filled = t.narrow(1, c.start, c.len)?; // (b, len_c, KV, D)
            let mut pieces = Vec::with_capacity(3);
            let (pad, tail) = (len - c.len, cap - len);
            if pad > 0 {
                pieces.push(Tensor::zeros((b, pad, kv, d), t.dtype(), t.device())?);
            }
            pieces.push(filled);
            if tail > 0 {
                pieces.push(Tensor::zeros((b, tail, kv, d), t.dtype(), t.device())?);
            }
            Tensor::cat(&pieces, 1) // (b, cap, KV, D)
        };
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let mut ks = Vec::with_capacity(caches.len());
            let mut vs = Vec::with_capacity(caches.len());
            for c in caches {
                let Some((k, v)) = &c.layers[l] else {
                    bail!("KvCache::cat_left_padded: layer {l} is empty");
                };
                ks.push(part(k, c)?);
                vs.push(part(v, c)?);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?))); // (ΣB, cap, KV, D)
        }
        Ok(KvCache {
            layers,
            start: 0,
            len,
            capacity: first.capacity,
        })
    }

    fn device(&self) -> Result<&candle_core::Device> {
        match self.layers.iter().flatten().next() {
            Some((k, _)) => Ok(k.device()),
            None => bail!("empty KvCache has no device"),
        }
    }
}

/// A buffer of `cap` slots holding slots `start..start + len` of `buf` at its front.
fn regrow(buf: &Tensor, start: usize, len: usize, cap: usize) -> Result<Tensor> {
    let (b, _, kv, d) = buf.dims4()?;
    let grown = Tensor::zeros((b, cap, kv, d), buf.dtype(), buf.device())?; // (B, cap, KV, D)
    if len > 0 {
        grown.slice_set(&buf.narrow(1, start, len)?.contiguous()?, 1, 0)?;
    }
    Ok(grown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn step(values: &[f32]) -> Tensor {
        // (B=1, T_new, KV=1, D=1)
        Tensor::new(values, &Device::Cpu)
            .unwrap()
            .reshape((1, values.len(), 1, 1))
            .unwrap()
    }

    fn filled(cache: &mut KvCache, t_new: &[f32]) -> Vec<f32> {
        cache.reserve(t_new.len()).unwrap();
        let (k, _) = cache.append(0, &step(t_new), &step(t_new)).unwrap();
        cache.advance(t_new.len());
        k.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn appends_in_place_until_full_then_grows_once() {
        let mut cache = KvCache::with_capacity(1, 4);
        assert_eq!(filled(&mut cache, &[1.0, 2.0]), vec![1.0, 2.0]);
        // a handle on the first buffer (shares its storage)
        let buffer = cache.layers[0].as_ref().unwrap().0.clone();
        let slot = |i: usize| -> f32 {
            buffer
                .narrow(1, i, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        assert_eq!(filled(&mut cache, &[3.0]), vec![1.0, 2.0, 3.0]);
        assert_eq!(filled(&mut cache, &[4.0]), vec![1.0, 2.0, 3.0, 4.0]);
        // written in place into the first buffer
        assert_eq!((slot(2), slot(3)), (3.0, 4.0));
        assert_eq!(cache.capacity(), 4);
        assert_eq!(filled(&mut cache, &[5.0]), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(cache.capacity(), 10);
    }

    #[test]
    fn drop_front_moves_the_start_and_clones_do_not_alias() {
        let mut cache = KvCache::with_capacity(1, 8);
        filled(&mut cache, &[1.0, 2.0, 3.0]);
        cache.drop_front(2).unwrap();
        let copy = cache.clone();
        assert_eq!(filled(&mut cache, &[4.0]), vec![3.0, 4.0]);
        let mut copy = copy;
        assert_eq!(filled(&mut copy, &[9.0]), vec![3.0, 9.0]);
        assert_eq!(filled(&mut cache, &[5.0]), vec![3.0, 4.0, 5.0]);
        assert!(cache.drop_front(4).is_err());
    }
}
