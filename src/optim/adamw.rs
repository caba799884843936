//! AdamW with decoupled weight decay and per-parameter decay classification.
//!
//! The update is `torch.optim.AdamW`'s single-tensor path (the one PyTorch runs on
//! CPU), operation for operation, so a run can be replayed against PyTorch:
//!
//! ```text
//! step += 1
//! p  *= 1 - lr * wd                        (only where `decays(name)`)
//! m   = b1 m + (1 - b1) g
//! v   = b2 v + (1 - b2) g²
//! p  -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
//! ```
//!
//! Design decision: which parameters are decayed is decided once, from the HF tensor
//! name, when the optimizer is built (SmolLM3 / nanotron: no decay on norm weights,
//! biases and embeddings). The optimizer holds no reference to the model — the caller
//! passes the same `(name, Var)` list to every `step`, which is checked — so the
//! moments are plain f32 tensors that [`AdamW::state_tensors`] can write to
//! `optimizer.safetensors` and [`AdamW::load_state`] can restore bit for bit.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::fused_adamw::{self, UpdateScalars};
use crate::{Error, Result};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
///
/// Which parameters get weight decay: by default (SmolLM3 / nanotron) no decay for
/// norm weights (`*norm*.weight`: `input_layernorm`, `post_attention_layernorm`,
/// `q_norm`, `k_norm`, the final `model.norm`), biases (`*.bias`) and embeddings
/// (`model.embed_tokens.weight`, and an untied `lm_head.weight`, which is the
/// output embedding). See [`AdamW::decays`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// First-moment decay β₁ (dimensionless). 0.9: SmolLM3 / nanotron / PyTorch default.
    pub beta1: f64,
    /// Second-moment decay β₂ (dimensionless). 0.95: SmolLM3 and most LLM pretraining
    /// recipes (PyTorch's default is 0.999).
    pub beta2: f64,
    /// Denominator epsilon (dimensionless). 1e-8: SmolLM3 / PyTorch default.
    pub eps: f64,
    /// Decoupled weight decay coefficient, multiplied by the learning rate
    /// (Loshchilov & Hutter 2019). 0.1: SmolLM3.
    pub weight_decay: f64,
    /// Decay `model.embed_tokens.weight` and `lm_head.weight` too. false: SmolLM3.
    pub decay_embeddings: bool,
    /// Decay norm weights and biases too. false: SmolLM3 / nanotron.
    pub decay_norms_and_biases: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_embeddings: false,
            decay_norms_and_biases: false,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges (β in [0, 1), eps > 0, weight_decay ≥ 0); errors name the key.
    pub fn validate(&self) -> Result<()> {
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::Invalid(format!(
                    "optimizer.{key} = {beta}: must be in [0, 1)"
                )));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::Invalid(format!(
                "optimizer.eps = {}: must be a positive finite number",
                self.eps
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::Invalid(format!(
                "optimizer.weight_decay = {}: must be a finite number >= 0",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

/// Per-parameter state: name, decay flag and the two f32 moments.
struct ParamState {
    name: String,
    decay: bool,
    /// First moment, same shape as the parameter, f32.
    exp_avg: Tensor,
    /// Second moment (uncentred variance), same shape as the parameter, f32.
    exp_avg_sq: Tensor,
}

/// AdamW over a fixed list of named parameters, with f32 moments and a step count.
pub struct AdamW {
    config: AdamWConfig,
    state: Vec<ParamState>,
    steps_taken: u64,
}

/// True for HF names of norm weights (`model.norm.weight`, `*.input_layernorm.weight`,
/// `*.q_norm.weight`, ...): the component before `.weight` contains `norm`.
fn is_norm(name: &str) -> bool {
    name.strip_suffix(".weight")
        .and_then(|stem| stem.rsplit('.').next())
        .is_some_and(|module| module.contains("norm"))
}

/// True for the input and output embeddings under their HF names.
fn is_embedding(name: &str) -> bool {
    name == "lm_head.weight"
        || name
            .strip_suffix(".weight")
            .and_then(|stem| stem.rsplit('.').next())
            .is_some_and(|module| module == "embed_tokens")
}

impl AdamW {
    /// An optimizer for `params` (names and shapes are fixed from here on), with zero
    /// moments and no steps taken.
    pub fn new(params: &[(String, Var)], config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let mut state = Vec::with_capacity(params.len());
        for (name, var) in params {
            if state.iter().any(|s: &ParamState| &s.name == name) {
                return Err(Error::Invalid(format!(
                    "AdamW::new: parameter `{name}` is listed twice"
                )));
            }
            // Two separate buffers: the fused CPU update writes them in place.
            let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
            state.push(ParamState {
                name: name.clone(),
                decay: Self::decays_with(&config, name),
                exp_avg: zeros()?,
                exp_avg_sq: zeros()?,
            });
        }
        Ok(AdamW {
            config,
            state,
            steps_taken: 0,
        })
    }

    fn decays_with(config: &AdamWConfig, name: &str) -> bool {
        if config.weight_decay == 0.0 {
            return false;
        }
        if is_embedding(name) {
            return config.decay_embeddings;
        }
        if is_norm(name) || name.ends_with(".bias") {
            return config.decay_norms_and_biases;
        }
        true
    }

    /// Whether the parameter called `name` gets weight decay under this config:
    /// false for norms, biases and embeddings unless the config opts them in, and
    /// false everywhere when `weight_decay` is 0.
    pub fn decays(&self, name: &str) -> bool {
        Self::decays_with(&self.config, name)
    }

    /// The hyper-parameters this optimizer was built with.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken so far (PyTorch's `state["step"]`).
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// One update with learning rate `lr`; `grads[i]` is the gradient of `params[i]`
    /// (same order, names and shapes as in [`AdamW::new`]).
    ///
    /// PyTorch's `torch.optim.AdamW` semantics exactly (see the module docs). Every
    /// argument is checked before any parameter is touched, so a bad call changes
    /// nothing.
    pub fn step(&mut self, params: &[(String, Var)], grads: &[Tensor], lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Invalid(format!(
                "AdamW::step: learning rate {lr} must be a finite number >= 0"
            )));
        }
        if params.len() != self.state.len() || grads.len() != self.state.len() {
            return Err(Error::Invalid(format!(
                "AdamW::step: optimizer has {} parameters, got {} parameters and {} gradients",
                self.state.len(),
                params.len(),
                grads.len()
            )));
        }
        for ((st, (name, var)), grad) in self.state.iter().zip(params).zip(grads) {
            if &st.name != name {
                return Err(Error::Invalid(format!(
                    "AdamW::step: parameter `{name}` passed where `{}` was expected (order must match AdamW::new)",
                    st.name
                )));
            }
            if grad.dims() != var.dims() {
                return Err(Error::Invalid(format!(
                    "AdamW::step: gradient of `{name}` has shape {:?}, parameter has {:?}",
                    grad.dims(),
                    var.dims()
                )));
            }
        }

        self.steps_taken += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.config;
        let step = self.steps_taken as f64;
        // Scalars in f64, as PyTorch computes them in Python floats.
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2_sqrt = (1.0 - beta2.powf(step)).sqrt();
        let step_size = lr / bias_correction1;

        for ((st, (_, var)), grad) in self.state.iter_mut().zip(params).zip(grads) {
            let scalars = UpdateScalars {
                decay_mul: st.decay.then_some(1.0 - lr * weight_decay),
                beta1,
                beta2,
                inv_bias_correction2_sqrt: 1.0 / bias_correction2_sqrt,
                eps,
                step_size,
            };
            let param = var.as_tensor();
            if fused_adamw::applies(param, grad, [&st.exp_avg, &st.exp_avg_sq]) {
                fused_adamw::update_in_place(param, grad, &st.exp_avg, &st.exp_avg_sq, scalars)?;
            } else {
                // GPU, bf16 parameters, strided views
                update_op_by_op(var, grad, &mut st.exp_avg, &mut st.exp_avg_sq, scalars)?;
            }
        }
        Ok(())
    }

    /// The moments as named tensors, `exp_avg.<param>` and `exp_avg_sq.<param>` (f32,
    /// parameter shapes), for `optimizer.safetensors`. The step count is
    /// [`AdamW::steps_taken`], stored beside it by the caller.
    ///
    /// The tensors share storage with the optimizer (no copy of the moments is made):
    /// on the CPU the next [`AdamW::step`] updates them in place, so write them out
    /// (or `copy()` them) before stepping again.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.state.len());
        for st in &self.state {
            out.push((format!("exp_avg.{}", st.name), st.exp_avg.clone()));
            out.push((format!("exp_avg_sq.{}", st.name), st.exp_avg_sq.clone()));
        }
        out
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    ///
    /// Every moment must be present with its parameter's shape and no other tensor may
    /// be present; errors name the missing, mis-shaped or unexpected entry. Nothing is
    /// changed unless everything checks out. Tensors are converted to f32 on the
    /// parameters' device.
    pub fn load_state(
        &mut self,
        mut tensors: HashMap<String, Tensor>,
        steps_taken: u64,
    ) -> Result<()> {
        let mut restored = Vec::with_capacity(self.state.len());
        for st in &self.state {
            let mut pair = Vec::with_capacity(2);
            for key in [
                format!("exp_avg.{}", st.name),
                format!("exp_avg_sq.{}", st.name),
            ] {
                let t = tensors.remove(&key).ok_or_else(|| {
                    Error::Invalid(format!("optimizer state: missing tensor `{key}`"))
                })?;
                if t.dims() != st.exp_avg.dims() {
                    return Err(Error::Invalid(format!(
                        "optimizer state: tensor `{key}` has shape {:?}, parameter has {:?}",
                        t.dims(),
                        st.exp_avg.dims()
                    )));
                }
                // An owned copy: the update writes the moments in place, and `t` may
                // share its storage with the caller.
                pair.push(
                    t.to_dtype(DType::F32)?
                        .to_device(st.exp_avg.device())?
                        .copy()?,
                );
            }
            restored.push(pair);
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::Invalid(format!(
                "optimizer state: unexpected tensor `{extra}` (no such parameter in this model)"
            )));
        }
        for (st, mut pair) in self.state.iter_mut().zip(restored) {
            st.exp_avg_sq = pair.pop().expect("two moments per parameter");
            st.exp_avg = pair.pop().expect("two moments per parameter");
        }
        self.steps_taken = steps_taken;
        Ok(())
    }
}

/// The update of one parameter as a chain of tensor ops (any device and dtype): the
/// reference the fused CPU pass reproduces bit for bit.
fn update_op_by_op(
    var: &Var,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    s: UpdateScalars,
) -> Result<()> {
    // Detached views: the update must not extend any autograd graph.
    let g = grad.detach().to_dtype(DType::F32)?; // (param shape)
    let mut p = var.as_tensor().detach().to_dtype(DType::F32)?; // (param shape)
    if let Some(decay_mul) = s.decay_mul {
        p = p.affine(decay_mul, 0.0)?;
    }
    // m = b1 m + (1 - b1) g
    *exp_avg = (exp_avg.affine(s.beta1, 0.0)? + g.affine(1.0 - s.beta1, 0.0)?)?;
    // v = b2 v + (1 - b2) g²
    *exp_avg_sq = (exp_avg_sq.affine(s.beta2, 0.0)? + g.sqr()?.affine(1.0 - s.beta2, 0.0)?)?;
    // denom = sqrt(v) / sqrt(1 - b2^t) + eps
    let denom = exp_avg_sq
        .sqrt()?
        .affine(s.inv_bias_correction2_sqrt, 0.0)?
        .affine(1.0, s.eps)?;
    // p -= step_size * m / denom
    let p = (p - exp_avg.div(&denom)?.affine(s.step_size, 0.0)?)?;
    var.set(&p.to_dtype(var.dtype())?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused in-place pass and the op chain give the same bits for parameter and
    /// moments over several steps, with and without decay, on a size split across
    /// threads and an odd one that is not.
    #[test]
    fn fused_and_op_by_op_updates_are_bit_identical() {
        use candle_core::Device;
        for (n, decay) in [(100_003usize, true), (1001, false), (70_000, false)] {
            let dev = Device::Cpu;
            let init = Tensor::randn(0f32, 0.02, n, &dev).unwrap();
            let fused_p = Var::from_tensor(&init.copy().unwrap()).unwrap();
            let chain_p = Var::from_tensor(&init.copy().unwrap()).unwrap();
            let zeros = || Tensor::zeros(n, DType::F32, &dev).unwrap();
            let (fm, fv) = (zeros(), zeros());
            let (mut cm, mut cv) = (zeros(), zeros());
            for step in 1..=3i32 {
                let g = Tensor::randn(0f32, 1e-3, n, &dev).unwrap();
                let s = UpdateScalars {
                    decay_mul: decay.then_some(1.0 - 1e-3 * 0.1),
                    beta1: 0.9,
                    beta2: 0.95,
                    inv_bias_correction2_sqrt: 1.0 / (1.0 - 0.95f64.powi(step)).sqrt(),
                    eps: 1e-8,
                    step_size: 1e-3 / (1.0 - 0.9f64.powi(step)),
                };
                assert!(fused_adamw::applies(fused_p.as_tensor(), &g, [&fm, &fv]));
                fused_adamw::update_in_place(fused_p.as_tensor(), &g, &fm, &fv, s).unwrap();
                update_op_by_op(&chain_p, &g, &mut cm, &mut cv, s).unwrap();
            }
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_ne!(
                bits(&init),
                bits(fused_p.as_tensor()),
                "the update moved nothing"
            );
            assert_eq!(
                bits(fused_p.as_tensor()),
                bits(chain_p.as_tensor()),
                "n={n}"
            );
            assert_eq!(bits(&fm), bits(&cm), "exp_avg n={n}");
            assert_eq!(bits(&fv), bits(&cv), "exp_avg_sq n={n}");
        }
    }

    #[test]
    fn norm_and_embedding_names() {
        assert!(is_norm("model.norm.weight"));
        assert!(is_norm("model.layers.3.post_attention_layernorm.weight"));
        assert!(is_norm("model.layers.0.self_attn.k_norm.weight"));
        assert!(!is_norm("model.layers.0.self_attn.q_proj.weight"));
        assert!(!is_norm("model.layers.0.mlp.down_proj.weight"));
        assert!(is_embedding("model.embed_tokens.weight"));
        assert!(is_embedding("lm_head.weight"));
        assert!(!is_embedding("model.layers.0.mlp.up_proj.weight"));
    }
}
