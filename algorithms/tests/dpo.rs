//! DPO through the real training loop on a tiny random Llama.
//!
//! Invariants, not golden numbers: the step-1 loss of every kind when policy =
//! reference (ln 2 for the sigmoid family), frozen vs precomputed reference, batch ×
//! accumulation, a reference that stays frozen, exact data resume, and config errors
//! that name the key. Per-kind hand values and gradients are unit tests in
//! `src/dpo/loss.rs`.

use candle_core::Device;
use serde_json::Value;
use smelt::data::PreferenceExample;
use smelt::model::{ModelConfig, ModelType};
use smelt::train::{BatchSource, TrainConfig, Trainer};
use smelt::Model;
use smelt_algorithms::dpo::{
    Dpo, DpoConfig, DpoLossType, PreferenceSource, Reference, TruncationMode,
};
use std::path::Path;

const VOCAB: usize = 64;
const MODEL_SEED: u64 = 7;
const DATA_SEED: u64 = 11;

/// Eight pairs of varied lengths (prompt 2–5, completions 1–6 tokens), deterministic.
fn examples() -> Vec<PreferenceExample> {
    let mut state = 12345u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    let mut seq = |n: u64| {
        (0..n)
            .map(|_| 1 + next(VOCAB as u64 - 1) as u32)
            .collect::<Vec<_>>()
    };
    (0..8u64)
        .map(|i| PreferenceExample {
            prompt_ids: seq(2 + (i * 3) % 4),
            chosen_ids: seq(1 + (i * 5) % 6),
            rejected_ids: seq(1 + (i * 7 + 2) % 6),
        })
        .collect()
}

fn policy() -> Model {
    Model::new_random(
        ModelConfig::tiny(ModelType::Llama, VOCAB),
        &Device::Cpu,
        MODEL_SEED,
    )
    .unwrap()
}

fn source(config: &DpoConfig, batch_size: usize) -> PreferenceSource {
    PreferenceSource::new(
        examples(),
        batch_size,
        DATA_SEED,
        config.collate_options(0),
        &Device::Cpu,
    )
    .unwrap()
}

/// One run's logged records and the algorithm at the end.
struct Run {
    records: Vec<Value>,
    dpo: Dpo,
    policy: Model,
}

impl Run {
    fn losses(&self) -> Vec<f64> {
        self.records
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    }
}

/// Trains `steps` steps of `batch × accum` pairs; `precompute` picks the reference kind.
fn run(config: DpoConfig, batch: usize, accum: u64, steps: u64, precompute: Option<usize>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let model = policy();
    let mut data = source(&config, batch);
    let reference = match precompute {
        Some(b) => Reference::precompute(&model, &data, b).unwrap(),
        None => Reference::frozen_copy(&model).unwrap(),
    };
    let train = TrainConfig {
        output_dir: dir.path().join("run"),
        max_steps: steps,
        grad_accumulation_steps: accum,
        learning_rate: 1e-3,
        progress: false,
        plots: false,
        save_every: 0,
        ..Default::default()
    };
    let mut trainer =
        Trainer::new(model, None, Dpo::new(config, reference).unwrap(), train).unwrap();
    let summary = trainer.fit(&mut data).unwrap();
    let text = std::fs::read_to_string(&summary.metrics_path).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len() as u64, steps);
    Run {
        records,
        dpo: trainer.algorithm().clone(),
        policy: trainer.model().clone(),
    }
}

fn with_loss(kinds: &[DpoLossType], weights: Option<Vec<f64>>) -> DpoConfig {
    DpoConfig {
        loss_type: kinds.to_vec(),
        loss_weights: weights,
        ..Default::default()
    }
}

/// With policy = reference every log-ratio is 0 at step 1, so with β = 0.1:
/// sigmoid −ln σ(0) = ln 2; robust (ε = 0.1) (0.9 + (−0.1)) ln 2 / 0.8 = ln 2; hinge
/// relu(1) = 1; ipo (0 − 1/(2β))² = 25; bco_pair 2 ln 2; sppo_hard 2 · 5² = 50;
/// nca_pair (1 + ½ + ½) ln 2 = 2 ln 2; apo_zero 1 − ½ + ½ = 1; apo_down ½ + 1 − ½ = 1;
/// a weighted list [sigmoid, hinge] × [1, 0.5] gives ln 2 + 0.5.
#[test]
fn first_step_loss_is_known_when_policy_is_reference() {
    use DpoLossType::*;
    let ln2 = std::f64::consts::LN_2;
    let cases: Vec<(DpoConfig, f64)> = vec![
        (with_loss(&[Sigmoid], None), ln2),
        (
            DpoConfig {
                label_smoothing: 0.1,
                ..with_loss(&[Robust], None)
            },
            ln2,
        ),
        (with_loss(&[Hinge], None), 1.0),
        (with_loss(&[Ipo], None), 25.0),
        (with_loss(&[BcoPair], None), 2.0 * ln2),
        (
            DpoConfig {
                bco_running_mean: true,
                ..with_loss(&[BcoPair], None)
            },
            2.0 * ln2,
        ),
        (with_loss(&[SppoHard], None), 50.0),
        (with_loss(&[NcaPair], None), 2.0 * ln2),
        (with_loss(&[ApoZero], None), 1.0),
        (with_loss(&[ApoDown], None), 1.0),
        (
            with_loss(&[Sigmoid, Hinge], Some(vec![1.0, 0.5])),
            ln2 + 0.5,
        ),
    ];
    for (config, want) in cases {
        let name = format!("{:?}", config.loss_terms());
        let r = run(config, 2, 2, 1, None);
        let first = &r.records[0];
        let loss = first["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() < 1e-6,
            "{name}: step-1 loss {loss}, want {want}"
        );
        for key in [
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
        ] {
            assert_eq!(first[key].as_f64(), Some(0.0), "{name}: {key} at step 1");
        }
        for key in ["logps/chosen", "logps/rejected"] {
            assert!(first[key].as_f64().unwrap() < 0.0, "{name}: {key}");
        }
        for key in ["logits/chosen", "logits/rejected"] {
            assert!(first[key].as_f64().unwrap().is_finite(), "{name}: {key}");
        }
    }
}

/// The two reference modes feed the loss the same numbers, so four steps of training
/// agree (the precompute pass uses a different batch size, hence other padding: equal
/// to float rounding only).
#[test]
fn frozen_and_precomputed_references_give_identical_losses() {
    let frozen = run(DpoConfig::default(), 2, 1, 4, None);
    let pre = run(
        DpoConfig {
            precompute_ref_log_probs: true,
            ..Default::default()
        },
        2,
        1,
        4,
        Some(3),
    );
    assert!(
        pre.dpo.reference().model().is_none(),
        "precomputed mode keeps no reference model"
    );
    for (step, (a, b)) in frozen.losses().iter().zip(pre.losses()).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6,
            "step {}: frozen {a} vs precomputed {b}",
            step + 1
        );
    }
    assert!(
        frozen.losses()[3] < frozen.losses()[0],
        "training should lower the loss: {:?}",
        frozen.losses()
    );
}

/// Batch 1 × accumulation 4 and batch 4 × accumulation 1 see the same pairs per step and
/// normalise by the same 4 pairs, so losses (and gradient norms) agree; the combination
/// sigmoid + RPO's sft term included.
#[test]
fn accumulation_invariance() {
    let config = DpoConfig {
        rpo_alpha: Some(0.5),
        ..Default::default()
    };
    let small = run(config.clone(), 1, 4, 3, None);
    let big = run(config, 4, 1, 3, None);
    for (s, b) in small.records.iter().zip(&big.records) {
        for key in ["loss", "grad_norm", "rewards/margins"] {
            let (x, y) = (s[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "step {}: {key} {x} (1×4) vs {y} (4×1)",
                s["step"]
            );
        }
    }
}

/// The frozen reference is a deep copy: after training its weights are bit-identical to
/// the initial policy's, while the policy's moved.
#[test]
fn reference_stays_frozen() {
    let r = run(DpoConfig::default(), 2, 1, 3, None);
    let initial = policy().named_tensors();
    let reference = r
        .dpo
        .reference()
        .model()
        .expect("frozen reference")
        .named_tensors();
    let trained = r.policy.named_tensors();
    let mut moved = 0.0f32;
    for (((name, init), (_, refw)), (_, pol)) in initial.iter().zip(&reference).zip(&trained) {
        let diff = |a: &candle_core::Tensor| {
            (a - init)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(diff(refw), 0.0, "reference tensor `{name}` changed");
        moved = moved.max(diff(pol));
    }
    assert!(moved > 1e-5, "policy did not move ({moved})");
    assert!(r
        .records
        .iter()
        .any(|rec| rec["rewards/margins"].as_f64().unwrap() != 0.0));
}

/// A cursor taken mid-epoch restores the exact continuation, across the epoch boundary;
/// every epoch visits every pair once, in a fresh order.
#[test]
fn source_cursor_restores_exactly() {
    let config = DpoConfig::default();
    let mut a = source(&config, 3);
    let ids = |s: &mut PreferenceSource| s.next_batch().unwrap().unwrap().example_ids;
    let mut epoch0: Vec<usize> = (0..3).flat_map(|_| ids(&mut a)).collect(); // 3 + 3 + 2
    let cursor = a.cursor();
    let after: Vec<Vec<usize>> = (0..4).map(|_| ids(&mut a)).collect();
    let mut b = source(&config, 3);
    b.restore(&cursor).unwrap();
    let resumed: Vec<Vec<usize>> = (0..4).map(|_| ids(&mut b)).collect();
    assert_eq!(after, resumed);
    let first_order = epoch0.clone();
    epoch0.sort();
    assert_eq!(epoch0, (0..8).collect::<Vec<_>>());
    let epoch1: Vec<usize> = after[..3].concat();
    assert_ne!(epoch1, first_order, "epochs should be reshuffled");
    let mut bad = cursor.clone();
    bad["seed"] = 99.into();
    assert!(b.restore(&bad).unwrap_err().to_string().contains("seed"));
}

/// keep_start drops a pair whose prompt fills `max_length`, as TRL does.
#[test]
fn keep_start_drops_prompts_that_fill_max_length() {
    let config = DpoConfig {
        max_length: Some(4),
        truncation_mode: TruncationMode::KeepStart,
        ..Default::default()
    };
    let s = source(&config, 2);
    let long = examples()
        .iter()
        .filter(|e| e.prompt_ids.len() >= 4)
        .count();
    assert!(long > 0, "fixture should contain a long prompt");
    assert_eq!(s.dropped(), long);
}

#[test]
fn config_reads_trl_names_and_rejects_unknown_values() {
    let path = Path::new("dpo.toml");
    let one = DpoConfig::from_toml_str("loss_type = \"apo_zero\"\nbeta = 0.5\n", path).unwrap();
    assert_eq!(one.loss_type, vec![DpoLossType::ApoZero]);
    assert_eq!(
        (one.beta, one.max_length, one.label_smoothing),
        (0.5, Some(1024), 0.0)
    );
    let many = DpoConfig::from_toml_str(
        "loss_type = [\"sigmoid\", \"bco_pair\", \"sft\"]\nloss_weights = [0.8, 0.2, 1.0]\n",
        path,
    )
    .unwrap();
    assert_eq!(many.loss_terms().len(), 3);

    let err = DpoConfig::from_toml_str("loss_type = \"nope\"\n", path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dpo.toml") && err.contains("loss_type") && err.contains("nope"),
        "{err}"
    );
    let err = DpoConfig::from_toml_str("betta = 0.1\n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("betta"), "{err}");
    let err = DpoConfig::from_toml_str(
        "loss_type = [\"sigmoid\", \"ipo\"]\nloss_weights = [1.0]\n",
        path,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("dpo.toml") && err.contains("loss_weights"),
        "{err}"
    );
    let err = DpoConfig::from_toml_str("label_smoothing = 0.5\n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label_smoothing"), "{err}");
    let err = DpoConfig::from_toml_str("beta = 0.0\n", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("beta"), "{err}");
}
