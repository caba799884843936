//! Resolving a hub repo id (`org/name[@revision]`) to a local snapshot folder.
//!
//! Key decision: the local cache is consulted *first and completely*. If every file a
//! load needs (config, weights — single file or index plus every shard — and the
//! tokenizer when required) is already in the standard hub cache layout
//! (`models--org--name/refs/<rev>` → `snapshots/<hash>/…`), no network call is made at
//! all; with `HF_HUB_OFFLINE=1` (or `offline: Some(true)`) none is ever made, and a
//! missing file is an error naming the repo and the file. Only online and incomplete
//! does `hf_hub::api::sync` download the missing files, into the same cache.

use crate::error::{Error, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// A model repository on the hub at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit hash (default `main`).
    pub revision: String,
}

impl HubRepo {
    /// Parses `org/name` or `org/name@revision`; `None` if `s` is not of that form.
    pub fn parse(s: &str) -> Option<HubRepo> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (s, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (ok(org) && ok(name)).then(|| HubRepo {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    fn hf(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone())
    }
}

/// The hub cache directory: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the same order as `huggingface_hub`).
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// Whether `HF_HUB_OFFLINE` is set to a true value (`1`, `true`, `yes`, `on`).
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The snapshot folder of `repo` in `cache_dir`, if the revision is cached.
fn cached_snapshot(repo: &HubRepo, cache_dir: &Path) -> Option<PathBuf> {
    let cache = Cache::new(cache_dir.to_path_buf());
    // hf-hub's own lookup (exact ref file contents) first.
    if let Some(p) = cache.repo(repo.hf()).get("config.json") {
        return p.parent().map(Path::to_path_buf);
    }
    // Tolerate a trailing newline in the ref file, or a commit hash given directly.
    let root = cache_dir.join(repo.hf().folder_name());
    let hash = std::fs::read_to_string(root.join("refs").join(&repo.revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| repo.revision.clone());
    let snap = root.join("snapshots").join(hash);
    snap.is_dir().then_some(snap)
}

/// Shard file names listed in a sharded index.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::checkpoint(index, "missing object `weight_map`"))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The first file a load of `snap` needs that is not there, or `None` when complete.
fn first_missing(snap: &Path, need_tokenizer: bool) -> Result<Option<String>> {
    if !snap.join("config.json").is_file() {
        return Ok(Some("config.json".into()));
    }
    if !snap.join("model.safetensors").is_file() {
        let index = snap.join("model.safetensors.index.json");
        if !index.is_file() {
            return Ok(Some("model.safetensors".into()));
        }
        if let Some(s) = shard_names(&index)?
            .into_iter()
            .find(|s| !snap.join(s).is_file())
        {
            return Ok(Some(s));
        }
    }
    if need_tokenizer && !snap.join("tokenizer.json").is_file() {
        return Ok(Some("tokenizer.json".into()));
    }
    Ok(None)
}

/// Resolves `repo` to a local folder holding `config.json`, the weights and (when
/// present, or required by `need_tokenizer`) `tokenizer.json` / `tokenizer_config.json`.
///
/// `cache_dir` is the hub cache root (see [`default_cache_dir`]). A fully cached repo
/// never touches the network; `offline` forbids the network altogether.
pub fn resolve(
    repo: &HubRepo,
    cache_dir: &Path,
    offline: bool,
    need_tokenizer: bool,
) -> Result<PathBuf> {
    let label = format!("{}@{}", repo.repo, repo.revision);
    if let Some(snap) = cached_snapshot(repo, cache_dir) {
        if first_missing(&snap, need_tokenizer)?.is_none() {
            return Ok(snap);
        }
    }
    if offline {
        let missing = match cached_snapshot(repo, cache_dir) {
            Some(snap) => first_missing(&snap, need_tokenizer)?.unwrap_or_default(),
            None => "config.json".into(),
        };
        return Err(Error::checkpoint(
            cache_dir,
            format!(
                "hub repo `{label}`: file `{missing}` is not in the local cache and offline mode \
                 (HF_HUB_OFFLINE) forbids downloading it"
            ),
        ));
    }
    download(repo, cache_dir, need_tokenizer)
}

/// Downloads whatever is missing through `hf_hub::api::sync` into `cache_dir`.
fn download(repo: &HubRepo, cache_dir: &Path, need_tokenizer: bool) -> Result<PathBuf> {
    let label = format!("{}@{}", repo.repo, repo.revision);
    let hub_err = |file: &str, e: &dyn std::fmt::Display| {
        Error::checkpoint(
            cache_dir,
            format!("hub repo `{label}`: cannot fetch `{file}`: {e}"),
        )
    };
    let cache = Cache::new(cache_dir.to_path_buf());
    let token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cache.token());
    let mut builder = ApiBuilder::from_cache(cache)
        .with_progress(false)
        .with_token(token);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| hub_err("<api>", &e))?;
    let api = api.repo(repo.hf());
    let config = api
        .get("config.json")
        .map_err(|e| hub_err("config.json", &e))?;
    let snap = config.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Err(single) = api.get("model.safetensors") {
        let index = api.get("model.safetensors.index.json").map_err(|e| {
            hub_err(
                "model.safetensors",
                &format!("{single}; and no sharded index either: {e}"),
            )
        })?;
        for shard in shard_names(&index)? {
            api.get(&shard).map_err(|e| hub_err(&shard, &e))?;
        }
    }
    match api.get("tokenizer.json") {
        Ok(_) => {
            // Optional companions: absent in some repos, so a failure is not an error.
            let _ = api.get("tokenizer_config.json");
            let _ = api.get("generation_config.json");
        }
        Err(e) if need_tokenizer => return Err(hub_err("tokenizer.json", &e)),
        Err(_) => {}
    }
    if let Some(missing) = first_missing(&snap, need_tokenizer)? {
        return Err(Error::checkpoint(
            &snap,
            format!("hub repo `{label}`: `{missing}` was downloaded into a different snapshot (the revision moved during download); retry"),
        ));
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_ids() {
        let r = HubRepo::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str()),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "main")
        );
        let r = HubRepo::parse("org/name@v1.0").unwrap();
        assert_eq!(r.revision, "v1.0");
        for bad in [
            "noslash",
            "a/b/c",
            "/abs",
            "./x",
            "org/",
            "org/name@",
            "../x",
        ] {
            assert!(HubRepo::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn offline_missing_file_names_repo_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let repo = HubRepo::parse("org/absent").unwrap();
        let e = resolve(&repo, dir.path(), true, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("org/absent") && e.contains("config.json") && e.contains("offline"),
            "{e}"
        );
    }
}
