//! The trainable Llama-family decoder.
//!
//! One [`Model`] holds its parameters as candle `Var`s under their HF tensor names and
//! has two entry points over the same weights:
//! - [`Model::forward`] for training: packed rows, `position_ids` that restart at each
//!   document, attention confined to each document, logits at every position, built
//!   only from ops with a backward (see [`crate::ops`]);
//! - [`Model::decode`] for generation: the caller owns the [`KvCache`].
//!
//! Both run the same per-layer code ([`layer`]), so they agree to float rounding.
//! The architecture variants (SmolLM3 NoPE layers, Qwen2 q/k/v bias, Qwen3 q/k norm)
//! are flags on [`ModelConfig`], not separate model types.
//!
//! Every op runs either the fused kernels ([`Kernels::Fused`], the default) or the
//! slow reference compositions ([`Kernels::Reference`]) — [`Model::set_kernels`] —
//! and the linear layers run at [`Model::set_precision`] (f32, or bf16 autocast:
//! bf16 GEMM inputs, f32 accumulation; norms, softmax and the loss stay f32 as
//! `torch.autocast` keeps them). Generation reads logits only where it needs them:
//! [`Model::decode_last`] applies the `lm_head` to the last position of each row.

pub mod config;
mod kv_cache;
mod layer;
pub mod mask;
pub mod params;
pub mod rope;
mod session;

pub use config::{ModelConfig, ModelType, RopeScaling};
pub use kv_cache::KvCache;
pub use layer::Kernels;
pub use params::{param_specs, Init, ParamSpec};
pub use session::DecodeSession;

use crate::error::{Error, Result};
use crate::ops::{self, Precision};
use candle_core::{DType, Device, Tensor, Var};
use layer::{Layer, LayerSpec, Visibility};
use params::LayerNames;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

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
    kernels: Kernels,
    precision: Precision,
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
            kernels: Kernels::default(),
            precision: Precision::default(),
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

    /// Which kernels the forward runs.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Selects the fused kernels (default) or the slow reference compositions.
    /// Parameters are shared, so a clone with other kernels computes the same function.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Precision of the linear layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the precision of every linear layer (`lm_head` included): f32 (default) or
    /// bf16 autocast. Weights, norms, softmax and losses stay f32.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    fn spec(&self) -> LayerSpec {
        LayerSpec {
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            eps: self.config.rms_norm_eps,
            kernels: self.kernels,
            precision: self.precision,
        }
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
        let visibility = match self.kernels {
            Kernels::Reference => {
                Visibility::Mask(Some(mask::packed_causal(&positions, &self.device)?))
            }
            Kernels::Fused => {
                Visibility::Segments(mask::packed_segments(&positions, &self.device)?)
            }
        };
        self.hidden_states(input_ids, &positions, &visibility, None)
    }

    /// Generation step: logits `(B, T_new, V)` for `input_ids` `(B, T_new)` appended
    /// after the tokens already in `cache` (which is extended in place).
    pub fn decode(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.decode_hidden(input_ids, None, cache)?; // (B, T_new, H)
        self.logits(&hidden)
    }

    /// Like [`Model::decode`] but only the logits of each row's last position `(B, V)`:
    /// the `lm_head` runs on B rows instead of B·T_new (what generation needs).
    pub fn decode_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let hidden = self.decode_hidden(input_ids, None, cache)?; // (B, T_new, H)
        self.last_logits(&hidden)
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
        let hidden = self.decode_hidden(input_ids, Some(left_pad), cache)?; // (B, T_new, H)
        self.logits(&hidden)
    }

    /// [`Model::decode_left_padded`] returning only each row's last logits `(B, V)`.
    pub fn decode_left_padded_last(
        &self,
        input_ids: &Tensor,
        left_pad: &[usize],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let hidden = self.decode_hidden(input_ids, Some(left_pad), cache)?; // (B, T_new, H)
        self.last_logits(&hidden)
    }

    /// The shared decode step: final hidden states `(B, T_new, H)`; `left_pad` = `None`
    /// for rows without padding.
    fn decode_hidden(
        &self,
        input_ids: &Tensor,
        left_pad: Option<&[usize]>,
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
        if cache.batch_size().is_some_and(|cb| cb != b) {
            return Err(Error::Invalid(format!(
                "decode: cache holds {:?} rows, input has {b}",
                cache.batch_size()
            )));
        }
        let no_pad = vec![0; b];
        let left_pad = match left_pad {
            None => no_pad.as_slice(),
            Some(pads) => {
                if pads.len() != b {
                    return Err(Error::Invalid(format!(
                        "decode_left_padded: {} paddings for a batch of {b}",
                        pads.len()
                    )));
                }
                if let Some(&p) = pads.iter().find(|&&p| p >= past + t_new) {
                    return Err(Error::Invalid(format!(
                        "decode_left_padded: padding {p} leaves no real token in {} slots",
                        past + t_new
                    )));
                }
                pads
            }
        };
        let positions: Vec<Vec<u32>> = left_pad
            .iter()
            .map(|&pad| {
                (past..past + t_new)
                    .map(|slot| slot.saturating_sub(pad) as u32)
                    .collect()
            })
            .collect();
        let visibility = match self.kernels {
            Kernels::Reference => Visibility::Mask(mask::decode_left_padded(
                left_pad,
                past,
                t_new,
                &self.device,
            )?),
            Kernels::Fused => Visibility::Segments(mask::left_padded_segments(
                left_pad,
                past + t_new,
                &self.device,
            )?),
        };
        cache.reserve(t_new)?;
        let hidden = self.hidden_states(input_ids, &positions, &visibility, Some(cache))?;
        cache.advance(t_new);
        Ok(hidden)
    }

    /// `lm_head` applied to hidden states `(B, T, H)` → logits `(B, T, V)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let head = (self.lm_head.clone(), None);
        let logits = self.spec().linear(&hidden.reshape((b * t, h))?, &head)?; // (B*T, V)
        Ok(logits.reshape((b, t, self.config.vocab_size))?)
    }

    /// `lm_head` applied to the last position of each row of `hidden` `(B, T, H)` → `(B, V)`.
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (_, t, _) = hidden.dims3()?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?; // (B, H)
        self.spec().linear(&last, &(self.lm_head.clone(), None)) // (B, V)
    }

    /// Per-token cross-entropy of `labels` `(N,)` (negative = ignored) under the
    /// `lm_head` applied to `hidden` `(N, H)`: `nll` `(N,)` (differentiable; per-token
    /// log-probs are `-nll`), the count of labels and of argmax hits.
    ///
    /// Fused kernels: [`ops::linear_cross_entropy`] (vocabulary chunks, the `(N, V)`
    /// logits never exist; at the model's precision). Reference: explicit logits, log-softmax, gather.
    pub fn token_nll(&self, hidden: &Tensor, labels: &Tensor) -> Result<ops::LinearCrossEntropy> {
        match self.kernels {
            Kernels::Fused => Ok(ops::linear_cross_entropy(
                hidden,
                &self.lm_head,
                labels,
                ops::DEFAULT_VOCAB_CHUNK,
                self.precision,
            )?),
            Kernels::Reference => {
                let logits = self.spec().linear(hidden, &(self.lm_head.clone(), None))?; // (N, V)
                Ok(reference_token_nll(&logits, labels)?)
            }
        }
    }

    /// The shared layer stack: final normed hidden states `(B, T, H)`.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        positions: &[Vec<u32>],
        visibility: &Visibility,
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
        let spec = self.spec();
        let (cos, sin) = rope::tables(&self.inv_freq, positions, &self.device)?; // (B, 1, T, D)
        let (cos, sin) = match self.kernels {
            Kernels::Reference => (cos, sin),
            Kernels::Fused => {
                let d = self.config.head_dim;
                (
                    cos.reshape((b * t, 1, 1, d))?,
                    sin.reshape((b * t, 1, 1, d))?,
                ) // one row per token
            }
        };
        let mut x = self.embed.index_select(&ids, 0)?.reshape((b, t, h))?; // (B, T, H)
        for (i, layer) in self.layers.iter().enumerate() {
            let rope = layer.use_rope.then_some((&cos, &sin));
            x = spec.forward(layer, i, &x, rope, visibility, cache.as_deref_mut())?;
        }
        spec.rms_norm(&x, &self.final_norm)
    }
}

/// Per-token NLL from explicit logits `(N, V)` (the reference of
/// [`ops::linear_cross_entropy`]): `lse − logit[label]`, 0 where the label is ignored.
fn reference_token_nll(
    logits: &Tensor,
    labels: &Tensor,
) -> candle_core::Result<ops::LinearCrossEntropy> {
    let labels = labels.to_dtype(DType::I64)?;
    let mask = labels.ge(0i64)?; // (N,)
    let safe = mask
        .where_cond(&labels, &labels.zeros_like()?)?
        .to_dtype(DType::U32)?; // (N,)
    let max = logits.max_keepdim(1)?.detach(); // (N, 1), constant for stability
    let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?; // (N, 1)
    let picked = logits.gather(&safe.unsqueeze(1)?, 1)?; // (N, 1)
    let maskf = mask.to_dtype(logits.dtype())?; // (N,)
    let nll = ((lse - picked)?.squeeze(1)? * &maskf)?; // (N,)
    let hits = logits.argmax(1)?.eq(&safe)?.to_dtype(logits.dtype())?; // (N,)
    let count = maskf.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    let correct = (hits * &maskf)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(ops::LinearCrossEntropy {
        nll,
        count,
        correct,
    })
}

/// One N(0, 1) draw (Box–Muller), so initialisation depends only on the seed.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
