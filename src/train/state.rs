//! Training checkpoints on disk: layout, atomic save, `latest`, pruning, restore.
//!
//! ```text
//! run/
//!   checkpoint-000500/
//!     config.json  model.safetensors  generation_config.json  tokenizer*.json   ← HF-loadable
//!     trainer_state.json  optimizer.safetensors  data_cursor.json  rng.json     ← resume
//!   latest -> checkpoint-000500
//! ```
//! A checkpoint directory is built beside its final name and renamed into place
//! ([`write_dir_atomically`]); `latest` is a symlink replaced by rename. So a crash at
//! any instant leaves `latest` naming a complete checkpoint. A checkpoint whose
//! weights are not all finite is refused, never written.

use super::spike::SpikeDetector;
use crate::checkpoint::{
    read_safetensors, write_dir_atomically, write_json, write_pretrained_files, write_safetensors,
};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::optim::AdamW;
use crate::tokenizer::Tokenizer;
use candle_core::DType;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The loop's own state, saved as `trainer_state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Tokens consumed so far (input positions, padding included).
    pub tokens_seen: f64,
    /// Learning-rate multiplier lowered by repeated spikes (1 = untouched).
    pub lr_scale: f64,
    /// Rollbacks performed so far.
    pub rollbacks: u32,
    /// Recent good losses for spike detection.
    pub spike: SpikeDetector,
    /// Name of the algorithm that wrote the checkpoint.
    pub algorithm: String,
    /// Data-parallel ranks of the run that wrote the checkpoint (a resume needs the same).
    #[serde(default = "one_rank")]
    pub world_size: u64,
    /// State the algorithm keeps across steps outside the weights (e.g. DPO's `bco_pair`
    /// running reward mean), from [`Algorithm::checkpoint_state`](crate::train::Algorithm::checkpoint_state).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub algorithm_state: serde_json::Value,
}

fn one_rank() -> u64 {
    1
}

/// The directory of the checkpoint at `step`.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!("checkpoint-{step:06}"))
}

/// Everything a checkpoint holds besides the model.
pub struct CheckpointParts<'a> {
    /// The model (its current weights are saved).
    pub model: &'a Model,
    /// Tokenizer files to save beside it, if any.
    pub tokenizer: Option<&'a Tokenizer>,
    /// Optimizer moments.
    pub optimizer: &'a AdamW,
    /// Loop state.
    pub state: &'a TrainerState,
    /// Data position (`data_cursor.json`).
    pub cursor: &'a serde_json::Value,
    /// Seed of the loop (`rng.json`).
    pub seed: u64,
}

/// Writes the checkpoint for `parts.state.step`, points `latest` at it and prunes old
/// ones beyond `keep_last`. Returns its directory.
pub fn save_checkpoint(
    run_dir: &Path,
    parts: &CheckpointParts,
    keep_last: usize,
) -> Result<PathBuf> {
    ensure_finite(parts.model)?;
    let dir = checkpoint_dir(run_dir, parts.state.step);
    write_dir_atomically(&dir, |tmp| {
        write_pretrained_files(parts.model, parts.tokenizer, tmp)?;
        write_safetensors(
            &tmp.join("optimizer.safetensors"),
            &parts.optimizer.state_tensors(),
        )?;
        let mut state =
            serde_json::to_value(parts.state).map_err(|e| Error::Invalid(e.to_string()))?;
        state["optimizer_steps"] = parts.optimizer.steps_taken().into();
        write_json(&tmp.join("trainer_state.json"), &state)?;
        write_json(&tmp.join("data_cursor.json"), parts.cursor)?;
        write_json(
            &tmp.join("rng.json"),
            &serde_json::json!({ "seed": parts.seed }),
        )
    })?;
    point_latest(run_dir, &dir)?;
    prune(run_dir, keep_last, &dir)?;
    Ok(dir)
}

/// The checkpoint `latest` names, if there is one.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    let link = run_dir.join("latest");
    match std::fs::read_link(&link) {
        Ok(target) => {
            let dir = run_dir.join(target);
            if !dir.join("trainer_state.json").is_file() {
                return Err(Error::checkpoint(
                    &link,
                    format!(
                        "points at {} which is not a complete checkpoint",
                        dir.display()
                    ),
                ));
            }
            Ok(Some(dir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&link, e)),
    }
}

/// Restores weights and optimizer from `dir`; returns the loop state and data cursor.
pub fn load_checkpoint(
    dir: &Path,
    model: &Model,
    optimizer: &mut AdamW,
) -> Result<(TrainerState, serde_json::Value)> {
    let weights_path = dir.join("model.safetensors");
    let mut weights = read_safetensors(&weights_path)?;
    if model.config().tie_word_embeddings {
        weights.remove("lm_head.weight");
    }
    model.load_parameters(&weights, &weights_path)?;
    let state_path = dir.join("trainer_state.json");
    let raw = read_json(&state_path)?;
    let optimizer_steps = raw["optimizer_steps"].as_u64().unwrap_or(0);
    let state: TrainerState = serde_json::from_value(raw)
        .map_err(|e| Error::checkpoint(&state_path, format!("malformed trainer state: {e}")))?;
    optimizer.load_state(
        read_safetensors(&dir.join("optimizer.safetensors"))?,
        optimizer_steps,
    )?;
    let cursor = read_json(&dir.join("data_cursor.json"))?;
    Ok((state, cursor))
}

/// Removes temporary directories a killed process left behind (`.checkpoint-*.tmp-*`).
pub fn clean_stale_temps(run_dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".checkpoint-") && (name.contains(".tmp-") || name.contains(".old-")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
        if name.starts_with(".latest.tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn ensure_finite(model: &Model) -> Result<()> {
    for (name, var) in model.vars() {
        // 0·x is 0 for finite x and NaN for NaN or ±inf
        let probe = (var.as_tensor() * 0.0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if !probe.is_finite() {
            return Err(Error::Invalid(format!(
                "refusing to write a checkpoint: parameter `{name}` has non-finite values"
            )));
        }
    }
    Ok(())
}

fn point_latest(run_dir: &Path, dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Invalid("checkpoint dir has no name".into()))?;
    let tmp = run_dir.join(format!(".latest.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(|e| Error::io(&tmp, e))?;
    let link = run_dir.join("latest");
    std::fs::rename(&tmp, &link).map_err(|e| Error::io(&link, e))?;
    if let Ok(d) = std::fs::File::open(run_dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn prune(run_dir: &Path, keep_last: usize, current: &Path) -> Result<()> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map_err(|e| Error::io(run_dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("checkpoint-"))
        })
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep_last);
    for old in dirs.into_iter().take(excess) {
        if old != current {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, format!("not valid JSON: {e}")))
}
