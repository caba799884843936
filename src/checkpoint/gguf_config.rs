//! The model config a GGUF file's metadata describes, as an HF `config.json`.
//!
//! Key decision: the `<arch>.*` keys are translated into the HF `config.json` keys
//! transformers' GGUF loader uses (`integrations/ggml.py`), and the result goes through
//! [`ModelConfig::from_json`], so GGUF and folder configs share one validator and one
//! set of defaults. Tied embeddings and biases are read off the tensor table
//! (no `output.weight` means tied). f32 metadata values are taken at their shortest
//! round-trip decimal (`1e-5`, not `9.99999974e-6`), the value the source config held.

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::path::Path;

/// Typed access to GGUF metadata, naming the key in every error.
pub(crate) struct Meta<'a> {
    pub(crate) md: &'a HashMap<String, Value>,
    pub(crate) path: &'a Path,
}

impl Meta<'_> {
    fn err(&self, key: &str, what: &str, v: &Value) -> Error {
        Error::config(
            self.path,
            format!("GGUF metadata `{key}`: expected {what}, found {v:?}"),
        )
    }
    fn uint(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let n = match *v {
            Value::U8(x) => Some(x as u64),
            Value::U16(x) => Some(x as u64),
            Value::U32(x) => Some(x as u64),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        };
        n.map(Some)
            .ok_or_else(|| self.err(key, "a non-negative integer", v))
    }
    fn float(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        match *v {
            // The shortest decimal that round-trips the f32 (1e-5, not 9.99999974e-6),
            // which is the value the original config.json held.
            Value::F32(x) => Ok(format!("{x}").parse::<f64>().ok()),
            Value::F64(x) => Ok(Some(x)),
            _ => self
                .uint(key)
                .map(|u| u.map(|u| u as f64))
                .map_err(|_| self.err(key, "a number", v)),
        }
    }
    pub(crate) fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, "a string", v)),
        }
    }
}

/// Builds the HF `config.json` the metadata describes and resolves it.
pub(crate) fn config_from_metadata(content: &Content, path: &Path) -> Result<ModelConfig> {
    let m = Meta {
        md: &content.metadata,
        path,
    };
    let arch = m
        .string("general.architecture")?
        .ok_or_else(|| Error::config(path, "GGUF metadata: missing key `general.architecture`"))?;
    if !matches!(arch, "llama" | "qwen2" | "qwen3") {
        return Err(Error::config(
            path,
            format!("GGUF metadata `general.architecture`: unsupported `{arch}` (supported: llama, qwen2, qwen3)"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| -> Result<u64> {
        m.uint(&key(k))?
            .ok_or_else(|| Error::config(path, format!("GGUF metadata: missing key `{}`", key(k))))
    };
    let mut c = Map::new();
    c.insert("model_type".into(), json!(arch));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("hidden_size".into(), json!(req("embedding_length")?));
    c.insert("num_hidden_layers".into(), json!(req("block_count")?));
    c.insert(
        "intermediate_size".into(),
        json!(req("feed_forward_length")?),
    );
    c.insert(
        "num_attention_heads".into(),
        json!(req("attention.head_count")?),
    );
    let put_uint = |hf: &str, k: &str, c: &mut Map<String, Json>| -> Result<()> {
        if let Some(v) = m.uint(k)? {
            c.insert(hf.into(), json!(v));
        }
        Ok(())
    };
    put_uint(
        "num_key_value_heads",
        &key("attention.head_count_kv"),
        &mut c,
    )?;
    put_uint("max_position_embeddings", &key("context_length"), &mut c)?;
    put_uint("bos_token_id", "tokenizer.ggml.bos_token_id", &mut c)?;
    put_uint("eos_token_id", "tokenizer.ggml.eos_token_id", &mut c)?;
    put_uint("pad_token_id", "tokenizer.ggml.padding_token_id", &mut c)?;
    let head_dim = match m.uint(&key("attention.key_length"))? {
        Some(d) => Some(d),
        None if arch == "llama" => m.uint(&key("rope.dimension_count"))?,
        None => None,
    };
    if let Some(d) = head_dim {
        c.insert("head_dim".into(), json!(d));
    }
    if let Some(eps) = m.float(&key("attention.layer_norm_rms_epsilon"))? {
        c.insert("rms_norm_eps".into(), json!(eps));
    }
    if let Some(theta) = m.float(&key("rope.freq_base"))? {
        c.insert("rope_theta".into(), json!(theta));
    }
    match m.string(&key("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = m.float(&key("rope.scaling.factor"))?.ok_or_else(|| {
                Error::config(
                    path,
                    format!(
                        "GGUF metadata: missing key `{}`",
                        key("rope.scaling.factor")
                    ),
                )
            })?;
            c.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": factor}),
            );
        }
        Some(other) => {
            return Err(Error::config(
                path,
                format!(
                    "GGUF metadata `{}`: unsupported rope scaling `{other}`",
                    key("rope.scaling.type")
                ),
            ))
        }
    }
    let vocab = match m.uint(&key("vocab_size"))? {
        Some(v) => v,
        None => match content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len() as u64,
            _ => content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0] as u64)
                .ok_or_else(|| {
                    Error::config(
                        path,
                        "GGUF: no vocab size (no `vocab_size` key, tokens or `token_embd.weight`)",
                    )
                })?,
        },
    };
    c.insert("vocab_size".into(), json!(vocab));
    let has = |t: &str| content.tensor_infos.contains_key(t);
    c.insert("tie_word_embeddings".into(), json!(!has("output.weight")));
    if arch == "llama" {
        c.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
    }
    c.insert("mlp_bias".into(), json!(has("blk.0.ffn_up.bias")));
    ModelConfig::from_json(&Json::Object(c), path)
}
