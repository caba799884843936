//! smelt's model against transformers, for every supported architecture, on tiny random models.
//!
//!     cargo test -p smelt --test tiny_transformers_parity
//!
//! [`tiny_models`] builds one small deterministic model per case (llama tied, llama untied
//! with every bias and llama3 rope scaling, smollm3 with alternating NoPE layers, qwen2 with
//! q/k/v bias, qwen3 with q/k norm). Every norm weight and bias is perturbed away from its
//! init (ones / zeros) so that they are actually exercised, and the configs use a
//! non-default `rope_theta` and `rms_norm_eps` so that a defaults bug shows up.
//!
//! The expected logits are `tests/fixtures/tiny_models/logits.json`: transformers loading the
//! folders smelt saves (so this also checks that transformers loads them) and running them
//! in eval mode with eager attention. Regenerate it, from the repository root, with:
//!
//!     PY=$(../shared/bench/setup-python.sh)
//!     SMELT_TINY_EXPORT_DIR=/tmp/tiny cargo test -p smelt --test tiny_transformers_parity -- --ignored export_tiny_models
//!     $PY scripts/tiny_models_transformers.py /tmp/tiny tests/fixtures/tiny_models/logits.json

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;
use smelt::model::RopeScaling;
use smelt::{Model, ModelConfig, ModelType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const VOCAB: usize = 300;
const ROPE_THETA: f64 = 25_000.0;
const RMS_NORM_EPS: f64 = 1e-4;
/// Largest accepted |smelt - transformers| on any logit (f32 on both sides).
const TOL: f32 = 1e-4;

const REGENERATE: &str = "PY=$(../shared/bench/setup-python.sh) && \
SMELT_TINY_EXPORT_DIR=/tmp/tiny cargo test -p smelt --test tiny_transformers_parity -- --ignored export_tiny_models && \
$PY scripts/tiny_models_transformers.py /tmp/tiny tests/fixtures/tiny_models/logits.json";

/// The base config shared by every case: `ModelConfig::tiny` with non-default rope base and eps.
fn base(t: ModelType) -> ModelConfig {
    let mut c = ModelConfig::tiny(t, VOCAB);
    c.rope_theta = ROPE_THETA;
    c.rms_norm_eps = RMS_NORM_EPS;
    c
}

/// (name, config, seed) of every case, in fixture order.
fn cases() -> Vec<(&'static str, ModelConfig, u64)> {
    let llama = base(ModelType::Llama);
    assert!(llama.tie_word_embeddings);

    let mut llama_untied = base(ModelType::Llama);
    llama_untied.tie_word_embeddings = false;
    // `attention_bias` (q/k/v/o) and `mlp_bias` in HF terms.
    llama_untied.qkv_bias = true;
    llama_untied.o_bias = true;
    llama_untied.mlp_bias = true;
    // Small `original_max_position_embeddings` so that every branch of the llama3 rule
    // (scaled, smoothed, untouched) is taken at head_dim 16.
    llama_untied.rope_scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    };

    let mut smollm3 = base(ModelType::SmolLm3);
    smollm3.num_hidden_layers = 4;
    // `no_rope_layers = [1, 0, 1, 0]`: NoPE on layers 1 and 3.
    smollm3.use_rope = vec![true, false, true, false];

    let qwen2 = base(ModelType::Qwen2);
    assert!(qwen2.qkv_bias && !qwen2.o_bias);
    let qwen3 = base(ModelType::Qwen3);
    assert!(qwen3.qk_norm);

    vec![
        ("llama", llama, 11),
        ("llama_untied_bias_llama3rope", llama_untied, 12),
        ("smollm3_nope", smollm3, 13),
        ("qwen2", qwen2, 14),
        ("qwen3", qwen3, 15),
    ]
}

/// `new_random(config, seed)`, then every norm weight set to `1 + 0.1 sin(..)`, every bias
/// to `0.05 cos(..)` (both varying per element and per tensor), and q/k projections scaled
/// up 4x so attention is far from uniform (rope and masking then move the logits).
fn build(config: ModelConfig, seed: u64) -> Model {
    let dev = Device::Cpu;
    let random = Model::new_random(config.clone(), &dev, seed).unwrap();
    let mut tensors = HashMap::new();
    for (ti, (name, t)) in random.named_tensors().into_iter().enumerate() {
        let n = t.elem_count();
        let phase = ti as f32 * 0.37 + seed as f32;
        let new = if name.ends_with("norm.weight") {
            let v: Vec<f32> = (0..n)
                .map(|k| 1.0 + 0.1 * (k as f32 * 0.9 + phase).sin())
                .collect();
            Tensor::from_vec(v, t.dims(), &dev).unwrap()
        } else if name.ends_with(".bias") {
            let v: Vec<f32> = (0..n)
                .map(|k| 0.05 * (k as f32 * 0.7 + phase).cos())
                .collect();
            Tensor::from_vec(v, t.dims(), &dev).unwrap()
        } else if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            (t * 4.0).unwrap()
        } else {
            t
        };
        tensors.insert(name, new);
    }
    Model::from_tensors(config, tensors, &dev, Path::new("<tiny parity>")).unwrap()
}

/// Every case as (name, model).
fn tiny_models() -> Vec<(&'static str, Model)> {
    cases()
        .into_iter()
        .map(|(name, c, seed)| (name, build(c, seed)))
        .collect()
}

/// (sum, sum of squares) of every parameter, in f64: the fixture records the same numbers
/// for the weights transformers loaded, so a stale fixture is told apart from a forward bug.
fn checksum(model: &Model) -> (f64, f64) {
    let (mut s, mut s2) = (0f64, 0f64);
    for (_, t) in model.named_tensors() {
        for x in t.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            s += x as f64;
            s2 += (x as f64) * (x as f64);
        }
    }
    (s, s2)
}

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_models/logits.json")
}

fn fixture() -> Json {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); make it, from the repository root, with:\n  {REGENERATE}",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON ({e})", path.display()))
}

fn fixture_model<'a>(fx: &'a Json, name: &str) -> &'a Json {
    fx["models"]
        .as_array()
        .expect("fixture: `models` list")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| {
            panic!("fixture has no model `{name}`; regenerate with:\n  {REGENERATE}")
        })
}

fn ids_2d(v: &Json) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("list of rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect()
        })
        .collect()
}

fn tensor_2d(rows: &[Vec<u32>]) -> Tensor {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

/// Logits `[row][token][vocab]` as stored in the fixture.
fn logits_3d(v: &Json) -> Vec<Vec<Vec<f32>>> {
    v.as_array()
        .expect("logits rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("logits row")
                .iter()
                .map(|t| {
                    t.as_array()
                        .expect("logits vector")
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Max |a - b| over one (T, V) row of logits; panics on a shape mismatch.
fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "token count");
    let mut m = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "vocab size");
        for (p, q) in x.iter().zip(y) {
            let d = (p - q).abs();
            m = if d.is_nan() { f32::INFINITY } else { m.max(d) };
        }
    }
    m
}

fn smelt_logits(
    model: &Model,
    ids: &[Vec<u32>],
    positions: Option<&[Vec<u32>]>,
) -> Vec<Vec<Vec<f32>>> {
    let pos = positions.map(tensor_2d);
    let logits = model.forward(&tensor_2d(ids), pos.as_ref()).unwrap();
    logits.to_dtype(DType::F32).unwrap().to_vec3().unwrap()
}

/// Checks the fixture was made from these very weights and config.
fn check_fixture_is_current(name: &str, model: &Model, fm: &Json) {
    let c = model.config();
    let hf = &fm["config"];
    assert_eq!(
        hf["model_type"],
        c.model_type.as_str(),
        "{name}: model_type"
    );
    assert_eq!(
        hf["num_hidden_layers"], c.num_hidden_layers,
        "{name}: num_hidden_layers"
    );
    assert_eq!(hf["vocab_size"], c.vocab_size, "{name}: vocab_size");
    assert_eq!(
        hf["tie_word_embeddings"], c.tie_word_embeddings,
        "{name}: tie_word_embeddings"
    );
    // What transformers resolved from smelt's config.json (not its class defaults).
    assert_eq!(hf["rms_norm_eps"], c.rms_norm_eps, "{name}: rms_norm_eps");
    assert_eq!(
        hf["rope_parameters"]["rope_theta"], c.rope_theta,
        "{name}: rope_theta"
    );
    assert_eq!(
        hf["pad_token_id"],
        serde_json::json!(c.pad_token_id),
        "{name}: pad_token_id"
    );
    if c.model_type == ModelType::SmolLm3 {
        let layers: Vec<u8> = c.use_rope.iter().map(|&r| r as u8).collect();
        assert_eq!(
            hf["no_rope_layers"],
            serde_json::json!(layers),
            "{name}: no_rope_layers"
        );
    }
    let (s, s2) = checksum(model);
    let (fs, fs2) = (
        fm["param_sum"].as_f64().unwrap(),
        fm["param_sum_sq"].as_f64().unwrap(),
    );
    assert!(
        (s - fs).abs() < 1e-3 * (1.0 + fs.abs()) && (s2 - fs2).abs() < 1e-6 * (1.0 + fs2.abs()),
        "{name}: the fixture was made from other weights (sum {fs} / sum_sq {fs2}, smelt has {s} / {s2}): \
         the tiny models changed; regenerate with:\n  {REGENERATE}"
    );
}

#[test]
fn fixture_lists_the_same_models() {
    let fx = fixture();
    let in_fixture: Vec<&str> = fx["models"]
        .as_array()
        .expect("fixture: `models` list")
        .iter()
        .map(|m| m["name"].as_str().expect("model name"))
        .collect();
    let in_rust: Vec<&str> = cases().iter().map(|c| c.0).collect();
    assert_eq!(
        in_fixture, in_rust,
        "model lists differ; regenerate the fixture with:\n  {REGENERATE}"
    );
    // Every supported architecture is covered.
    for t in ModelType::ALL {
        assert!(
            cases().iter().any(|c| c.1.model_type == t),
            "no case for {t:?}"
        );
    }
}

#[test]
fn logits_match_transformers() {
    let fx = fixture();
    let mut report = Vec::new();
    let mut failed = false;
    for (name, model) in tiny_models() {
        let fm = fixture_model(&fx, name);
        check_fixture_is_current(name, &model, fm);
        let ids = ids_2d(&fm["input_ids"]);
        let want = logits_3d(&fm["logits"]);
        let got = smelt_logits(&model, &ids, None);
        assert_eq!(got.len(), want.len(), "{name}: batch size");
        let diff = got
            .iter()
            .zip(&want)
            .map(|(g, w)| max_abs(g, w))
            .fold(0f32, f32::max);
        failed |= !(diff <= TOL);
        report.push(format!("{name:32} max|smelt - transformers| = {diff:.3e}"));
    }
    let report = report.join("\n");
    println!("{report}");
    assert!(
        !failed,
        "logits differ from transformers by more than {TOL:e}:\n{report}"
    );
}

#[test]
fn packed_rows_match_documents_run_separately() {
    let fx = fixture();
    let packed = &fx["packed"];
    let ids = ids_2d(&packed["input_ids"]);
    let positions = ids_2d(&packed["position_ids"]);
    // Each document is a prefix `(row, len)` of the batch of `input_ids`; its reference
    // logits are that prefix of the recorded logits (causal attention), which the script
    // checks equal transformers' own packed call and the documents run one by one.
    let docs: Vec<(usize, usize)> = packed["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| {
            (
                d[0].as_u64().unwrap() as usize,
                d[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let mut report = Vec::new();
    let mut failed = false;
    for (name, model) in tiny_models() {
        let fm = fixture_model(&fx, name);
        check_fixture_is_current(name, &model, fm);
        let batch_ids = ids_2d(&fm["input_ids"]);
        let want_rows = logits_3d(&fm["logits"]);
        let mut want = Vec::new();
        let mut want_ids = Vec::new();
        for &(row, len) in &docs {
            want.extend_from_slice(&want_rows[row][..len]);
            want_ids.extend_from_slice(&batch_ids[row][..len]);
        }
        assert_eq!(
            ids[0], want_ids,
            "{name}: packed ids are not the listed documents"
        );
        let got = smelt_logits(&model, &ids, Some(&positions));
        let diff = max_abs(&got[0], &want);
        failed |= !(diff <= TOL);
        report.push(format!(
            "{name:32} packed max|smelt - transformers| = {diff:.3e}"
        ));
    }
    let report = report.join("\n");
    println!("{report}");
    assert!(
        !failed,
        "packed logits differ by more than {TOL:e}:\n{report}"
    );
}

/// Writes every tiny model as an HF folder `$SMELT_TINY_EXPORT_DIR/<name>/`, for
/// `scripts/tiny_models_transformers.py`.
#[test]
#[ignore]
fn export_tiny_models() {
    let dir = std::env::var_os("SMELT_TINY_EXPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "set SMELT_TINY_EXPORT_DIR to the folder to write; full command:\n  {REGENERATE}"
            )
        });
    std::fs::create_dir_all(&dir).unwrap();
    for (name, model) in tiny_models() {
        let out = dir.join(name);
        smelt::checkpoint::save_pretrained(&model, None, &out).unwrap();
        let (s, s2) = checksum(&model);
        println!("wrote {} (param sum {s}, sum_sq {s2})", out.display());
    }
}
