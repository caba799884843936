//! Optimizer, schedules and clipping against PyTorch / transformers, plus resume and
//! config-error behaviour.
//!
//! Run: `cargo test -p smelt --test optim_golden`. The golden values in
//! `tests/fixtures/optim/` come from `scripts/make_optim_fixtures.py`
//! (`PY=$(../shared/bench/setup-python.sh); $PY scripts/make_optim_fixtures.py`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;
use smelt::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule, WsdDecay};
use smelt::{Model, ModelConfig, ModelType};

const CPU: Device = Device::Cpu;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/optim/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Deserialize)]
struct AdamWFixture {
    config: AdamWConfig,
    peak_lr: f64,
    max_norm: f64,
    lr_schedule: Schedule,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    decays: Vec<bool>,
    initial: Vec<Vec<f32>>,
    steps: Vec<AdamWStep>,
}

#[derive(Deserialize)]
struct AdamWStep {
    grads: Vec<Vec<f32>>,
    lr: f64,
    pre_clip_norm: f64,
    params_after: Vec<Vec<f32>>,
}

/// torch.optim.AdamW (param groups: wd 0.1 on two projections, 0 on a norm) +
/// clip_grad_norm_(1.0) + a cosine learning rate, 5 steps: every parameter after every
/// step within 1e-6, every pre-clip norm within 1e-6 relative, every lr within 1e-12.
#[test]
fn adamw_with_clipping_matches_torch() {
    let fx: AdamWFixture = serde_json::from_str(&fixture("adamw.json")).unwrap();
    let params: Vec<(String, Var)> = fx
        .names
        .iter()
        .zip(&fx.shapes)
        .zip(&fx.initial)
        .map(|((n, s), v)| {
            let t = Tensor::from_vec(v.clone(), s.as_slice(), &CPU).unwrap();
            (n.clone(), Var::from_tensor(&t).unwrap())
        })
        .collect();
    let mut opt = AdamW::new(&params, fx.config.clone()).unwrap();
    for (name, &decays) in fx.names.iter().zip(&fx.decays) {
        assert_eq!(opt.decays(name), decays, "{name}");
    }
    let total = fx.steps.len() as u64;
    fx.lr_schedule.validate(total).unwrap();
    let mut clipped_steps = 0;
    for (i, st) in fx.steps.iter().enumerate() {
        let lr = fx.peak_lr * fx.lr_schedule.factor(i as u64, total);
        assert!(
            (lr - st.lr).abs() < 1e-12,
            "step {i}: lr {lr} vs torch {}",
            st.lr
        );
        let mut grads: Vec<Tensor> = st
            .grads
            .iter()
            .zip(&fx.shapes)
            .map(|(g, s)| Tensor::from_vec(g.clone(), s.as_slice(), &CPU).unwrap())
            .collect();
        let norm = clip_grad_norm(&mut grads, fx.max_norm).unwrap();
        assert!(
            (norm - st.pre_clip_norm).abs() <= 1e-6 * st.pre_clip_norm,
            "step {i}: norm {norm} vs torch {}",
            st.pre_clip_norm
        );
        clipped_steps += usize::from(norm > fx.max_norm);
        opt.step(&params, &grads, st.lr).unwrap();
        assert_eq!(opt.steps_taken(), i as u64 + 1);
        for ((name, var), want) in params.iter().zip(&st.params_after) {
            let got = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (j, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6,
                    "step {i} {name}[{j}]: {g} vs torch {w}"
                );
            }
        }
    }
    // The fixture exercises both branches of the clipper.
    assert!(
        clipped_steps > 0 && clipped_steps < fx.steps.len(),
        "{clipped_steps}"
    );
}

#[derive(Deserialize)]
struct SchedulesFixture {
    total_steps: u64,
    cases: Vec<ScheduleCase>,
}

#[derive(Deserialize)]
struct ScheduleCase {
    name: String,
    schedule: Schedule,
    hf: Vec<f64>,
}

/// transformers' schedule lambdas, steps 0..=total, within 1e-9. smelt's warmup counts
/// the step being taken, so step s < warmup_steps is HF's value at s + 1; from warmup on
/// it is HF's value at s.
#[test]
fn schedules_match_transformers() {
    let fx: SchedulesFixture = serde_json::from_str(&fixture("schedules.json")).unwrap();
    assert!(fx.cases.len() >= 9);
    for case in &fx.cases {
        case.schedule.validate(fx.total_steps).unwrap();
        let warmup = case.schedule.warmup_steps();
        for step in 0..=fx.total_steps {
            let hf_step = if step < warmup { step + 1 } else { step };
            let want = case.hf[hf_step as usize];
            let got = case.schedule.factor(step, fx.total_steps);
            assert!(
                (got - want).abs() < 1e-9,
                "{} step {step}: {got} vs transformers {want}",
                case.name
            );
        }
    }
}

/// Deterministic pseudo-gradients: sin of (index, step, parameter number), shape of `var`.
fn fake_grad(var: &Var, step: u64, param: usize) -> Tensor {
    let n = var.elem_count();
    let data: Vec<f32> = (0..n)
        .map(|j| (0.37 * j as f32 + 1.3 * step as f32 + 0.71 * param as f32).sin() * 0.05)
        .collect();
    Tensor::from_vec(data, var.shape(), &CPU).unwrap()
}

fn run_steps(
    model: &Model,
    opt: &mut AdamW,
    schedule: &Schedule,
    steps: std::ops::Range<u64>,
    total: u64,
) {
    for step in steps {
        let mut grads: Vec<Tensor> = model
            .vars()
            .iter()
            .enumerate()
            .map(|(i, (_, v))| fake_grad(v, step, i))
            .collect();
        clip_grad_norm(&mut grads, 0.5).unwrap();
        opt.step(model.vars(), &grads, 1e-2 * schedule.factor(step, total))
            .unwrap();
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Uninterrupted 6 steps == 3 steps, save weights + optimizer.safetensors, fresh model
/// and optimizer restored from the files, 3 more steps: every weight and moment bit for
/// bit.
#[test]
fn resume_from_state_tensors_is_bit_identical() {
    let config = ModelConfig::tiny(ModelType::Qwen3, 64);
    let schedule = Schedule::Wsd {
        warmup_steps: 2,
        decay_fraction: 0.5,
        decay: WsdDecay::OneMinusSqrt,
        min_lr_ratio: 0.0,
    };
    let (k, n) = (3, 6);
    schedule.validate(n).unwrap();

    let full = Model::new_random(config.clone(), &CPU, 7).unwrap();
    let mut full_opt = AdamW::new(full.vars(), AdamWConfig::default()).unwrap();
    run_steps(&full, &mut full_opt, &schedule, 0..n, n);

    let first = Model::new_random(config.clone(), &CPU, 7).unwrap();
    let mut first_opt = AdamW::new(first.vars(), AdamWConfig::default()).unwrap();
    run_steps(&first, &mut first_opt, &schedule, 0..k, n);
    let dir = tempfile::tempdir().unwrap();
    let (weights, moments) = (
        dir.path().join("model.safetensors"),
        dir.path().join("optimizer.safetensors"),
    );
    let named: HashMap<String, Tensor> = first.named_tensors().into_iter().collect();
    candle_core::safetensors::save(&named, &weights).unwrap();
    let state: HashMap<String, Tensor> = first_opt.state_tensors().into_iter().collect();
    assert_eq!(state.len(), 2 * first.vars().len());
    candle_core::safetensors::save(&state, &moments).unwrap();
    let steps_taken = first_opt.steps_taken();
    drop((first, first_opt));

    let resumed = Model::from_tensors(
        config,
        candle_core::safetensors::load(&weights, &CPU).unwrap(),
        &CPU,
        &weights,
    )
    .unwrap();
    let mut resumed_opt = AdamW::new(resumed.vars(), AdamWConfig::default()).unwrap();
    resumed_opt
        .load_state(
            candle_core::safetensors::load(&moments, &CPU).unwrap(),
            steps_taken,
        )
        .unwrap();
    assert_eq!(resumed_opt.steps_taken(), k);
    run_steps(&resumed, &mut resumed_opt, &schedule, k..n, n);

    for ((name, a), (_, b)) in full.vars().iter().zip(resumed.vars()) {
        assert_eq!(
            bits(a.as_tensor()),
            bits(b.as_tensor()),
            "weights differ: {name}"
        );
    }
    for ((name, a), (_, b)) in full_opt
        .state_tensors()
        .iter()
        .zip(resumed_opt.state_tensors().iter())
    {
        assert_eq!(bits(a), bits(b), "moments differ: {name}");
    }
    // And the resumed run did move the weights (the comparison is not vacuous).
    let start = Model::new_random(ModelConfig::tiny(ModelType::Qwen3, 64), &CPU, 7).unwrap();
    assert_ne!(
        bits(start.vars()[0].1.as_tensor()),
        bits(full.vars()[0].1.as_tensor())
    );
}

/// SmolLM3 / nanotron default: decay only the matmul weights.
#[test]
fn no_decay_for_norms_biases_and_embeddings() {
    let qwen3 = Model::new_random(ModelConfig::tiny(ModelType::Qwen3, 64), &CPU, 1).unwrap();
    let qwen2 = Model::new_random(ModelConfig::tiny(ModelType::Qwen2, 64), &CPU, 1).unwrap();
    let mut names: Vec<String> = qwen3.vars().iter().map(|(n, _)| n.clone()).collect();
    names.extend(qwen2.vars().iter().map(|(n, _)| n.clone()));
    for must in [
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.embed_tokens.weight",
    ] {
        assert!(names.iter().any(|n| n == must), "tiny models lack {must}");
    }
    let opt = AdamW::new(qwen3.vars(), AdamWConfig::default()).unwrap();
    let no_decay = [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.self_attn.k_norm.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.self_attn.v_proj.bias",
    ];
    let decay = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ];
    for n in no_decay {
        assert!(!opt.decays(n), "{n} must not be decayed by default");
    }
    for n in decay {
        assert!(opt.decays(n), "{n} must be decayed");
    }
    // Every real name is classified one way or the other as the lists say.
    for n in &names {
        let expected = !(n.contains("norm")
            || n.ends_with(".bias")
            || n.contains("embed_tokens")
            || n == "lm_head.weight");
        assert_eq!(opt.decays(n), expected, "{n}");
    }
    // Opt-ins flip exactly their class; weight_decay 0 decays nothing.
    let all = AdamW::new(
        qwen3.vars(),
        AdamWConfig {
            decay_embeddings: true,
            decay_norms_and_biases: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(no_decay.iter().chain(&decay).all(|n| all.decays(n)));
    let emb = AdamW::new(
        qwen3.vars(),
        AdamWConfig {
            decay_embeddings: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(emb.decays("model.embed_tokens.weight") && !emb.decays("model.norm.weight"));
    let none = AdamW::new(
        qwen3.vars(),
        AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(decay.iter().all(|n| !none.decays(n)));
}

#[test]
fn load_state_errors_name_the_entry() {
    let model = Model::new_random(ModelConfig::tiny(ModelType::Llama, 64), &CPU, 3).unwrap();
    let mut opt = AdamW::new(model.vars(), AdamWConfig::default()).unwrap();
    let good: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    let key = "exp_avg_sq.model.layers.1.mlp.up_proj.weight";
    assert!(good.contains_key(key));

    let mut missing = good.clone();
    missing.remove(key);
    let err = opt.load_state(missing, 5).unwrap_err().to_string();
    assert!(err.contains(key) && err.contains("missing"), "{err}");

    let mut misshaped = good.clone();
    misshaped.insert(
        key.to_string(),
        Tensor::zeros((3, 3), DType::F32, &CPU).unwrap(),
    );
    let err = opt.load_state(misshaped, 5).unwrap_err().to_string();
    assert!(err.contains(key) && err.contains("[3, 3]"), "{err}");

    let mut extra = good.clone();
    extra.insert(
        "exp_avg.model.layers.9.mlp.up_proj.weight".into(),
        Tensor::zeros(3, DType::F32, &CPU).unwrap(),
    );
    let err = opt.load_state(extra, 5).unwrap_err().to_string();
    assert!(err.contains("model.layers.9.mlp.up_proj.weight"), "{err}");

    // Failed loads changed nothing.
    assert_eq!(opt.steps_taken(), 0);
    opt.load_state(good, 5).unwrap();
    assert_eq!(opt.steps_taken(), 5);
}

/// A bad call to `step` is an error and leaves weights and step count untouched.
#[test]
fn step_rejects_mismatched_gradients() {
    let model = Model::new_random(ModelConfig::tiny(ModelType::Llama, 64), &CPU, 3).unwrap();
    let mut opt = AdamW::new(model.vars(), AdamWConfig::default()).unwrap();
    let before = bits(model.vars()[1].1.as_tensor());
    let mut grads: Vec<Tensor> = model
        .vars()
        .iter()
        .enumerate()
        .map(|(i, (_, v))| fake_grad(v, 0, i))
        .collect();
    let last = grads.len() - 1;
    grads[last] = Tensor::zeros(7, DType::F32, &CPU).unwrap();
    let err = opt
        .step(model.vars(), &grads, 1e-3)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&model.vars()[last].0), "{err}");
    let err = opt
        .step(model.vars(), &grads[..2], 1e-3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gradients"), "{err}");
    assert_eq!(opt.steps_taken(), 0);
    assert_eq!(bits(model.vars()[1].1.as_tensor()), before);
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Recipe {
    schedule: Schedule,
    #[serde(default)]
    optimizer: AdamWConfig,
}

#[test]
fn schedule_toml_parses_and_bad_keys_are_named() {
    let ok: Recipe = toml::from_str(
        "[schedule]\nkind = \"wsd\"\nwarmup_steps = 2000\ndecay = \"1-sqrt\"\n\n[optimizer]\nbeta2 = 0.99\n",
    )
    .unwrap();
    assert_eq!(
        ok.schedule,
        Schedule::Wsd {
            warmup_steps: 2000,
            decay_fraction: 0.1,
            decay: WsdDecay::OneMinusSqrt,
            min_lr_ratio: 0.0
        }
    );
    assert_eq!(
        ok.optimizer,
        AdamWConfig {
            beta2: 0.99,
            ..Default::default()
        }
    );
    let cos: Recipe =
        toml::from_str("[schedule]\nkind = \"cosine\"\nmin_lr_ratio = 0.1\n").unwrap();
    assert_eq!(
        cos.schedule,
        Schedule::Cosine {
            warmup_steps: 0,
            min_lr_ratio: 0.1
        }
    );

    let err = toml::from_str::<Recipe>("[schedule]\nkind = \"wsd\"\ndecay_fractoin = 0.2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("decay_fractoin"), "{err}");
    let err = toml::from_str::<Recipe>("[schedule]\nkind = \"cosine\"\ndecay_fraction = 0.2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("decay_fraction"), "{err}");
    let err = toml::from_str::<Recipe>("[schedule]\nkind = \"wsd\"\ndecay = \"cubic\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cubic"), "{err}");
    let err = toml::from_str::<Recipe>("[schedule]\nkind = \"step\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("step"), "{err}");
    let err =
        toml::from_str::<Recipe>("[schedule]\nkind = \"constant\"\n[optimizer]\nbeta3 = 0.9\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("beta3"), "{err}");

    let bad: Recipe = toml::from_str("[schedule]\nkind = \"wsd\"\ndecay_fraction = 1.5\n").unwrap();
    let err = bad.schedule.validate(1000).unwrap_err().to_string();
    assert!(
        err.contains("schedule.decay_fraction") && err.contains("1.5"),
        "{err}"
    );

    let err = AdamWConfig {
        beta2: 1.0,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("beta2"), "{err}");
}
