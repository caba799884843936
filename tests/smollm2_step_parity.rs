//! A full SmolLM2-135M training step on the fused kernels equals the step on the
//! reference compositions, and PyTorch's.
//!
//! The batch is `reference.py train-step`'s token stream (splitmix64, seed 1234) at
//! batch 2 × seq 32; the loss is transformers' `labels=input_ids` (mean next-token
//! cross-entropy over all B·(T−1) positions). Fused (chunked `lm_head` +
//! cross-entropy, fused norms, rope, SwiGLU, attention) and reference (explicit
//! logits) models share the weights: the loss and every parameter gradient agree to
//! 1e-4 relative (`‖a − b‖ / ‖b‖` per tensor: the two paths run different GEMM
//! backends and summation orders through 30 layers, so single elements near zero
//! may differ more). The fixture `tests/fixtures/smollm2/step_parity.json`
//! (`scripts/make_step_parity_fixture.py`) holds PyTorch's step-0 loss and a few
//! gradient norms. Skipped with a message unless the GGUF is present (required when
//! `SMELT_REQUIRE_ASSETS=1`).

mod common;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use smelt::checkpoint::{self, LoadOptions};
use smelt::model::Kernels;
use smelt::Model;

fn fixture() -> Value {
    let path = format!(
        "{}/tests/fixtures/smollm2/step_parity.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// transformers' `labels=input_ids` loss: mean next-token NLL over every position.
fn mean_loss(model: &Model, ids: &Tensor) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let h = model.config().hidden_size;
    let hidden = model.forward_hidden(ids, None).unwrap(); // (B, T, H)
    let hidden = hidden
        .narrow(1, 0, t - 1)
        .unwrap()
        .reshape((b * (t - 1), h))
        .unwrap(); // (B·(T−1), H)
    let labels = ids
        .narrow(1, 1, t - 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::I64)
        .unwrap(); // (B·(T−1),)
    let ce = model.token_nll(&hidden, &labels).unwrap();
    assert_eq!(ce.count as usize, b * (t - 1));
    (ce.nll.sum_all().unwrap() / ce.count).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

#[test]
fn fused_training_step_equals_reference_and_pytorch() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let fx = fixture();
    let loaded = checkpoint::load(
        gguf.to_str().unwrap(),
        &Device::Cpu,
        &LoadOptions::default(),
    )
    .unwrap();
    let fused = loaded.model;
    assert_eq!(fused.kernels(), Kernels::Fused);
    let mut reference = fused.clone(); // shares the parameters
    reference.set_kernels(Kernels::Reference);

    let rows: Vec<Vec<u32>> = fx["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), fx["batch"].as_u64().unwrap() as usize);
    let ids = Tensor::new(rows, &Device::Cpu).unwrap(); // (B, T)

    let loss_f = mean_loss(&fused, &ids);
    let loss_r = mean_loss(&reference, &ids);
    let (lf, lr) = (
        loss_f.to_scalar::<f32>().unwrap() as f64,
        loss_r.to_scalar::<f32>().unwrap() as f64,
    );
    let torch = fx["loss"].as_f64().unwrap();
    assert!(rel(lf, lr) <= 1e-4, "fused loss {lf} vs reference {lr}");
    assert!(rel(lf, torch) <= 1e-4, "fused loss {lf} vs PyTorch {torch}");

    let (gf, gr) = (loss_f.backward().unwrap(), loss_r.backward().unwrap());
    let mut worst = (0.0f64, String::new());
    for (name, var) in fused.vars() {
        let a = gf
            .get(var)
            .unwrap_or_else(|| panic!("no fused gradient for {name}"));
        let b = gr
            .get(var)
            .unwrap_or_else(|| panic!("no reference gradient for {name}"));
        // relative error of the whole tensor: ‖a − b‖ / ‖b‖ (Frobenius)
        let norm = |t: &Tensor| -> f64 {
            let t = t.to_dtype(DType::F64).unwrap();
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
                .sqrt()
        };
        let d = norm(&(a - b).unwrap()) / norm(b).max(1e-30);
        if d > worst.0 {
            worst = (d, name.clone());
        }
        assert!(d <= 1e-4, "gradient of {name} differs by {d} (relative)");
    }
    eprintln!("worst gradient difference: {:.2e} ({})", worst.0, worst.1);

    let by_name: std::collections::HashMap<&str, &candle_core::Var> =
        fused.vars().iter().map(|(n, v)| (n.as_str(), v)).collect();
    for (name, want) in fx["grad_norms"].as_object().unwrap() {
        let var = by_name
            .get(name.as_str())
            .unwrap_or_else(|| panic!("fixture names unknown parameter {name}"));
        let g = gf.get(var).unwrap().to_dtype(DType::F64).unwrap();
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt();
        let want = want.as_f64().unwrap();
        assert!(
            rel(norm, want) <= 1e-3,
            "gradient norm of {name}: smelt {norm} vs PyTorch {want}"
        );
    }
}
