//! The trainable Llama-family decoder.
//!
//! One [`Model`] holds its parameters as candle `Var`s under their HF tensor names and
//! has two entry points over the same weights:
//! - [`Model::forward`] for training: packed rows, `position_ids` that restart at each
//!   document, attention confined to each document, logits at every position, built
//!   only from ops with a backward (see [`crate::ops`]);
//! - [`Model::decode`] for generation: the caller owns the [`KvCache`].
//!
//! Both run the same per-layer code ([`Model::hidden_states`]), so they agree to
//! float rounding. The architecture variants (SmolLM3 NoPE layers, Qwen2 q/k/v bias,
//! Qwen3 q/k norm) are flags on [`ModelConfig`], not separate model types.

pub mod config;
mod kv_cache;
pub mod mask;
pub mod params;
pub mod rope;

pub use config::{ModelConfig, ModelType, RopeScaling};
pub use kv_cache::KvCache;
pub use params::{param_specs, Init, ParamSpec};

use crate::error::{Error, Result};
use crate::ops;
use candle_core::{DType, Device, Tensor, Var};
use params::LayerNames;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// The tensors of one decoder layer (handles into the model's `Var`s).
#[derive(Debug, Clone)]
struct Layer {
    input_norm: Tensor,
    q: (Tensor, Option<Tensor>),
    k: (Tensor, Option<Tensor>),
    v: (Tensor, Option<Tensor>),
    o: (Tensor, Option<Tensor>),
    qk_norm: Option<(Tensor, Tensor)>,
    post_norm: Tensor,
    gate: (Tensor, Option<Tensor>),
    up: (Tensor, Option<Tensor>),
    down: (Tensor, Option<Tensor>),
    use_rope: bool,
}

/// A Llama-family decoder with trainable parameters.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    device: Device,
    /// (HF name, parameter) in checkpoint order.
    params: Vec<(String, Var)>,
    embed: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
}

impl Model {
    /// HF names and shapes of every parameter `config` needs, in order.
    pub fn expected_parameters(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        param_specs(config)
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect()
    }

    /// A freshly initialised model (normal std 0.02 projections, unit norms, zero
    /// biases), deterministic in `seed`.
    pub fn new_random(config: ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for spec in param_specs(&config) {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = match spec.init {
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
                Init::Normal(std) => (0..n)
                    .map(|_| (standard_normal(&mut rng) * std) as f32)
                    .collect(),
            };
            tensors.insert(spec.name, Tensor::from_vec(data, spec.shape, device)?);
        }
        Self::from_tensors(config, tensors, device, Path::new("<random init>"))
    }

    /// Builds a model from named tensors (any float dtype; stored as f32 `Var`s).
    ///
    /// Every expected parameter must be present with its exact shape; a tied
    /// `lm_head.weight` and rotary `inv_freq` buffers are ignored; any other extra
    /// tensor is an error. `source` names the checkpoint in errors.
    pub fn from_tensors(
        config: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
        source: &Path,
    ) -> Result<Self> {
        let mut params = Vec::new();
        for (name, shape) in Self::expected_parameters(&config) {
            let t = tensors.remove(&name).ok_or_else(|| {
                Error::checkpoint(
                    source,
                    format!("missing tensor `{name}` (expected shape {shape:?})"),
                )
            })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::checkpoint(
                    source,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.dims()
                    ),
                ));
            }
            let t = t.to_dtype(DType::F32)?.to_device(device)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        tensors.retain(|name, _| {
            !(name.ends_with("rotary_emb.inv_freq")
                || (config.tie_word_embeddings && name == "lm_head.weight"))
        });
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::checkpoint(
                source,
                format!(
                    "unexpected tensor `{extra}`: not a parameter of this {} config ({} unexpected in all)",
                    config.model_type.as_str(),
                    tensors.len()
                ),
            ));
        }
        Self::assemble(config, params, device)
    }

    /// Wires the named parameters into layers.
    fn assemble(config: ModelConfig, params: Vec<(String, Var)>, device: &Device) -> Result<Self> {
        let by_name: HashMap<&str, &Var> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let get = |name: &str| -> Result<Tensor> {
            by_name
                .get(name)
                .map(|v| v.as_tensor().clone())
                .ok_or_else(|| Error::Invalid(format!("internal: parameter `{name}` not built")))
        };
        let opt = |name: &str| by_name.get(name).map(|v| v.as_tensor().clone());
        let proj = |n: &LayerNames, p: &str| -> Result<(Tensor, Option<Tensor>)> {
            Ok((
                get(&n.get(&format!("{p}.weight")))?,
                opt(&n.get(&format!("{p}.bias"))),
            ))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let n = LayerNames::new(i);
            let qk_norm = if config.qk_norm {
                Some((
                    get(&n.get("self_attn.q_norm.weight"))?,
                    get(&n.get("self_attn.k_norm.weight"))?,
                ))
            } else {
                None
            };
            layers.push(Layer {
                input_norm: get(&n.get("input_layernorm.weight"))?,
                q: proj(&n, "self_attn.q_proj")?,
                k: proj(&n, "self_attn.k_proj")?,
                v: proj(&n, "self_attn.v_proj")?,
                o: proj(&n, "self_attn.o_proj")?,
                qk_norm,
                post_norm: get(&n.get("post_attention_layernorm.weight"))?,
                gate: proj(&n, "mlp.gate_proj")?,
                up: proj(&n, "mlp.up_proj")?,
                down: proj(&n, "mlp.down_proj")?,
                use_rope: config.use_rope[i],
            });
        }
        let embed = get("model.embed_tokens.weight")?;
        let lm_head = if config.tie_word_embeddings {
            embed.clone()
        } else {
            get("lm_head.weight")?
        };
        Ok(Model {
            inv_freq: rope::inv_freq(&config),
            final_norm: get("model.norm.weight")?,
            embed,
            lm_head,
            layers,
            params,
            device: device.clone(),
            config,
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every trainable parameter with its HF name, in checkpoint order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Current values of every parameter with its HF name (f32, tied `lm_head` not included).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every parameter in place with the tensor of the same name (a resumed
    /// checkpoint, a rollback). Names and shapes must match exactly; `source` names the
    /// checkpoint in errors. Clones of this model see the new values (they share `Var`s).
    pub fn load_parameters(&self, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        for (name, var) in &self.params {
            let t = tensors
                .get(name)
                .ok_or_else(|| Error::checkpoint(source, format!("missing tensor `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(Error::checkpoint(
                    source,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// The output projection `(V, H)` (the embedding matrix when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        &self.lm_head
    }

    /// Training forward: logits `(B, T, V)` at every position of `input_ids` `(B, T)`.
    ///
    /// `position_ids` `(B, T)` restart at each packed document; attention never crosses
    /// a document boundary (see [`mask`]). `None` means one document per row
    /// (positions `0..T`).
    pub fn forward(&self, input_ids: &Tensor, position_ids: Option<&Tensor>) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, position_ids)?; // (B, T, H)
        self.logits(&hidden)
    }

    /// Like [`Model::forward`] but returns the final normed hidden states `(B, T, H)`,
    /// for losses that fuse the `lm_head` projection.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let positions: Vec<Vec<u32>> = match position_ids {
            Some(p) => {
                if p.dims() != [b, t] {
                    return Err(Error::Invalid(format!(
                        "position_ids shape {:?} does not match input_ids ({b}, {t})",
                        p.dims()
                    )));
                }
                p.to_dtype(DType::U32)?.to_vec2()?
            }
            None => vec![(0..t as u32).collect(); b],
        };
        let mask = mask::packed_causal(&positions, &self.device)?;
        self.hidden_states(input_ids, &positions, Some(&mask), None)
    }

    /// Generation step: logits `(B, T_new, V)` for `input_ids` `(B, T_new)` appended
    /// after the tokens already in `cache` (which is extended in place).
    pub fn decode(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.num_layers() != self.layers.len() {
            return Err(Error::Invalid(format!(
                "KvCache has {} layers, model has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let (b, t_new) = input_ids.dims2()?;
        let past = cache.len();
        let positions = vec![(past as u32..(past + t_new) as u32).collect::<Vec<_>>(); b];
        let mask = mask::decode_causal(past, t_new, &self.device)?;
        let hidden = self.hidden_states(input_ids, &positions, mask.as_ref(), Some(cache))?;
        cache.advance(t_new);
        self.logits(&hidden)
    }

    /// Batched generation step for rows of different lengths: like [`Model::decode`],
    /// but row `r`'s first `left_pad[r]` slots (in `cache` followed by `input_ids`) are
    /// padding. Padding is never attended and positions count from the first real
    /// slot, so each row's logits equal those of decoding it alone (to float rounding).
    /// `input_ids` `(B, T_new)` → logits `(B, T_new, V)`.
    pub fn decode_left_padded(
        &self,
        input_ids: &Tensor,
        left_pad: &[usize],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        if cache.num_layers() != self.layers.len() {
            return Err(Error::Invalid(format!(
                "KvCache has {} layers, model has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let (b, t_new) = input_ids.dims2()?;
        let past = cache.len();
        if left_pad.len() != b {
            return Err(Error::Invalid(format!(
                "decode_left_padded: {} paddings for a batch of {b}",
                left_pad.len()
            )));
        }
        if cache.batch_size().is_some_and(|cb| cb != b) {
            return Err(Error::Invalid(format!(
                "decode_left_padded: cache holds {:?} rows, input has {b}",
                cache.batch_size()
            )));
        }
        if let Some(&p) = left_pad.iter().find(|&&p| p >= past + t_new) {
            return Err(Error::Invalid(format!(
                "decode_left_padded: padding {p} leaves no real token in {} slots",
                past + t_new
            )));
        }
        let positions: Vec<Vec<u32>> = left_pad
            .iter()
            .map(|&pad| {
                (past..past + t_new)
                    .map(|slot| slot.saturating_sub(pad) as u32)
                    .collect()
            })
            .collect();
        let mask = mask::decode_left_padded(left_pad, past, t_new, &self.device)?;
        let hidden = self.hidden_states(input_ids, &positions, mask.as_ref(), Some(cache))?;
        cache.advance(t_new);
        self.logits(&hidden)
    }

    /// `lm_head` applied to hidden states `(B, T, H)` → logits `(B, T, V)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let logits = ops::linear(&hidden.reshape((b * t, h))?, &self.lm_head, None)?; // (B*T, V)
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
    }

    /// The shared layer stack: final normed hidden states `(B, T, H)`.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        positions: &[Vec<u32>],
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.config.hidden_size;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let max_id = ids.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= self.config.vocab_size {
            return Err(Error::Invalid(format!(
                "token id {max_id} out of range for vocab_size {}",
                self.config.vocab_size
            )));
        }
        let (cos, sin) = rope::tables(&self.inv_freq, positions, &self.device)?; // (B, 1, T, D)
        let mut x = self.embed.index_select(&ids, 0)?.reshape((b, t, h))?; // (B, T, H)
        for (i, layer) in self.layers.iter().enumerate() {
            let rope = layer.use_rope.then_some((&cos, &sin));
            x = self.layer_forward(layer, i, &x, rope, mask, cache.as_deref_mut())?;
        }
        Ok(ops::rms_norm(
            &x,
            &self.final_norm,
            self.config.rms_norm_eps,
        )?)
    }

    /// One pre-norm decoder layer on `x` `(B, T, H)`.
    fn layer_forward(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, h) = x.dims3()?;
        let (nq, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let eps = c.rms_norm_eps;

        let normed = ops::rms_norm(x, &layer.input_norm, eps)?.reshape((b * t, h))?; // (B*T, H)
        let heads = |p: &(Tensor, Option<Tensor>), n: usize| -> candle_core::Result<Tensor> {
            ops::linear(&normed, &p.0, p.1.as_ref())? // (B*T, n*D)
                .reshape((b, t, n, d))?
                .transpose(1, 2)? // (B, n, T, D)
                .contiguous()
        };
        let (mut q, mut k, v) = (
            heads(&layer.q, nq)?,
            heads(&layer.k, nkv)?,
            heads(&layer.v, nkv)?,
        );
        if let Some((qn, kn)) = &layer.qk_norm {
            q = ops::rms_norm(&q, qn, eps)?;
            k = ops::rms_norm(&k, kn, eps)?;
        }
        if let Some((cos, sin)) = rope {
            q = ops::apply_rope(&q, cos, sin)?;
            k = ops::apply_rope(&k, cos, sin)?;
        }
        let (k, v) = match cache {
            Some(cache) => cache.append(index, k, v)?, // (B, KV, T_total, D)
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
        let attn = ops::linear(&attn, &layer.o.0, layer.o.1.as_ref())?.reshape((b, t, h))?;
        let x = (x + attn)?;

        let normed = ops::rms_norm(&x, &layer.post_norm, eps)?.reshape((b * t, h))?;
        let gate = ops::linear(&normed, &layer.gate.0, layer.gate.1.as_ref())?; // (B*T, I)
        let up = ops::linear(&normed, &layer.up.0, layer.up.1.as_ref())?;
        let mlp = ops::linear(
            &ops::swiglu(&gate, &up)?,
            &layer.down.0,
            layer.down.1.as_ref(),
        )?;
        Ok((x + mlp.reshape((b, t, h))?)?)
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

/// One N(0, 1) draw (Box–Muller), so initialisation depends only on the seed.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
