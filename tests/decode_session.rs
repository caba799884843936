//! `DecodeSession` (the fast CPU decode path) against `Model::decode_left_padded`
//! (the candle-op path held equal to transformers): the same logits to float
//! rounding on every architecture variant, with left padding, grouped-query heads,
//! biases, q/k norms and NoPE layers, on both the skinny-GEMM (≤ 16 rows) and the
//! GEMM-backend (prompt) paths; its errors; and greedy tokens on the real SmolLM2.

mod common;

use candle_core::{Device, Tensor, D};
use smelt::{checkpoint, DecodeSession, KvCache, Model, ModelConfig, ModelType};

const VOCAB: usize = 101;

fn tiny(t: ModelType, seed: u64, tweak: impl Fn(&mut ModelConfig)) -> Model {
    let mut config = ModelConfig::tiny(t, VOCAB);
    if t == ModelType::SmolLm3 {
        config.num_hidden_layers = 4;
        config.use_rope = vec![true, false, true, false];
    }
    tweak(&mut config);
    Model::new_random(config, &Device::Cpu, seed).unwrap()
}

fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 37 + salt * 13 + 3) % VOCAB as u32)
        .collect()
}

/// Max |a − b| over max |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Prompt of `t` tokens per row, then `steps` single tokens: the largest relative
/// difference between the session's logits and the model's over every call.
fn compare(model: &Model, left_pad: &[usize], t: usize, steps: usize) -> f32 {
    let b = left_pad.len();
    let capacity = t + steps;
    let mut session = DecodeSession::left_padded(model, left_pad.to_vec(), capacity).unwrap();
    let mut cache = KvCache::with_capacity(model.config().num_hidden_layers, capacity);
    let mut input = ids(b * t, 1);
    let mut width = t;
    let mut worst = 0f32;
    for call in 0..=steps {
        let got = session.extend(&input, width).unwrap().to_vec();
        let tensor = Tensor::from_vec(input.clone(), (b, width), &Device::Cpu).unwrap();
        let want: Vec<f32> = model
            .decode_left_padded_last(&tensor, left_pad, &mut cache)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        worst = worst.max(rel_diff(&got, &want));
        input = ids(b, 7 + call as u32);
        width = 1;
    }
    assert!((0..b).all(|r| session.row_len(r) == t + steps));
    worst
}

#[test]
fn logits_equal_the_model_on_every_architecture() {
    for t in [
        ModelType::Llama,
        ModelType::SmolLm3,
        ModelType::Qwen2,
        ModelType::Qwen3,
    ] {
        let model = tiny(t, 3, |_| {});
        // prompt of 18 rows: the GEMM backend; of 3 rows: the skinny kernel
        for (pad, t, steps) in [(&[0, 2, 1][..], 6, 5), (&[0][..], 3, 4)] {
            let d = compare(&model, pad, t, steps);
            assert!(
                d <= 1e-5,
                "{t:?} pad {pad:?}: logits differ by {d} (relative)"
            );
        }
    }
}

#[test]
fn logits_equal_the_model_with_biases_odd_widths_and_gqa_ratios() {
    for (heads, kv) in [(3, 3), (6, 2), (8, 2)] {
        let model = tiny(ModelType::Llama, 5, |c| {
            c.num_attention_heads = heads;
            c.num_key_value_heads = kv;
            c.head_dim = 10;
            c.hidden_size = 30; // not a multiple of the kernel's 16 lanes
            c.intermediate_size = 70;
            c.o_bias = true;
            c.mlp_bias = true;
            c.qkv_bias = true;
        });
        let d = compare(&model, &[1, 0], 4, 3);
        assert!(
            d <= 1e-5,
            "GQA {heads}/{kv}: logits differ by {d} (relative)"
        );
    }
    // more rows than the skinny kernel takes: every step on the GEMM backend
    let model = tiny(ModelType::Qwen2, 9, |_| {});
    let d = compare(&model, &[0; 17], 2, 2);
    assert!(d <= 1e-5, "17 rows: logits differ by {d} (relative)");
}

/// Logits of `prompt` then `steps` decoded alone on the model path, one per call.
fn alone(model: &Model, prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::with_capacity(model.config().num_hidden_layers, 64);
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for next in std::iter::once(None).chain(steps.iter().map(Some)) {
        if let Some(&id) = next {
            input = vec![id];
        }
        let t = Tensor::from_vec(input.clone(), (1, input.len()), &Device::Cpu).unwrap();
        let l = model.decode_last(&t, &mut cache).unwrap();
        out.push(l.flatten_all().unwrap().to_vec1().unwrap());
    }
    out
}

#[test]
fn slots_at_different_lengths_step_together_and_are_reused() {
    let model = tiny(ModelType::Qwen3, 4, |_| {});
    let vocab = model.config().vocab_size;
    let mut s = DecodeSession::new(&model, 3, 16).unwrap();
    let (p0, p1) = (ids(5, 1), ids(2, 2));
    let want0 = alone(&model, &p0, &[7, 8, 9]);
    let want1 = alone(&model, &p1, &[4, 5, 6]);
    // prefill two slots separately (slot 2 stays empty), then step both together
    let got = s.extend_rows(&[2], &p0, 5).unwrap().to_vec();
    assert!(rel_diff(&got, &want0[0]) <= 1e-5);
    let got = s.extend_rows(&[0], &p1, 2).unwrap().to_vec();
    assert!(rel_diff(&got, &want1[0]) <= 1e-5);
    for step in 0..3 {
        let got = s
            .extend_rows(&[0, 2], &[[4, 5, 6][step], [7, 8, 9][step]], 1)
            .unwrap()
            .to_vec();
        assert!(
            rel_diff(&got[..vocab], &want1[step + 1]) <= 1e-5,
            "slot 0 step {step}"
        );
        assert!(
            rel_diff(&got[vocab..], &want0[step + 1]) <= 1e-5,
            "slot 2 step {step}"
        );
    }
    assert_eq!((s.row_len(0), s.row_len(1), s.row_len(2)), (5, 0, 8));
    // a copied slot continues like its source; a reset slot starts afresh
    s.copy_row(2, 1).unwrap();
    let a = s.extend_rows(&[1], &[3], 1).unwrap().to_vec();
    let b = s.extend_rows(&[2], &[3], 1).unwrap().to_vec();
    assert_eq!(a, b);
    s.reset_row(0).unwrap();
    let got = s.extend_rows(&[0], &p0, 5).unwrap().to_vec();
    assert!(rel_diff(&got, &want0[0]) <= 1e-5);
    // prefill_row: a repeated prompt reuses the unchanged prefill; a changed row is
    // recomputed; either way each row then decodes as alone
    let first = s.prefill_row(0, &p1).unwrap().to_vec();
    let again = s.prefill_row(1, &p1).unwrap().to_vec();
    assert_eq!(first, again);
    let got = s.extend_rows(&[0, 1], &[4, 4], 1).unwrap().to_vec();
    assert!(rel_diff(&got[..vocab], &want1[1]) <= 1e-5);
    assert!(rel_diff(&got[vocab..], &want1[1]) <= 1e-5);
    let fresh = s.prefill_row(2, &p1).unwrap().to_vec(); // rows 0, 1 moved on
    assert!(rel_diff(&fresh, &want1[0]) <= 1e-5);
    let got = s.extend_rows(&[2], &[4], 1).unwrap().to_vec();
    assert!(rel_diff(&got, &want1[1]) <= 1e-5);
    assert!(s.extend_rows(&[0, 0], &[1, 2], 1).is_err(), "a row twice");
    assert!(s.extend_rows(&[3], &[1], 1).is_err(), "no such row");
    assert!(s.copy_row(0, 3).is_err());
}

#[test]
fn bad_calls_are_errors_not_panics() {
    let model = tiny(ModelType::Llama, 1, |_| {});
    let mut s = DecodeSession::new(&model, 2, 4).unwrap();
    assert!(s.extend(&[1, 2, 3], 1).is_err(), "3 ids for 2 rows");
    assert!(s.extend(&[1, VOCAB as u32], 1).is_err(), "id out of range");
    s.extend(&[1, 2, 3, 4, 5, 6], 3).unwrap();
    assert!(s.extend(&[1, 2, 3, 4], 2).is_err(), "past the capacity");
    s.extend(&[1, 2], 1).unwrap();
    assert!(DecodeSession::new(&model, 0, 4).is_err());
    assert!(
        DecodeSession::left_padded(&model, vec![3], 8)
            .unwrap()
            .extend(&[1, 2], 2)
            .is_err(),
        "padding covers every slot"
    );
}

/// The real SmolLM2-135M: a batch of 4 greedy continuations equal the model path's
/// token for token (release mode: the model path is slow in debug).
#[test]
#[cfg_attr(debug_assertions, ignore = "real-model test: run with --release")]
fn smollm2_greedy_tokens_equal_the_model_path() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let model = checkpoint::load_gguf(&gguf, &Device::Cpu, false)
        .unwrap()
        .model;
    let (b, t, new) = (4, 12, 16);
    let prompt: Vec<u32> = (0..(b * t) as u64)
        .map(|i| ((i * 2_654_435_761) % 49_152) as u32)
        .collect();
    let mut session = DecodeSession::new(&model, b, t + new).unwrap();
    let mut logits = session.extend(&prompt, t).unwrap().to_vec();
    let mut cache = KvCache::with_capacity(model.config().num_hidden_layers, t + new);
    let input = Tensor::from_vec(prompt, (b, t), &Device::Cpu).unwrap();
    let mut last = model.decode_last(&input, &mut cache).unwrap(); // (B, V)
    let vocab = model.config().vocab_size;
    for step in 0..new {
        let want: Vec<u32> = last.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        let got: Vec<u32> = logits
            .chunks_exact(vocab)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 {
                            (i, v)
                        } else {
                            best
                        }
                    })
                    .0 as u32
            })
            .collect();
        assert_eq!(got, want, "greedy tokens differ at step {step}");
        let want_logits: Vec<f32> = last.flatten_all().unwrap().to_vec1().unwrap();
        let d = rel_diff(&logits, &want_logits);
        assert!(d <= 1e-4, "step {step}: logits differ by {d} (relative)");
        logits = session.extend(&got, 1).unwrap().to_vec();
        let next = Tensor::from_vec(got, (b, 1), &Device::Cpu).unwrap();
        last = model.decode_last(&next, &mut cache).unwrap();
    }
}
