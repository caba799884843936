//! `run_pretrain`: the pretraining recipe carried out, each stage idempotent.
//!
//! Stages (each skipped when its output already exists, so a killed run restarted
//! with the same command picks up where it was): prepare the corpus → train or load
//! the tokenizer → tokenize into datatrove shards → build or load the model → train
//! with the one loop (which resumes from `latest` by itself). Validation loss on the
//! held-out shard is the evaluation hook.

use crate::bpe::train_bpe_from_inputs;
use crate::corpus::{prepare_corpus, read_inputs, InputSpec};
use crate::mixture::SourceConfig;
use crate::packing::{LoaderConfig, LoaderCursor, PretrainLoader};
use crate::recipe::PretrainRecipe;
use crate::shards::{ShardWriter, TokenSize};
use candle_core::{DType, Device};
use smelt::checkpoint::{self, LoadOptions};
use smelt::tokenizer::Tokenizer;
use smelt::train::{BatchSource, NextTokenLoss, TokenBatch, TrainSummary, Trainer};
use smelt::{Error, Model, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Pretraining batches from the packed loader, as the loop's [`BatchSource`].
pub struct PretrainSource {
    loader: PretrainLoader,
    micro_batch_size: usize,
    device: Device,
}

impl PretrainSource {
    /// Wraps a loader yielding `micro_batch_size` rows per micro-batch.
    pub fn new(loader: PretrainLoader, micro_batch_size: usize, device: Device) -> Self {
        PretrainSource {
            loader,
            micro_batch_size,
            device,
        }
    }
}

impl BatchSource<TokenBatch> for PretrainSource {
    fn next_batch(&mut self) -> Result<Option<TokenBatch>> {
        let batch = self.loader.next_batch(self.micro_batch_size)?;
        let labels: Vec<Vec<i64>> = batch
            .targets
            .iter()
            .map(|r| r.iter().map(|&t| t as i64).collect())
            .collect();
        TokenBatch::from_rows(
            &batch.input_ids,
            Some(&batch.position_ids),
            &labels,
            &self.device,
        )
        .map(Some)
    }
    fn cursor(&self) -> serde_json::Value {
        serde_json::to_value(self.loader.cursor()).unwrap_or(serde_json::Value::Null)
    }
    fn restore(&mut self, cursor: &serde_json::Value) -> Result<()> {
        let c: LoaderCursor = serde_json::from_value(cursor.clone()).map_err(|e| {
            Error::Invalid(format!(
                "data_cursor.json does not match this data pipeline: {e}"
            ))
        })?;
        self.loader.restore(&c)
    }
}

/// Runs the recipe end to end; returns the loop's summary.
pub fn run_pretrain(recipe: &PretrainRecipe) -> Result<TrainSummary> {
    let run = &recipe.run_dir;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    let env = smelt::dist::DistEnv::from_env()?;
    let device = smelt::dist::device_for(&recipe.train.device, &env)?;
    // Data parallel: rank 0 runs the stages below first; the others wait, then find the
    // stages' outputs on disk and only load them.
    let comm = smelt::dist::connect(&env, &recipe.train.distributed, &device)?;
    if let Some(c) = comm.as_ref().filter(|c| c.rank() != 0) {
        c.barrier()?;
    }

    if let Some(corpus) = &recipe.corpus {
        if !corpus.output.is_file() {
            let report = prepare_corpus(corpus.clone())?;
            eprintln!(
                "corpus: kept {} of {} documents ({:?} removed) -> {}",
                report.documents_kept,
                report.documents_read,
                report.removed_counts,
                corpus.output.display()
            );
        }
    }
    let (model, tokenizer) = model_and_tokenizer(recipe, &device)?;
    let sources = if recipe.data.sources.is_empty() {
        let corpus = recipe.corpus.as_ref().expect("checked by resolve");
        let shard = tokenize_to_shard(
            &[InputSpec::new(&corpus.output)],
            &tokenizer,
            &run.join("shards/train/000.ds"),
        )?;
        vec![SourceConfig {
            name: "corpus".into(),
            weight: 1.0,
            paths: vec![shard],
        }]
    } else {
        recipe.data.sources.clone()
    };
    let loader = PretrainLoader::new(LoaderConfig {
        sources,
        seq_len: recipe.data.seq_len,
        seed: recipe.data.seed,
    })?;
    let mut source = PretrainSource::new(loader, recipe.data.micro_batch_size, device.clone());

    let flops = smelt::telemetry::training_flops_per_token(model.config(), recipe.data.seq_len);
    let mut trainer = Trainer::new(
        model,
        Some(tokenizer.clone()),
        NextTokenLoss,
        recipe.train.clone(),
    )?;
    trainer.set_flops_per_token(flops);
    if !recipe.data.validation.is_empty() {
        let shard = tokenize_to_shard(
            &recipe.data.validation,
            &tokenizer,
            &run.join("shards/valid/000.ds"),
        )?;
        let config = LoaderConfig {
            sources: vec![SourceConfig {
                name: "validation".into(),
                weight: 1.0,
                paths: vec![shard],
            }],
            seq_len: recipe.data.seq_len,
            seed: 0,
        };
        let (batches, rows) = (recipe.data.validation_batches, recipe.data.micro_batch_size);
        trainer.set_evaluator(Box::new(move |model: &Model, _step| {
            validation_loss(model, &config, batches, rows)
        }));
    }
    if let Some(c) = comm {
        if c.rank() == 0 {
            c.barrier()?; // the prepared data is on disk for the other ranks
        }
        trainer.set_communicator(c);
    }
    trainer.fit(&mut source)
}

/// Mean next-token loss over the first `batches` micro-batches of the validation shard.
pub fn validation_loss(
    model: &Model,
    config: &LoaderConfig,
    batches: usize,
    rows: usize,
) -> Result<BTreeMap<String, f64>> {
    let mut source = PretrainSource::new(
        PretrainLoader::new(config.clone())?,
        rows,
        model.device().clone(),
    );
    let (mut sum, mut count) = (0.0, 0.0);
    for _ in 0..batches.max(1) {
        let Some(b) = source.next_batch()? else { break };
        let logits = model
            .forward(&b.input_ids, b.position_ids.as_ref())?
            .detach(); // (B, T, V)
        let (bs, t, v) = logits.dims3()?;
        let (loss, n, _) = smelt::ops::cross_entropy_sum(
            &logits.reshape((bs * t, v))?,
            &b.labels.reshape(bs * t)?,
        )?;
        sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += n;
    }
    Ok(BTreeMap::from([("loss".to_string(), sum / count.max(1.0))]))
}

/// The tokenizer (loaded, or trained on the corpus once) and the model (fresh or continued).
fn model_and_tokenizer(recipe: &PretrainRecipe, device: &Device) -> Result<(Model, Tokenizer)> {
    if let Some(source) = &recipe.model.init_from {
        let opts = LoadOptions {
            require_tokenizer: recipe.tokenizer.path.is_none(),
            ..Default::default()
        };
        let loaded = checkpoint::load(source, device, &opts)?;
        let tokenizer = match &recipe.tokenizer.path {
            Some(p) => Tokenizer::from_dir(p)?,
            None => loaded.tokenizer.expect("required above"),
        };
        return Ok((loaded.model, tokenizer));
    }
    let trained_dir = recipe.run_dir.join("tokenizer");
    let tokenizer = match (&recipe.tokenizer.path, &recipe.tokenizer.train) {
        (Some(p), _) if p.join("tokenizer.json").is_file() => Tokenizer::from_dir(p)?,
        (_, Some(_)) if trained_dir.join("tokenizer.json").is_file() => {
            Tokenizer::from_dir(&trained_dir)?
        }
        (_, Some(cfg)) => {
            let corpus = recipe.corpus.as_ref().expect("checked by resolve");
            let t = train_bpe_from_inputs(&[InputSpec::new(&corpus.output)], cfg, &trained_dir)?;
            eprintln!(
                "tokenizer: trained BPE with {} tokens -> {}",
                t.vocab_size(),
                trained_dir.display()
            );
            t
        }
        (Some(p), None) => {
            return Err(Error::io(
                p.join("tokenizer.json"),
                std::io::ErrorKind::NotFound.into(),
            ))
        }
        (None, None) => return Err(Error::Invalid("no tokenizer configured".into())),
    };
    let config = recipe.model.config(
        tokenizer.vocab_size(),
        tokenizer.bos_token_id(),
        tokenizer.eos_token_id(),
        &recipe.run_dir,
    )?;
    eprintln!(
        "model: {} with {} parameters",
        config.model_type.as_str(),
        config.num_parameters()
    );
    Ok((
        Model::new_random(config, device, recipe.model.init_seed)?,
        tokenizer,
    ))
}

/// Tokenizes every document of `inputs` into one shard at `path` (skipped when it exists).
pub fn tokenize_to_shard(
    inputs: &[InputSpec],
    tokenizer: &Tokenizer,
    path: &Path,
) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let eos = tokenizer.eos_token_id().ok_or_else(|| {
        Error::Invalid("the tokenizer has no EOS token; shards need one between documents".into())
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut writer =
        ShardWriter::create(path, TokenSize::for_vocab_size(tokenizer.vocab_size()), eos)?;
    for doc in read_inputs(inputs)? {
        let doc = doc?;
        writer.add_document(&tokenizer.encode(&doc.text, false)?)?;
    }
    if writer.num_documents() == 0 {
        return Err(Error::Invalid(format!(
            "{}: no documents to tokenize",
            path.display()
        )));
    }
    writer.finish()
}
