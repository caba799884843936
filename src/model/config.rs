//! `ModelConfig`: a serde-level mirror of HF `config.json` for the Llama family.
//!
//! Supported `model_type`s: `llama` (also SmolLM2), `smollm3` (NoPE layers), `qwen2`
//! (q/k/v bias) and `qwen3` (q/k RMSNorm). The parser works on a `serde_json::Value`
//! rather than a derived struct so that (a) both the transformers 4.x form
//! (`rope_theta`, `rope_scaling`) and the 5.x form (`rope_parameters`) are accepted,
//! (b) every missing or mistyped field is an error naming the key, and (c) the
//! per-architecture defaults are those of the transformers config classes.
//! [`ModelConfig::to_hf_json`] writes a config that transformers 4.x and 5.x both load.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The architectures smelt can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Llama 2/3, SmolLM / SmolLM2 (`model_type = "llama"`).
    Llama,
    /// SmolLM3: Llama with rope switched off in some layers (NoPE).
    SmolLm3,
    /// Qwen2 / Qwen2.5: bias on the q, k and v projections.
    Qwen2,
    /// Qwen3: RMSNorm over each head of q and k before rope.
    Qwen3,
}

impl ModelType {
    /// The `model_type` string used in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::SmolLm3 => "smollm3",
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
        }
    }

    /// The transformers class name written to `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::SmolLm3 => "SmolLM3ForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// Every supported type, for tests and error messages.
    pub const ALL: [ModelType; 4] = [
        ModelType::Llama,
        ModelType::SmolLm3,
        ModelType::Qwen2,
        ModelType::Qwen3,
    ];

    fn parse(s: &str, path: &Path) -> Result<Self> {
        match s {
            "llama" => Ok(ModelType::Llama),
            "smollm3" => Ok(ModelType::SmolLm3),
            "qwen2" => Ok(ModelType::Qwen2),
            "qwen3" => Ok(ModelType::Qwen3),
            other => Err(Error::config(
                path,
                format!(
                    "unsupported model_type `{other}` (supported: llama, smollm3, qwen2, qwen3)"
                ),
            )),
        }
    }
}

/// How rotary frequencies are scaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain rope: `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Positions divided by `factor` (linear interpolation).
    Linear {
        /// Interpolation factor.
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        /// Overall scaling factor.
        factor: f64,
        /// Wavelengths longer than `original_max / low_freq_factor` are scaled fully.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max / high_freq_factor` are left alone.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: usize,
    },
}

/// The hyper-parameters of a Llama-family decoder, resolved with transformers' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which architecture variant.
    pub model_type: ModelType,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when smaller than `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// Width of one head (defaults to `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Rope base frequency.
    pub rope_theta: f64,
    /// Rope scaling variant.
    pub rope_scaling: RopeScaling,
    /// Longest context the model is configured for.
    pub max_position_embeddings: usize,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (always true for qwen2).
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// RMSNorm over each q and k head before rope (qwen3).
    pub qk_norm: bool,
    /// Per layer: whether rope is applied (false = NoPE layer, smollm3).
    pub use_rope: Vec<bool>,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (transformers allows a list).
    pub eos_token_ids: Vec<u32>,
    /// Padding token id.
    pub pad_token_id: Option<u32>,
}

/// Reads typed fields out of a JSON object, naming the key in every error.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn err(&self, msg: String) -> Error {
        Error::config(self.path, msg)
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(format!(
                    "field `{key}`: expected a non-negative integer, found {v}"
                ))
            }),
        }
    }
    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(format!("missing field `{key}`")))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{key}`: expected a number, found {v}"))),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.err(format!("field `{key}`: expected true or false, found {v}"))
            }),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("field `{key}`: expected a string, found {v}"))),
        }
    }
    /// A token id field that may be a single integer or a list of them.
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|x| x as u32).ok_or_else(|| {
                        self.err(format!(
                            "field `{key}`: expected a list of integers, found {v}"
                        ))
                    })
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|x| vec![x as u32])
                .ok_or_else(|| self.err(format!("field `{key}`: expected an integer, found {v}"))),
        }
    }
}

/// Most decoder layers a config may declare (a bound against lying `num_hidden_layers`).
const MAX_LAYERS: usize = 4096;

impl ModelConfig {
    /// Parses `config.json` at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `config.json`; `source` names it in errors.
    pub fn from_json_str(text: &str, source: impl AsRef<Path>) -> Result<Self> {
        let source = source.as_ref();
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(source, format!("not valid JSON: {e}")))?;
        Self::from_json(&value, source)
    }

    /// Resolves a parsed `config.json` value; `source` names it in errors.
    pub fn from_json(value: &Value, source: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(source, "expected a JSON object at the top level"))?;
        let f = Fields { obj, path: source };
        let model_type = ModelType::parse(
            f.str_opt("model_type")?
                .ok_or_else(|| f.err("missing field `model_type`".into()))?,
            source,
        )?;
        if let Some(act) = f.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(f.err(format!(
                    "field `hidden_act`: only `silu` is supported, found `{act}`"
                )));
            }
        }
        let hidden_size = f.usize_req("hidden_size")?;
        let num_attention_heads = f.usize_req("num_attention_heads")?;
        let num_hidden_layers = f.usize_req("num_hidden_layers")?;
        if num_attention_heads == 0 || hidden_size == 0 || num_hidden_layers == 0 {
            return Err(f.err(
                "fields `hidden_size`, `num_attention_heads`, `num_hidden_layers` must be positive"
                    .into(),
            ));
        }
        // Per-layer tables (rope flags, the parameter list) are sized from this field
        // before any weight is read, so a lying value must not reach them; the deepest
        // Llama-family models have ~130 layers.
        if num_hidden_layers > MAX_LAYERS {
            return Err(f.err(format!(
                "field `num_hidden_layers`: {num_hidden_layers} exceeds the supported maximum {MAX_LAYERS}"
            )));
        }
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(format!(
                "field `num_key_value_heads`: {num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
            )));
        }
        let head_dim = f
            .usize_opt("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.err(format!(
                "field `head_dim`: must be even and positive, found {head_dim}"
            )));
        }
        let (rope_theta, rope_scaling) = parse_rope(&f)?;
        let attention_bias = f.bool_opt("attention_bias")?.unwrap_or(false);
        let use_rope = parse_use_rope(&f, model_type, num_hidden_layers)?;
        if f.bool_opt("use_sliding_window")?.unwrap_or(false) {
            return Err(f.err(
                "field `use_sliding_window`: sliding-window attention is not supported".into(),
            ));
        }
        let default_tie = matches!(model_type, ModelType::SmolLm3);
        Ok(ModelConfig {
            model_type,
            vocab_size: f.usize_req("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(default_tie),
            qkv_bias: attention_bias || model_type == ModelType::Qwen2,
            o_bias: attention_bias && model_type != ModelType::Qwen2,
            mlp_bias: f.bool_opt("mlp_bias")?.unwrap_or(false),
            qk_norm: model_type == ModelType::Qwen3,
            use_rope,
            bos_token_id: f.ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.ids("eos_token_id")?,
            pad_token_id: f.ids("pad_token_id")?.first().copied(),
        })
    }

    /// A tiny random-init-sized config of `model_type` (2 layers, hidden 64, GQA 4/2),
    /// for tests and the embedded pipeline.
    pub fn tiny(model_type: ModelType, vocab_size: usize) -> Self {
        let num_hidden_layers = 2;
        ModelConfig {
            model_type,
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: 512,
            tie_word_embeddings: matches!(model_type, ModelType::Llama | ModelType::SmolLm3),
            qkv_bias: model_type == ModelType::Qwen2,
            o_bias: false,
            mlp_bias: false,
            qk_norm: model_type == ModelType::Qwen3,
            use_rope: (0..num_hidden_layers)
                .map(|i| model_type != ModelType::SmolLm3 || (i + 1) % 2 != 0)
                .collect(),
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
        }
    }

    /// Query heads per key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (nq, nkv) = (self.num_attention_heads, self.num_key_value_heads);
        let mut layer = h * nq * d + 2 * h * nkv * d + nq * d * h + 3 * h * i + 2 * h;
        if self.qkv_bias {
            layer += nq * d + 2 * nkv * d;
        }
        if self.o_bias {
            layer += h;
        }
        if self.mlp_bias {
            layer += 2 * i + h;
        }
        if self.qk_norm {
            layer += 2 * d;
        }
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + h + self.num_hidden_layers * layer
    }

    /// The `config.json` transformers loads: 5.x `rope_parameters` plus the 4.x
    /// `rope_theta`/`rope_scaling` keys, so both major versions read it.
    pub fn to_hf_json(&self) -> Value {
        let rope_params = match &self.rope_scaling {
            RopeScaling::Default => json!({"rope_type": "default", "rope_theta": self.rope_theta}),
            RopeScaling::Linear { factor } => {
                json!({"rope_type": "linear", "factor": factor, "rope_theta": self.rope_theta})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
                "rope_theta": self.rope_theta,
            }),
        };
        let mut m = Map::new();
        m.insert(
            "architectures".into(),
            json!([self.model_type.architecture()]),
        );
        m.insert("model_type".into(), json!(self.model_type.as_str()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
        m.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        m.insert(
            "num_key_value_heads".into(),
            json!(self.num_key_value_heads),
        );
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        m.insert("rope_theta".into(), json!(self.rope_theta));
        if !matches!(self.rope_scaling, RopeScaling::Default) {
            m.insert("rope_scaling".into(), rope_params.clone());
        }
        m.insert("rope_parameters".into(), rope_params);
        m.insert("mlp_bias".into(), json!(self.mlp_bias));
        match self.model_type {
            ModelType::Qwen2 => {}
            _ => {
                m.insert("attention_bias".into(), json!(self.qkv_bias));
            }
        }
        if self.model_type == ModelType::SmolLm3 {
            let layers: Vec<u8> = self.use_rope.iter().map(|&r| r as u8).collect();
            m.insert("no_rope_layers".into(), json!(layers));
        }
        if matches!(self.model_type, ModelType::Qwen2 | ModelType::Qwen3) {
            m.insert("use_sliding_window".into(), json!(false));
        }
        // Token ids are always written, `null` when absent: an omitted key would get the
        // transformers class default instead (e.g. SmolLM3's pad 128004, which is out of
        // range for a small vocab and makes `from_pretrained` fail; Llama's bos 1 / eos 2).
        m.insert("bos_token_id".into(), json!(self.bos_token_id));
        match self.eos_token_ids.as_slice() {
            [] => {
                m.insert("eos_token_id".into(), Value::Null);
            }
            [one] => {
                m.insert("eos_token_id".into(), json!(one));
            }
            many => {
                m.insert("eos_token_id".into(), json!(many));
            }
        }
        m.insert("pad_token_id".into(), json!(self.pad_token_id));
        m.insert("torch_dtype".into(), json!("float32"));
        m.insert("use_cache".into(), json!(true));
        Value::Object(m)
    }
}

/// Rope base and scaling from either `rope_parameters` (5.x) or `rope_theta` + `rope_scaling` (4.x).
fn parse_rope(f: &Fields) -> Result<(f64, RopeScaling)> {
    let params = match f.get("rope_parameters") {
        Some(Value::Object(p)) => Some(p),
        Some(v) => {
            return Err(f.err(format!(
                "field `rope_parameters`: expected an object, found {v}"
            )))
        }
        None => None,
    };
    let scaling = match f.get("rope_scaling") {
        Some(Value::Object(p)) => Some(p),
        Some(v) => {
            return Err(f.err(format!(
                "field `rope_scaling`: expected an object, found {v}"
            )))
        }
        None => None,
    };
    let theta_in_params = match params.and_then(|p| p.get("rope_theta")) {
        Some(v) => Some(v.as_f64().ok_or_else(|| {
            f.err(format!(
                "field `rope_parameters.rope_theta`: expected a number, found {v}"
            ))
        })?),
        None => None,
    };
    let theta = theta_in_params
        .or(f.f64_opt("rope_theta")?)
        .unwrap_or(10_000.0);
    let (key, obj) = match (params, scaling) {
        (Some(p), _) => ("rope_parameters", p),
        (None, Some(s)) => ("rope_scaling", s),
        (None, None) => return Ok((theta, RopeScaling::Default)),
    };
    let sub = Fields { obj, path: f.path };
    let kind = sub
        .str_opt("rope_type")?
        .or(sub.str_opt("type")?)
        .unwrap_or("default");
    let num = |name: &str| -> Result<f64> {
        sub.f64_opt(name)?.ok_or_else(|| {
            f.err(format!(
                "missing field `{key}.{name}` for rope_type `{kind}`"
            ))
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        },
        other => {
            return Err(f.err(format!(
            "field `{key}.rope_type`: unsupported `{other}` (supported: default, linear, llama3)"
        )))
        }
    };
    Ok((theta, scaling))
}

/// Which layers apply rope: all, except SmolLM3's NoPE layers
/// (`no_rope_layers[i] == 1` means layer i *uses* rope, as in transformers).
fn parse_use_rope(f: &Fields, model_type: ModelType, layers: usize) -> Result<Vec<bool>> {
    if model_type != ModelType::SmolLm3 {
        return Ok(vec![true; layers]);
    }
    if let Some(v) = f.get("no_rope_layers") {
        let items = v.as_array().ok_or_else(|| {
            f.err(format!(
                "field `no_rope_layers`: expected a list, found {v}"
            ))
        })?;
        if items.len() != layers {
            return Err(f.err(format!(
                "field `no_rope_layers`: has {} entries but num_hidden_layers is {layers}",
                items.len()
            )));
        }
        return items
            .iter()
            .map(|x| match x {
                Value::Bool(b) => Ok(*b),
                Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64() != Some(0)),
                _ => Err(f.err(format!(
                    "field `no_rope_layers`: expected 0/1 entries, found {x}"
                ))),
            })
            .collect();
    }
    let interval = f.usize_opt("no_rope_layer_interval")?.unwrap_or(4);
    if interval == 0 {
        return Err(f.err("field `no_rope_layer_interval`: must be positive".into()));
    }
    Ok((0..layers).map(|i| (i + 1) % interval != 0).collect())
}

/// Where a config came from, for error messages when there is no file.
pub fn source_label(label: &str) -> PathBuf {
    PathBuf::from(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    fn smollm2() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": true, "max_position_embeddings": 8192,
            "bos_token_id": 1, "eos_token_id": 2
        })
    }

    #[test]
    fn parses_smollm2_4x_form() {
        let c = parse(smollm2()).unwrap();
        assert_eq!(c.model_type, ModelType::Llama);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.gqa_groups(), 3);
        assert_eq!(c.rope_theta, 100000.0);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.num_parameters(), 134_515_008);
    }

    #[test]
    fn parses_5x_rope_parameters() {
        let mut v = smollm2();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e5});
        assert_eq!(parse(v).unwrap().rope_theta, 5e5);
    }

    #[test]
    fn llama3_scaling_needs_its_fields() {
        let mut v = smollm2();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.low_freq_factor"), "{e}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let mut v = smollm2();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = parse(v).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("`hidden_size`"),
            "{e}"
        );
        let mut v = smollm2();
        v["num_attention_heads"] = json!("nine");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("`num_attention_heads`"), "{e}");
    }

    #[test]
    fn unknown_model_type_is_named() {
        let mut v = smollm2();
        v["model_type"] = json!("gemma3");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("`gemma3`"), "{e}");
    }

    #[test]
    fn smollm3_nope_layers_from_interval_and_list() {
        let mut v = smollm2();
        v["model_type"] = json!("smollm3");
        v["num_hidden_layers"] = json!(8);
        let c = parse(v.clone()).unwrap();
        assert_eq!(
            c.use_rope,
            vec![true, true, true, false, true, true, true, false]
        );
        v["no_rope_layers"] = json!([1, 0, 1, 0, 1, 0, 1, 0]);
        assert_eq!(parse(v.clone()).unwrap().use_rope[1], false);
        v["no_rope_layers"] = json!([1, 0]);
        assert!(parse(v).unwrap_err().to_string().contains("no_rope_layers"));
    }

    #[test]
    fn qwen_variants() {
        let mut v = smollm2();
        v["model_type"] = json!("qwen2");
        let c = parse(v.clone()).unwrap();
        assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);
        v["model_type"] = json!("qwen3");
        let c = parse(v).unwrap();
        assert!(!c.qkv_bias && c.qk_norm);
    }

    #[test]
    fn hf_json_round_trips() {
        for t in ModelType::ALL {
            let c = ModelConfig::tiny(t, 300);
            let back = parse(c.to_hf_json()).unwrap();
            assert_eq!(c, back, "{t:?}");
        }
    }
}
