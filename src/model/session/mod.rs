//! Fast batched CPU decoding: a [`DecodeSession`] generates for a batch of rows with
//! its own KV cache, scratch buffers and worker team, reading the model's weights in
//! place.
//!
//! [`Model::decode`] builds each step from candle ops: right for training-shaped work
//! and for every device, but at a decode step's 8 rows its cost is the ops around the
//! GEMMs (an allocation, a thread hand-off and a pass per op, ~12 ops × 30 layers) and
//! a BLAS that packs each weight matrix before using it once. A session runs the same
//! arithmetic on plain f32 slices: no allocation after the first call, two team
//! regions per matrix group (q/k/v, o, gate/up, down) with the helpers spinning in
//! between, and the weight-streaming skinny GEMM ([`crate::ops::skinny_gemm`]) for up
//! to [`SKINNY_ROWS`](kernels::SKINNY_ROWS) rows (a prompt goes through the GEMM
//! backend). It is inference only (no autograd) and f32 only (a model set to bf16
//! autocast still decodes in f32 here); its logits equal `Model::decode`'s to float
//! rounding (`tests/decode_session.rs`), for every architecture variant the model has
//! (NoPE layers, q/k/v biases, q/k norms, grouped-query heads) and for left-padded
//! rows.
//!
//! Key decision: the cache is `(B, capacity, KV, D)` per layer, allocated once for the
//! session's capacity (prompt + new tokens); the session refuses to grow past it
//! rather than re-allocate mid-generation. Each row is a slot with its own length, so
//! a call may extend any subset of rows ([`DecodeSession::extend_rows`]): a prompt is
//! prefilled into a free slot alone, rows at different lengths step together without
//! padding, and a finished row's slot is reused ([`DecodeSession::reset_row`]) —
//! continuous batching without moving any cached key.

mod kernels;
mod weights;

use super::Model;
use crate::error::{Error, Result};
use crate::runtime::WorkerTeam;
use kernels::{CacheView, LinearPart};
use std::sync::Mutex;

/// A batch of sequences being generated (see the module doc).
#[derive(Debug)]
pub struct DecodeSession<'m> {
    model: &'m Model,
    team: WorkerTeam,
    /// Leading padding slots of each row (never attended; positions start after them).
    left_pad: Vec<usize>,
    capacity: usize,
    /// Slots filled in each row (padding included).
    lens: Vec<usize>,
    /// Per layer `(B, capacity, KV, D)`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    scratch: Scratch,
    /// Per worker: attention scores of one head.
    scores: Vec<Mutex<Vec<f32>>>,
    /// `(B, V)`: each row's logits at its last position.
    logits: Vec<f32>,
    /// The last [`DecodeSession::prefill_row`]: its row, prompt and logits, while that
    /// row still holds exactly that prompt.
    last_prefill: Option<(usize, Vec<u32>, Vec<f32>)>,
}

/// Activations of one call, sized for the most rows seen so far.
#[derive(Debug, Default)]
struct Scratch {
    rows: usize,
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    /// Per row `(D/2)` cosines and sines of its position.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl<'m> DecodeSession<'m> {
    /// A session for `batch` rows of up to `capacity` tokens each (prompt + new).
    pub fn new(model: &'m Model, batch: usize, capacity: usize) -> Result<Self> {
        Self::left_padded(model, vec![0; batch], capacity)
    }

    /// A session whose row `r` starts with `left_pad[r]` padding slots (prompts of
    /// different lengths right-aligned): padding is never attended and positions
    /// count from each row's first real token, as [`Model::decode_left_padded`].
    pub fn left_padded(model: &'m Model, left_pad: Vec<usize>, capacity: usize) -> Result<Self> {
        if left_pad.is_empty() || capacity == 0 {
            return Err(Error::Invalid(
                "DecodeSession needs at least one row and a capacity ≥ 1".into(),
            ));
        }
        // fail now, not at the first step, if the weights cannot be read as f32 slices
        weights::Guards::lock(model).weights(model)?;
        let c = model.config();
        let layer_len = left_pad.len() * capacity * c.num_key_value_heads * c.head_dim;
        let team = WorkerTeam::with_default_size();
        let scores = (0..team.workers())
            .map(|_| Mutex::new(vec![0f32; capacity]))
            .collect();
        Ok(DecodeSession {
            model,
            team,
            capacity,
            lens: vec![0; left_pad.len()],
            keys: vec![vec![0f32; layer_len]; c.num_hidden_layers],
            values: vec![vec![0f32; layer_len]; c.num_hidden_layers],
            scratch: Scratch::default(),
            scores,
            logits: vec![0f32; left_pad.len() * c.vocab_size],
            last_prefill: None,
            left_pad,
        })
    }

    /// Number of rows (slots).
    pub fn batch(&self) -> usize {
        self.left_pad.len()
    }

    /// Slots filled in row `row` (padding included).
    pub fn row_len(&self, row: usize) -> usize {
        self.lens[row]
    }

    /// True while no row holds a token.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Slots each row can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Empties row `row` (no padding), making its slot free for a new sequence.
    pub fn reset_row(&mut self, row: usize) -> Result<()> {
        self.check_row(row)?;
        self.forget_prefill_of(&[row]);
        self.lens[row] = 0;
        self.left_pad[row] = 0;
        Ok(())
    }

    /// Makes row `dst` a copy of row `src` (its cached keys, values and padding): a
    /// prompt prefilled once serves several samples (a GRPO group).
    pub fn copy_row(&mut self, src: usize, dst: usize) -> Result<()> {
        self.check_row(src)?;
        self.check_row(dst)?;
        if src == dst {
            return Ok(());
        }
        self.forget_prefill_of(&[dst]);
        let row =
            self.capacity * self.model.config().num_key_value_heads * self.model.config().head_dim;
        let filled = self.lens[src] * row / self.capacity;
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            buf.copy_within(src * row..src * row + filled, dst * row);
        }
        self.lens[dst] = self.lens[src];
        self.left_pad[dst] = self.left_pad[src];
        Ok(())
    }

    /// Empties row `row`, prefills `prompt` into it and returns the logits at its last
    /// position `(V,)`. When the previous `prefill_row` had the same prompt and its row
    /// is unchanged since, that row's cache is copied instead of recomputed (the
    /// samples of one prompt: a GRPO group, an eval task's `samples`). The reuse
    /// assumes the model's weights did not change in between, as within one batch.
    pub fn prefill_row(&mut self, row: usize, prompt: &[u32]) -> Result<&[f32]> {
        self.check_row(row)?;
        let vocab = self.model.config().vocab_size;
        let reuse = match &self.last_prefill {
            Some((src, p, _)) if p == prompt && *src != row => Some(*src),
            _ => None,
        };
        if let Some(src) = reuse {
            self.copy_row(src, row)?;
            if let Some((_, _, logits)) = &self.last_prefill {
                self.logits[..vocab].copy_from_slice(logits);
            }
            return Ok(&self.logits[..vocab]);
        }
        self.reset_row(row)?;
        let logits = self.extend_rows(&[row], prompt, prompt.len())?.to_vec();
        self.logits[..vocab].copy_from_slice(&logits);
        self.last_prefill = Some((row, prompt.to_vec(), logits));
        Ok(&self.logits[..vocab])
    }

    /// Drops the remembered prefill if it lives in one of `rows` (about to change).
    fn forget_prefill_of(&mut self, rows: &[usize]) {
        if self
            .last_prefill
            .as_ref()
            .is_some_and(|(r, _, _)| rows.contains(r))
        {
            self.last_prefill = None;
        }
    }

    fn check_row(&self, row: usize) -> Result<()> {
        if row >= self.batch() {
            return Err(Error::Invalid(format!(
                "DecodeSession: row {row} out of range for {} rows",
                self.batch()
            )));
        }
        Ok(())
    }

    /// Appends `ids` `(B, t_new)` row-major to every row (a prompt, or one token per
    /// row) and returns each row's logits at its last new position, `(B, V)` row-major.
    pub fn extend(&mut self, ids: &[u32], t_new: usize) -> Result<&[f32]> {
        let rows: Vec<usize> = (0..self.batch()).collect();
        self.extend_rows(&rows, ids, t_new)
    }

    /// Appends `ids` `(rows.len(), t_new)` row-major to the rows `rows` (distinct slot
    /// indices, each at its own length) and returns their logits at their last new
    /// position, `(rows.len(), V)` row-major in the order of `rows`.
    pub fn extend_rows(&mut self, rows: &[usize], ids: &[u32], t_new: usize) -> Result<&[f32]> {
        let c = self.model.config().clone();
        let n = rows.len();
        if t_new == 0 || n == 0 || ids.len() != n * t_new {
            return Err(Error::Invalid(format!(
                "DecodeSession::extend: {} ids for {n} rows × {t_new} tokens",
                ids.len()
            )));
        }
        for (i, &row) in rows.iter().enumerate() {
            self.check_row(row)?;
            if rows[..i].contains(&row) {
                return Err(Error::Invalid(format!(
                    "DecodeSession::extend: row {row} listed twice"
                )));
            }
            if self.lens[row] + t_new > self.capacity {
                return Err(Error::Invalid(format!(
                    "DecodeSession::extend: row {row} holds {} tokens, {t_new} more exceed the capacity {}",
                    self.lens[row], self.capacity
                )));
            }
            let pad = self.left_pad[row];
            if pad >= self.lens[row] + t_new {
                return Err(Error::Invalid(format!(
                    "DecodeSession::extend: row {row}'s padding {pad} leaves no real token in {} slots",
                    self.lens[row] + t_new
                )));
            }
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} out of range for vocab_size {}",
                c.vocab_size
            )));
        }
        self.forget_prefill_of(rows);
        let guards = weights::Guards::lock(self.model);
        let w = guards.weights(self.model)?;
        self.scratch.reserve(n * t_new, &c);
        self.embed_and_rotations(&w, rows, ids, t_new);
        for l in 0..c.num_hidden_layers {
            self.layer(&w, l, rows, t_new)?;
        }
        for &row in rows {
            self.lens[row] += t_new;
        }
        self.head(&w, n, t_new)?;
        Ok(&self.logits[..n * c.vocab_size])
    }

    /// Embedding rows and the rotary cosines/sines of every new position.
    fn embed_and_rotations(
        &mut self,
        w: &weights::Weights<'_>,
        rows: &[usize],
        ids: &[u32],
        t_new: usize,
    ) {
        let h = self.model.config().hidden_size;
        let s = &mut self.scratch;
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            s.x[r * h..(r + 1) * h].copy_from_slice(&w.embed[id * h..(id + 1) * h]);
        }
        let inv_freq = &self.model.inv_freq;
        let half = inv_freq.len();
        for (i, &row) in rows.iter().enumerate() {
            let pad = self.left_pad[row];
            for t in 0..t_new {
                let r = i * t_new + t;
                let p = (self.lens[row] + t).saturating_sub(pad) as f32;
                for (i, &f) in inv_freq.iter().enumerate() {
                    let angle = p * f;
                    s.cos[r * half + i] = angle.cos();
                    s.sin[r * half + i] = angle.sin();
                }
            }
        }
    }

    /// Decoder layer `l` on `scratch.x` `(rows·t_new, H)`, in place.
    fn layer(
        &mut self,
        w: &weights::Weights<'_>,
        l: usize,
        slots: &[usize],
        t_new: usize,
    ) -> Result<()> {
        let c = self.model.config();
        let (h, d, nq, nkv) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
        );
        let eps = c.rms_norm_eps;
        let lw = &w.layers[l];
        let rows = slots.len() * t_new;
        let team = &self.team;
        let s = &mut self.scratch;

        kernels::rms_norm_rows(&s.x[..rows * h], lw.input_norm, eps, &mut s.normed);
        kernels::linear(
            team,
            &s.normed,
            rows,
            h,
            &mut [
                part(lw.q, &mut s.q, false),
                part(lw.k, &mut s.k, false),
                part(lw.v, &mut s.v, false),
            ],
        )?;
        // q/k norms and rotations, then the new keys and values into the cache
        let half = d / 2;
        let (keys, values) = (&mut self.keys[l], &mut self.values[l]);
        for r in 0..rows {
            let q = &mut s.q[r * nq * d..(r + 1) * nq * d];
            let k = &mut s.k[r * nkv * d..(r + 1) * nkv * d];
            if let Some((qn, kn)) = lw.qk_norm {
                kernels::rms_norm_in_place(q, qn, eps);
                kernels::rms_norm_in_place(k, kn, eps);
            }
            if lw.use_rope {
                let (cos, sin) = (
                    &s.cos[r * half..(r + 1) * half],
                    &s.sin[r * half..(r + 1) * half],
                );
                kernels::rope_heads(q, d, cos, sin);
                kernels::rope_heads(k, d, cos, sin);
            }
            let (slot, t) = (slots[r / t_new], r % t_new);
            let at = (slot * self.capacity + self.lens[slot] + t) * nkv * d;
            keys[at..at + nkv * d].copy_from_slice(k);
            values[at..at + nkv * d].copy_from_slice(&s.v[r * nkv * d..(r + 1) * nkv * d]);
        }
        // attention: one task per (new token, key/value group)
        let cache = CacheView {
            keys,
            values,
            capacity: self.capacity,
            kv_heads: nkv,
            heads: nq,
            head_dim: d,
        };
        let (q, attn) = (
            &s.q,
            crate::ops::skinny_gemm::SharedMatrix::new(&mut s.attn, rows, nq * d),
        );
        let (scores, left_pad, lens) = (&self.scores, &self.left_pad, &self.lens);
        let scale = 1.0 / (d as f32).sqrt();
        let group = nq / nkv;
        team.run(|worker, workers| {
            let mut sc = scores[worker].lock().unwrap_or_else(|e| e.into_inner());
            for task in crate::runtime::team::share(rows * nkv, worker, workers) {
                let (r, g) = (task / nkv, task % nkv);
                let (slot, t) = (slots[r / t_new], r % t_new);
                // SAFETY: group g's head columns of row r belong to this task alone.
                let out = unsafe { attn.cols_mut(r, g * group * d..(g + 1) * group * d) };
                kernels::attend(
                    cache,
                    slot,
                    g,
                    (left_pad[slot], lens[slot] + t),
                    &q[r * nq * d..(r + 1) * nq * d],
                    scale,
                    &mut sc,
                    out,
                );
            }
        });
        kernels::linear(
            team,
            &s.attn,
            rows,
            nq * d,
            &mut [part(lw.o, &mut s.x, true)],
        )?;
        kernels::rms_norm_rows(&s.x[..rows * h], lw.post_norm, eps, &mut s.normed);
        kernels::gated_mlp(
            team,
            &s.normed,
            rows,
            h,
            (lw.gate.w, lw.gate.b),
            (lw.up.w, lw.up.b),
            &mut s.gate,
            &mut s.up,
            &mut s.act,
        )?;
        let inter = lw.gate.w.len() / h;
        kernels::linear(
            team,
            &s.act,
            rows,
            inter,
            &mut [part(lw.down, &mut s.x, true)],
        )?;
        Ok(())
    }

    /// Final norm and `lm_head` on each of the `b` rows' last new position → `self.logits`.
    fn head(&mut self, w: &weights::Weights<'_>, b: usize, t_new: usize) -> Result<()> {
        let c = self.model.config();
        let h = c.hidden_size;
        let s = &mut self.scratch;
        for row in 0..b {
            let r = row * t_new + t_new - 1;
            kernels::rms_norm_rows(
                &s.x[r * h..(r + 1) * h],
                w.final_norm,
                c.rms_norm_eps,
                &mut s.normed[row * h..(row + 1) * h],
            );
        }
        let head = weights::ProjWeights {
            w: w.lm_head,
            b: None,
        };
        kernels::linear(
            &self.team,
            &s.normed[..b * h],
            b,
            h,
            &mut [part(head, &mut self.logits, false)],
        )?;
        Ok(())
    }
}

fn part<'a>(p: weights::ProjWeights<'a>, out: &'a mut [f32], accumulate: bool) -> LinearPart<'a> {
    LinearPart {
        w: p.w,
        bias: p.b,
        out,
        accumulate,
    }
}

impl Scratch {
    /// Grows every buffer to hold `rows` rows.
    fn reserve(&mut self, rows: usize, c: &super::ModelConfig) {
        if rows <= self.rows {
            return;
        }
        let (h, d) = (c.hidden_size, c.head_dim);
        let grow = |v: &mut Vec<f32>, len: usize| v.resize(len, 0.0);
        grow(&mut self.x, rows * h);
        grow(&mut self.normed, rows * h);
        grow(&mut self.q, rows * c.num_attention_heads * d);
        grow(&mut self.k, rows * c.num_key_value_heads * d);
        grow(&mut self.v, rows * c.num_key_value_heads * d);
        grow(&mut self.attn, rows * c.num_attention_heads * d);
        grow(&mut self.gate, rows * c.intermediate_size);
        grow(&mut self.up, rows * c.intermediate_size);
        grow(&mut self.act, rows * c.intermediate_size);
        grow(&mut self.cos, rows * d / 2);
        grow(&mut self.sin, rows * d / 2);
        self.rows = rows;
    }
}
