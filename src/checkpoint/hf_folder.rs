//! HF checkpoint folders: load `config.json` + safetensors (+ tokenizer), save them back.
//!
//! Key decision: what smelt writes is exactly what `transformers`'
//! `save_pretrained` writes for a float32 model — `model.safetensors` with
//! `{"format": "pt"}` metadata and the tied `lm_head` omitted, `config.json`,
//! `generation_config.json`, `tokenizer.json` + `tokenizer_config.json` — and it is
//! written through [`write_dir_atomically`], so the folder at the target path is always
//! complete. Loading accepts a single `model.safetensors` or a sharded index.

use super::atomic::write_dir_atomically;
use super::safetensors_io::{read_safetensors, read_sharded, write_safetensors};
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Reads the weights of a folder: `model.safetensors`, else the sharded
/// `model.safetensors.index.json`. Returns the tensors (f32, CPU) and the file they
/// came from (for error messages).
pub fn load_weights(dir: &Path) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok((read_safetensors(&single)?, single));
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return Ok((read_sharded(&index)?, index));
    }
    Err(Error::checkpoint(
        dir,
        "no weights: neither `model.safetensors` nor `model.safetensors.index.json` is in this folder",
    ))
}

/// Loads the model of an HF folder onto `device`, and its tokenizer when the folder has
/// `tokenizer.json` (an error when `require_tokenizer` and it has none).
pub fn load_folder(
    dir: &Path,
    device: &Device,
    require_tokenizer: bool,
) -> Result<(Model, Option<Tokenizer>)> {
    if !dir.is_dir() {
        return Err(Error::checkpoint(dir, "not a directory"));
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::checkpoint(
            dir,
            format!("no config.json in {}", dir.display()),
        ));
    }
    let config = ModelConfig::from_file(&config_path)?;
    let (tensors, source) = load_weights(dir)?;
    let model = Model::from_tensors(config, tensors, device, &source)?;
    let tokenizer = load_tokenizer(dir, require_tokenizer)?;
    Ok((model, tokenizer))
}

/// The folder's tokenizer, `None` if it has no `tokenizer.json` and none is required.
pub fn load_tokenizer(dir: &Path, required: bool) -> Result<Option<Tokenizer>> {
    if dir.join("tokenizer.json").is_file() {
        Ok(Some(Tokenizer::from_dir(dir)?))
    } else if required {
        Err(Error::checkpoint(
            dir,
            format!("no tokenizer.json in {}", dir.display()),
        ))
    } else {
        Ok(None)
    }
}

/// `generation_config.json` as transformers derives it from a model config.
pub fn generation_config(config: &ModelConfig) -> Value {
    let mut m = Map::new();
    m.insert("_from_model_config".into(), json!(true));
    if let Some(b) = config.bos_token_id {
        m.insert("bos_token_id".into(), json!(b));
    }
    match config.eos_token_ids.as_slice() {
        [] => {}
        [one] => {
            m.insert("eos_token_id".into(), json!(one));
        }
        many => {
            m.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(p) = config.pad_token_id {
        m.insert("pad_token_id".into(), json!(p));
    }
    Value::Object(m)
}

/// Writes `value` as pretty JSON with a trailing newline.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise JSON: {e}")))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Saves `model` (and `tokenizer`, if given) as an HF folder at `dir`, atomically:
/// any previous folder at `dir` is replaced wholly, and a failed save leaves it as it was.
pub fn save_pretrained(model: &Model, tokenizer: Option<&Tokenizer>, dir: &Path) -> Result<()> {
    write_dir_atomically(dir, |tmp| write_pretrained_files(model, tokenizer, tmp))
}

/// Writes the HF files of `model` (`model.safetensors`, `config.json`,
/// `generation_config.json`, tokenizer files) into the existing directory `dir`, not
/// atomically: callers wrap it in [`write_dir_atomically`] together with their own
/// files (a training checkpoint adds optimizer and trainer state beside them).
pub fn write_pretrained_files(
    model: &Model,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
) -> Result<()> {
    write_safetensors(&dir.join("model.safetensors"), &model.named_tensors())?;
    write_json(&dir.join("config.json"), &model.config().to_hf_json())?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config(model.config()),
    )?;
    if let Some(t) = tokenizer {
        t.save(dir)?;
    }
    Ok(())
}
