//! Tokenizer compatibility between stages, checked while planning (before anything trains).
//!
//! The rule, in two parts:
//!
//! 1. **A stage keeps the previous stage's tokenizer.** Two tokenizers are the same when
//!    their token → id maps (added tokens included) are equal. A post-training stage
//!    given an explicit `model` (or a DPO `ref_model`) must carry the tokenizer that
//!    the stage before it writes; pretraining's `tokenizer.path` must equal the
//!    tokenizer of its `init_from` checkpoint when that checkpoint has one. A stage
//!    after one that trains a *new* BPE tokenizer (not yet on disk) cannot be given an
//!    existing model at all: nothing trained before this run can use that tokenizer.
//! 2. **A model can read its tokenizer's ids**: every id is below `vocab_size` of the
//!    model's `config.json` (larger embeddings, as Qwen pads them, are fine).
//!
//! Key decision: only what is on disk is read — `config.json` and `tokenizer.json`,
//! never weights — so planning stays cheap. A model named by a hub id or a `.gguf`
//! file is [`TokenizerFact::Unknown`] here and checked when its stage loads it.

use super::recipe::Stage;
use smelt::tokenizer::Tokenizer;
use smelt::{Error, ModelConfig, Result};
use smelt_pretrain::recipe::PretrainRecipe;
use std::collections::HashMap;
use std::path::Path;

/// What planning knows about the tokenizer a checkpoint carries (or a stage writes).
#[derive(Debug, Clone)]
pub enum TokenizerFact {
    /// A `tokenizer.json` on disk: where it was read and its token → id map.
    Known {
        /// The file it was read from, for error messages.
        source: String,
        /// Token → id, added tokens included.
        vocab: HashMap<String, u32>,
    },
    /// A BPE tokenizer that `stage` trains in this run and that does not exist yet.
    Fresh(Stage),
    /// Not readable before loading (a hub id or a `.gguf` file).
    Unknown,
}

impl TokenizerFact {
    /// Reads `dir/tokenizer.json`, or `None` when the folder has none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Ok(None);
        }
        let t = Tokenizer::from_file(&file)?;
        Ok(Some(TokenizerFact::Known {
            source: file.display().to_string(),
            vocab: t.inner().get_vocab(true),
        }))
    }

    /// Where it comes from, in words.
    pub fn describe(&self) -> String {
        match self {
            TokenizerFact::Known { source, .. } => source.clone(),
            TokenizerFact::Fresh(s) => format!("the BPE tokenizer `{}` trains", s.name()),
            TokenizerFact::Unknown => "a tokenizer not readable before loading".into(),
        }
    }
}

/// What planning knows about a model source: its `config.json` vocabulary and tokenizer.
#[derive(Debug, Clone)]
pub struct ModelFact {
    /// `vocab_size` of a local folder's `config.json`.
    pub vocab_size: Option<usize>,
    /// Its tokenizer.
    pub tokenizer: TokenizerFact,
}

impl ModelFact {
    /// Reads a local checkpoint folder's `config.json` and `tokenizer.json`; anything
    /// else (hub id, `.gguf`) is unknown. `key` names the recipe key in errors.
    /// `needs_tokenizer`: a folder without `tokenizer.json` is an error (post-training
    /// stages load their tokenizer from the model).
    pub fn read(source: &str, origin: &Path, key: &str, needs_tokenizer: bool) -> Result<Self> {
        let dir = Path::new(source);
        let config = dir.join("config.json");
        if !config.is_file() {
            return Ok(ModelFact {
                vocab_size: None,
                tokenizer: TokenizerFact::Unknown,
            });
        }
        let vocab_size = ModelConfig::from_file(&config)?.vocab_size;
        let tokenizer = match TokenizerFact::from_dir(dir)? {
            Some(t) => t,
            None if needs_tokenizer => {
                return Err(Error::config(
                    origin,
                    format!("`{key}` = {source}: the folder has no tokenizer.json"),
                ))
            }
            None => TokenizerFact::Unknown,
        };
        let fact = ModelFact {
            vocab_size: Some(vocab_size),
            tokenizer,
        };
        fact.check_fits(&fact.tokenizer, origin, key, source)?;
        Ok(fact)
    }

    /// Part 2 of the rule: every id of `tokenizer` indexes this model's embedding.
    pub fn check_fits(
        &self,
        tokenizer: &TokenizerFact,
        origin: &Path,
        key: &str,
        source: &str,
    ) -> Result<()> {
        let (Some(n), TokenizerFact::Known { source: t, vocab }) = (self.vocab_size, tokenizer)
        else {
            return Ok(());
        };
        match vocab.iter().max_by_key(|(_, id)| **id) {
            Some((token, &id)) if id as usize >= n => Err(Error::config(
                origin,
                format!(
                    "`{key}` = {source}: its config.json has vocab_size {n}, but the tokenizer \
                     {t} has token {token:?} with id {id}; the model cannot read that tokenizer's ids"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Part 1 of the rule: `model` (named by recipe key `key`) carries the tokenizer that
/// `expected` describes (`expected_from` names where that comes from, in words).
pub fn check_same(
    expected: &TokenizerFact,
    model: &TokenizerFact,
    expected_from: &str,
    origin: &Path,
    key: &str,
    source: &str,
) -> Result<()> {
    let bad = |why: String| {
        Err(Error::config(
            origin,
            format!(
                "`{key}` = {source} is incompatible with the tokenizer of {expected_from}: \
                 {why}; a stage must keep the tokenizer it is given"
            ),
        ))
    };
    match (expected, model) {
        (TokenizerFact::Fresh(s), TokenizerFact::Known { .. }) => bad(format!(
            "`{}` trains a new BPE tokenizer in this run, which no existing model was trained with",
            s.name()
        )),
        (
            TokenizerFact::Known {
                vocab: a,
                source: sa,
            },
            TokenizerFact::Known {
                vocab: b,
                source: sb,
            },
        ) => match first_difference(a, b) {
            None => Ok(()),
            Some(d) => bad(format!("{sb} differs from {sa}: {d}")),
        },
        _ => Ok(()),
    }
}

/// The first way two token → id maps differ, in words (`None` when equal).
fn first_difference(a: &HashMap<String, u32>, b: &HashMap<String, u32>) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("{} tokens vs {}", b.len(), a.len()));
    }
    let mut keys: Vec<&String> = a.keys().collect();
    keys.sort_by_key(|k| a[*k]); // report the lowest differing id, deterministically
    keys.into_iter().find_map(|k| match b.get(k) {
        Some(id) if *id == a[k] => None,
        Some(id) => Some(format!("token {k:?} has id {id}, expected {}", a[k])),
        None => Some(format!("token {k:?} (id {}) is missing", a[k])),
    })
}

/// The tokenizer a pretraining stage writes; checks `tokenizer.path` against `init_from`.
pub fn pretrain_tokenizer(r: &PretrainRecipe, origin: &Path) -> Result<TokenizerFact> {
    let given = match &r.tokenizer.path {
        Some(p) => TokenizerFact::from_dir(p)?.map(|t| (p.display().to_string(), t)),
        None => None,
    };
    if let Some(init) = &r.model.init_from {
        let key = "pretrain.model.init_from";
        let model = ModelFact::read(init, origin, key, r.tokenizer.path.is_none())?;
        let Some((path, t)) = given else {
            if let Some(p) = &r.tokenizer.path {
                // Continued pretraining loads `tokenizer.path` as given: it must exist.
                return Err(Error::config(
                    origin,
                    format!(
                        "`pretrain.tokenizer.path`: {} has no tokenizer.json",
                        p.display()
                    ),
                ));
            }
            return Ok(model.tokenizer);
        };
        let from = format!("`{key}` ({init})");
        check_same(
            &model.tokenizer,
            &t,
            &from,
            origin,
            "pretrain.tokenizer.path",
            &path,
        )?;
        model.check_fits(&t, origin, key, init)?;
        return Ok(t);
    }
    if let Some((_, t)) = given {
        return Ok(t);
    }
    if r.tokenizer.train.is_some() {
        // Trained once into `<run_dir>/tokenizer` and reused on a rerun.
        let trained = TokenizerFact::from_dir(&r.run_dir.join("tokenizer"))?;
        return Ok(trained.unwrap_or(TokenizerFact::Fresh(Stage::Pretrain)));
    }
    Ok(TokenizerFact::Unknown)
}
