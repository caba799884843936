//! Checkpoints: HF folders, hub repo ids, GGUF files in; HF folders out.
//!
//! One entry point, [`load`], takes whatever the user typed — a folder, a `.gguf`
//! file or a hub id `org/name[@revision]` — and returns a [`Model`] (f32 `Var`s under
//! HF names), its tokenizer when one is available, and where it came from. One exit,
//! [`save_pretrained`], writes a folder transformers loads, atomically.
//!
//! Key decision: every source is first turned into *HF-named tensors + a
//! [`ModelConfig`](crate::model::ModelConfig)* and then goes through the same [`Model::from_tensors`] validator,
//! so a GGUF import, a sharded hub snapshot and a local folder are checked (names,
//! shapes, missing/extra tensors) by one piece of code. Untrusted files are
//! validated before data is read: headers that lie are errors naming the file and the
//! tensor, never panics or huge allocations.
//!
//! Submodules: [`safetensors_io`] (single/sharded safetensors), [`hf_folder`]
//! (folder load/save), [`hub`] (hub cache resolution, offline-first), [`gguf`] (GGUF
//! import; its metadata-to-config half is `gguf_config`), [`atomic`] (temp-dir +
//! rename writes, reused by training checkpoints).

pub mod atomic;
pub mod gguf;
mod gguf_config;
pub mod hf_folder;
pub mod hub;
pub mod safetensors_io;

pub use atomic::{write_bytes_atomically, write_dir_atomically, write_file_atomically};
pub use gguf::{read_gguf, GgufImport};
pub(crate) use hf_folder::write_json;
pub use hf_folder::{
    generation_config, load_folder, load_weights, save_pretrained, write_pretrained_files,
};
pub use hub::HubRepo;
pub use safetensors_io::{read_safetensors, read_sharded, write_safetensors};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// How [`load`] behaves.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Fail unless a tokenizer is found (`tokenizer.json`, or tokenizer metadata in a GGUF).
    pub require_tokenizer: bool,
    /// Hub cache root; default `HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`.
    pub hub_cache: Option<PathBuf>,
    /// Forbid network access for hub ids; default from `HF_HUB_OFFLINE`.
    pub offline: Option<bool>,
}

/// Where a loaded checkpoint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A local HF folder.
    Folder(PathBuf),
    /// A hub repo, resolved to a snapshot folder in the local cache.
    Hub {
        /// `org/name`.
        repo: String,
        /// The revision asked for (branch, tag or commit).
        revision: String,
        /// The snapshot folder the files were read from.
        path: PathBuf,
    },
    /// A GGUF file.
    Gguf(PathBuf),
}

/// A loaded checkpoint.
pub struct Loaded {
    /// The model, on the requested device.
    pub model: Model,
    /// Its tokenizer, when the source has one.
    pub tokenizer: Option<Tokenizer>,
    /// Where it came from.
    pub origin: Origin,
}

/// Loads `source` — a folder, a `.gguf` file or a hub id `org/name[@revision]` — onto `device`.
pub fn load(source: &str, device: &Device, opts: &LoadOptions) -> Result<Loaded> {
    let path = Path::new(source);
    if path.is_dir() {
        let (model, tokenizer) = load_folder(path, device, opts.require_tokenizer)?;
        return Ok(Loaded {
            model,
            tokenizer,
            origin: Origin::Folder(path.to_path_buf()),
        });
    }
    let is_gguf_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if path.is_file() || is_gguf_name {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such GGUF file"),
            ));
        }
        return load_gguf(path, device, opts.require_tokenizer);
    }
    if let Some(repo) = HubRepo::parse(source) {
        let cache = opts
            .hub_cache
            .clone()
            .or_else(hub::default_cache_dir)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{source}: no hub cache directory (set HF_HUB_CACHE or HF_HOME)"
                ))
            })?;
        let offline = opts.offline.unwrap_or_else(hub::offline_from_env);
        let dir = hub::resolve(&repo, &cache, offline, opts.require_tokenizer)?;
        let (model, tokenizer) = load_folder(&dir, device, opts.require_tokenizer)?;
        let origin = Origin::Hub {
            repo: repo.repo,
            revision: repo.revision,
            path: dir,
        };
        return Ok(Loaded {
            model,
            tokenizer,
            origin,
        });
    }
    Err(Error::Invalid(format!(
        "{source}: not an existing folder or .gguf file, and not a hub repo id (`org/name[@revision]`)"
    )))
}

/// Imports a GGUF file: weights (dequantized, un-permuted) and, from its metadata,
/// the config and the tokenizer.
pub fn load_gguf(path: &Path, device: &Device, require_tokenizer: bool) -> Result<Loaded> {
    let GgufImport {
        config,
        tensors,
        metadata,
    } = read_gguf(path)?;
    let model = Model::from_tensors(config, tensors, device, path)?;
    let tokenizer = if metadata.contains_key("tokenizer.ggml.model") {
        Some(Tokenizer::from_gguf_metadata(&metadata, path)?)
    } else if require_tokenizer {
        return Err(Error::checkpoint(
            path,
            "no tokenizer in the GGUF metadata (no `tokenizer.ggml.model` key)",
        ));
    } else {
        None
    };
    Ok(Loaded {
        model,
        tokenizer,
        origin: Origin::Gguf(path.to_path_buf()),
    })
}
