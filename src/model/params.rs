//! Parameter names, shapes and initialisation, under their HF tensor names.
//!
//! The HF name is the identity of a parameter everywhere in smelt (checkpoints,
//! optimizer state, gradients), so checkpoints round-trip with transformers without
//! a renaming table.

use super::config::ModelConfig;

/// How a freshly built parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal(0, std): projections and embeddings (std 0.02 as HF's `initializer_range`).
    Normal(f64),
    /// All ones: RMSNorm weights.
    Ones,
    /// All zeros: biases.
    Zeros,
}

/// One parameter of the model: its HF name, shape and initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// HF tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape (rows, cols) for matrices, (n,) for vectors.
    pub shape: Vec<usize>,
    /// Initialisation used by `Model::new_random`.
    pub init: Init,
}

/// Standard deviation of random initialisation (HF `initializer_range` default).
pub const INIT_STD: f64 = 0.02;

/// Names of the tensors of decoder layer `i`.
#[derive(Debug, Clone)]
pub struct LayerNames {
    /// Prefix `model.layers.{i}`.
    pub prefix: String,
}

impl LayerNames {
    /// Names for layer `i`.
    pub fn new(i: usize) -> Self {
        LayerNames {
            prefix: format!("model.layers.{i}"),
        }
    }
    /// Full name of `suffix` in this layer.
    pub fn get(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }
}

/// Every parameter of `config`, in checkpoint order.
pub fn param_specs(config: &ModelConfig) -> Vec<ParamSpec> {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let d = config.head_dim;
    let (q_out, kv_out) = (
        config.num_attention_heads * d,
        config.num_key_value_heads * d,
    );
    let normal = Init::Normal(INIT_STD);
    let mut specs = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, init: Init| specs.push(ParamSpec { name, shape, init });
    push(
        "model.embed_tokens.weight".into(),
        vec![config.vocab_size, h],
        normal,
    );
    for layer in 0..config.num_hidden_layers {
        let n = LayerNames::new(layer);
        push(n.get("input_layernorm.weight"), vec![h], Init::Ones);
        for (proj, out) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
            push(
                n.get(&format!("self_attn.{proj}.weight")),
                vec![out, h],
                normal,
            );
            if config.qkv_bias {
                push(
                    n.get(&format!("self_attn.{proj}.bias")),
                    vec![out],
                    Init::Zeros,
                );
            }
        }
        push(n.get("self_attn.o_proj.weight"), vec![h, q_out], normal);
        if config.o_bias {
            push(n.get("self_attn.o_proj.bias"), vec![h], Init::Zeros);
        }
        if config.qk_norm {
            push(n.get("self_attn.q_norm.weight"), vec![d], Init::Ones);
            push(n.get("self_attn.k_norm.weight"), vec![d], Init::Ones);
        }
        push(
            n.get("post_attention_layernorm.weight"),
            vec![h],
            Init::Ones,
        );
        for (proj, shape, bias) in [
            ("gate_proj", vec![i, h], i),
            ("up_proj", vec![i, h], i),
            ("down_proj", vec![h, i], h),
        ] {
            push(n.get(&format!("mlp.{proj}.weight")), shape, normal);
            if config.mlp_bias {
                push(n.get(&format!("mlp.{proj}.bias")), vec![bias], Init::Zeros);
            }
        }
    }
    push("model.norm.weight".into(), vec![h], Init::Ones);
    if !config.tie_word_embeddings {
        push("lm_head.weight".into(), vec![config.vocab_size, h], normal);
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelType;

    #[test]
    fn spec_count_matches_parameter_count() {
        for t in ModelType::ALL {
            for tie in [true, false] {
                let mut c = ModelConfig::tiny(t, 97);
                c.tie_word_embeddings = tie;
                let n: usize = param_specs(&c)
                    .iter()
                    .map(|s| s.shape.iter().product::<usize>())
                    .sum();
                assert_eq!(n, c.num_parameters(), "{t:?} tie={tie}");
            }
        }
    }
}
