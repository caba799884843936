//! A mixture source: its recipe entry ([`SourceConfig`]) and its opened shards
//! ([`MixtureSource`]).
//!
//! Paths are expanded the way datatrove's `DatatroveFolderDataset` lists a folder
//! (recursively, every `*.ds`), plus `*` patterns in the last path component, in
//! sorted order so that the document numbering — and with it every permutation and
//! cursor — does not depend on directory listing order.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smelt::{Error, Result};

use crate::shards::Shard;

/// One source of a mixture, as written in a TOML recipe (`[[data.sources]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name; cursors and error messages refer to the source by it.
    pub name: String,
    /// Relative sampling weight (> 0); weights are normalised over the sources.
    pub weight: f64,
    /// Shards of the source: `.ds` files, directories (searched recursively for
    /// `*.ds`, like datatrove's `DatatroveFolderDataset`), or patterns with `*` in
    /// the last component (`data/web/*.ds`). Expanded in sorted order.
    pub paths: Vec<PathBuf>,
}

impl SourceConfig {
    /// The `.ds` files this source names, expanded and sorted; an error names the
    /// source when the list is empty or a path does not exist.
    pub fn shard_paths(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for p in &self.paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            match name {
                Some(pattern) if pattern.contains('*') => {
                    let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
                    let dir = dir.unwrap_or(Path::new("."));
                    let mut found = Vec::new();
                    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
                        let path = entry.map_err(|e| Error::io(dir, e))?.path();
                        let file = path.file_name().unwrap_or_default().to_string_lossy();
                        if path.is_file() && wildcard_match(&pattern, &file) {
                            found.push(path);
                        }
                    }
                    found.sort();
                    out.extend(found);
                }
                _ if p.is_dir() => {
                    let mut found = Vec::new();
                    collect_ds_files(p, &mut found)?;
                    found.sort();
                    out.extend(found);
                }
                _ if p.is_file() => out.push(p.clone()),
                _ => {
                    return Err(Error::Invalid(format!(
                        "source `{}`: {} does not exist",
                        self.name,
                        p.display()
                    )))
                }
            }
        }
        if out.is_empty() {
            return Err(Error::Invalid(format!(
                "source `{}`: its paths name no .ds shard",
                self.name
            )));
        }
        Ok(out)
    }
}

fn collect_ds_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect_ds_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "ds") {
            out.push(path);
        }
    }
    Ok(())
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// A source opened for sampling: its shards and document count.
#[derive(Debug)]
pub struct MixtureSource {
    pub(super) name: String,
    pub(super) weight: f64,
    shards: Vec<Shard>,
    /// `doc_starts[s]` = documents in shards before `s`; one extra entry = total.
    doc_starts: Vec<u64>,
}

impl MixtureSource {
    /// Opens every shard of `config`; a weight that is not a positive finite number,
    /// a source without shards and a source without documents are errors naming it.
    pub fn open(config: &SourceConfig) -> Result<Self> {
        if !(config.weight.is_finite() && config.weight > 0.0) {
            return Err(Error::Invalid(format!(
                "source `{}`: weight must be a positive number, got {}",
                config.name, config.weight
            )));
        }
        let shards = config
            .shard_paths()?
            .iter()
            .map(Shard::open)
            .collect::<Result<Vec<_>>>()?;
        Self::from_shards(&config.name, config.weight, shards)
    }

    /// A source over already opened shards (same checks as [`open`](Self::open)).
    pub fn from_shards(name: &str, weight: f64, shards: Vec<Shard>) -> Result<Self> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(Error::Invalid(format!(
                "source `{name}`: weight must be a positive number, got {weight}"
            )));
        }
        let mut doc_starts = vec![0u64];
        for s in &shards {
            doc_starts.push(doc_starts[doc_starts.len() - 1] + s.num_documents() as u64);
        }
        let total = doc_starts[shards.len()];
        if total == 0 {
            return Err(Error::Invalid(format!("source `{name}` has no documents")));
        }
        if shards.iter().all(|s| s.num_tokens() == 0) {
            return Err(Error::Invalid(format!("source `{name}` has no tokens")));
        }
        if total > u32::MAX as u64 {
            return Err(Error::Invalid(format!(
                "source `{name}` has {total} documents; split it (at most {} per source)",
                u32::MAX
            )));
        }
        Ok(Self {
            name: name.to_string(),
            weight,
            shards,
            doc_starts,
        })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Documents across all shards.
    pub fn num_documents(&self) -> u64 {
        self.doc_starts[self.shards.len()]
    }

    /// The source's shards, in sampling order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// (shard, document within shard) of the source-wide document `global`.
    pub(super) fn locate(&self, global: u64) -> (usize, usize) {
        let shard = self.doc_starts.partition_point(|&s| s <= global) - 1;
        (shard, (global - self.doc_starts[shard]) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard() {
        assert!(wildcard_match("*.ds", "a_00000.ds"));
        assert!(!wildcard_match("*.ds", "a.ds.index"));
        assert!(wildcard_match("web_*_shuffled.ds", "web_00001_shuffled.ds"));
        assert!(!wildcard_match("web_*.ds", "code_1.ds"));
        assert!(!wildcard_match("a*a", "a"));
    }
}
