//! TRL parity on the real SmolLM2-135M-Instruct: smelt's SFT and DPO (sigmoid) replay the
//! runs `scripts/trl_parity.py` recorded with TRL 1.16 — same rows, same example order,
//! same hyper-parameters, no packing, f32 — and must agree step by step.
//!
//! The fixtures (`tests/fixtures/trl/{sft,dpo}.json` + the data JSONL) hold TRL's
//! tokenization of every example it fed, the order the HF Trainer's seeded sampler fed
//! them in, and per step the loss, learning rate and pre-clip gradient norm. The order is
//! replayed exactly (SFT: examples rearranged into it, no shuffle; DPO: a fixed-order
//! source over the same collation), so any loss difference is the model, the loss or the
//! optimizer, not the data. Regenerate with:
//!
//! ```text
//! PY=$(../shared/bench/setup-python.sh)
//! GGUF=$(../shared/scripts/fetch-smollm2.sh)
//! $PY scripts/trl_parity.py --gguf $GGUF
//! ```
//!
//! The model comes from `SMELT_SMOLLM2_GGUF` or the fetch script's cache; without it the
//! tests skip with a note (and fail under `SMELT_REQUIRE_ASSETS=1`).

#[path = "../../tests/common/mod.rs"]
mod common;

use serde_json::Value;
use smelt::data::PreferenceExample;
use smelt::recipe::parse_recipe;
use smelt::train::{BatchSource, Trainer};
use smelt_algorithms::dpo::{collate, CollateOptions, Dpo, PairBatch, Reference};
use smelt_algorithms::recipes::{load_model, pad_token_id, DpoRecipe, SftRecipe};
use smelt_algorithms::sft::{Sft, SftBatches};
use std::path::{Path, PathBuf};

/// Per-step loss tolerance of the acceptance criterion.
const LOSS_TOL: f64 = 1e-3;
/// Relative tolerance on the pre-clip gradient norm (a second, independent signal).
const GRAD_NORM_RTOL: f64 = 1e-2;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trl")
}

fn fixture(name: &str) -> Value {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The recorded example order: step by step, micro-batch by micro-batch.
fn recorded_order(fx: &Value) -> Vec<Vec<usize>> {
    fx["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["examples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as usize)
                .collect()
        })
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The recipe text both trainers share: TRL's run settings (everything else is the recipe default).
fn recipe_text(gguf: &Path, data: &str, section: &str, out: &Path) -> String {
    format!(
        "model = {gguf:?}\n[data]\ntrain_files = [{data:?}]\n{section}\n\
         [train]\noutput_dir = {out:?}\nmax_steps = 5\nprogress = false\nplots = false\nsave_every = 0\n",
        data = fixture_dir().join(data),
    )
}

/// (loss, lr, grad_norm) per step from the run's `metrics.jsonl`.
fn logged_steps(run: &Path) -> Vec<(f64, f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| {
            (
                r["loss"].as_f64().unwrap(),
                r["lr"].as_f64().unwrap(),
                r["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Compares smelt's logged steps with TRL's, printing both side by side.
fn assert_matches_trl(what: &str, fx: &Value, got: &[(f64, f64, f64)]) {
    let want = fx["steps"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: steps logged");
    for (s, ((loss, lr, norm), w)) in got.iter().zip(want).enumerate() {
        let (tl, tlr, tn) = (
            w["loss"].as_f64().unwrap(),
            w["learning_rate"].as_f64().unwrap(),
            w["grad_norm"].as_f64().unwrap(),
        );
        eprintln!(
            "{what} step {}: loss smelt {loss:.6} trl {tl:.6} (Δ {:+.2e}); grad_norm smelt {norm:.4} trl {tn:.4}; lr {lr:.3e}",
            s + 1,
            loss - tl
        );
        assert!(
            (loss - tl).abs() <= LOSS_TOL,
            "{what} step {}: loss {loss} vs TRL {tl}",
            s + 1
        );
        assert!(
            (lr - tlr).abs() <= 1e-12,
            "{what} step {}: lr {lr} vs TRL {tlr}",
            s + 1
        );
        assert!(
            (norm - tn).abs() <= GRAD_NORM_RTOL * tn,
            "{what} step {}: grad norm {norm} vs TRL {tn}",
            s + 1
        );
    }
}

/// SFT, conversational rows, full-sequence loss: tokens equal TRL's, and 5 steps of
/// batch 4 give TRL's losses within 1e-3 (TRL normalises by the trained tokens of the
/// step, `num_items_in_batch` over `labels[..., 1:]`, as smelt's loop does).
#[test]
fn sft_matches_trl_for_five_steps() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let fx = fixture("sft.json");
    let out = tempfile::tempdir().unwrap();
    let section = "[sft]\nmax_length = 256\nper_device_train_batch_size = 4\nshuffle = false";
    let recipe: SftRecipe = parse_recipe(
        &recipe_text(&gguf, "sft.jsonl", section, out.path()),
        Path::new("sft.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(
        recipe.train.learning_rate,
        fx["config"]["learning_rate"].as_f64().unwrap()
    );

    let (model, tokenizer) = load_model(gguf.to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    let examples = recipe.examples(&tokenizer).unwrap();
    for (i, want) in fx["input_ids"].as_object().unwrap() {
        let ex = &examples[i.parse::<usize>().unwrap()];
        assert_eq!(
            ex.input_ids,
            ids(want),
            "example {i}: tokens differ from TRL's"
        );
        assert!(
            ex.loss_mask.iter().all(|&m| m == 1),
            "example {i}: full-sequence loss"
        );
    }
    let ordered = recorded_order(&fx)
        .concat()
        .into_iter()
        .map(|i| examples[i].clone())
        .collect();
    let pad = pad_token_id(&tokenizer).unwrap();
    assert_eq!(pad as u64, fx["pad_token_id"].as_u64().unwrap());
    let mut source = SftBatches::new(ordered, &recipe.sft, pad, &candle_core::Device::Cpu).unwrap();
    let mut trainer = Trainer::new(model, None, Sft::new(), recipe.train.clone()).unwrap();
    trainer.fit(&mut source).unwrap();
    assert_matches_trl("sft", &fx, &logged_steps(out.path()));
}

/// Micro-batches of preference pairs in a fixed order (TRL's recorded one).
struct FixedOrder {
    examples: Vec<PreferenceExample>,
    batches: Vec<Vec<usize>>,
    next: usize,
    options: CollateOptions,
}

impl BatchSource<PairBatch> for FixedOrder {
    fn next_batch(&mut self) -> smelt::Result<Option<PairBatch>> {
        let Some(batch) = self.batches.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let picked: Vec<_> = batch.iter().map(|&i| (i, &self.examples[i])).collect();
        collate(&picked, &self.options, &candle_core::Device::Cpu).map(Some)
    }
    fn cursor(&self) -> Value {
        self.next.into()
    }
    fn restore(&mut self, cursor: &Value) -> smelt::Result<()> {
        self.next = cursor.as_u64().unwrap_or(0) as usize;
        Ok(())
    }
}

/// DPO (sigmoid, β 0.1, frozen-copy reference): TRL's prompt/chosen/rejected split, then
/// 5 steps of 4 pairs give TRL's losses within 1e-3 (step 1 is ln 2: policy = reference).
#[test]
fn dpo_sigmoid_matches_trl_for_five_steps() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let fx = fixture("dpo.json");
    let out = tempfile::tempdir().unwrap();
    let section = "per_device_train_batch_size = 4\n[dpo]\nmax_length = 256\nbeta = 0.1\nloss_type = \"sigmoid\"";
    let recipe: DpoRecipe = parse_recipe(
        &recipe_text(&gguf, "dpo.jsonl", section, out.path()),
        Path::new("dpo.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(
        recipe.train.learning_rate,
        fx["config"]["learning_rate"].as_f64().unwrap()
    );

    let (model, tokenizer) = load_model(gguf.to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    let examples = recipe.examples(&tokenizer).unwrap();
    for (i, want) in fx["examples"].as_object().unwrap() {
        let ex = &examples[i.parse::<usize>().unwrap()];
        assert_eq!(
            ex.prompt_ids,
            ids(&want["prompt_ids"]),
            "example {i}: prompt"
        );
        assert_eq!(
            ex.chosen_ids,
            ids(&want["chosen_ids"]),
            "example {i}: chosen"
        );
        assert_eq!(
            ex.rejected_ids,
            ids(&want["rejected_ids"]),
            "example {i}: rejected"
        );
    }
    let options = recipe
        .dpo
        .collate_options(pad_token_id(&tokenizer).unwrap());
    let mut source = FixedOrder {
        examples,
        batches: recorded_order(&fx),
        next: 0,
        options,
    };
    let reference = Reference::frozen_copy(&model).unwrap();
    let dpo = Dpo::new(recipe.dpo.clone(), reference).unwrap();
    let mut trainer = Trainer::new(model, None, dpo, recipe.train.clone()).unwrap();
    trainer.fit(&mut source).unwrap();
    let got = logged_steps(out.path());
    assert!(
        (got[0].0 - std::f64::consts::LN_2).abs() < 1e-6,
        "step 1 is ln 2: {}",
        got[0].0
    );
    assert_matches_trl("dpo", &fx, &got);
}
