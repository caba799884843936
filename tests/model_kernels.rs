//! The model on the fused kernels equals the model on the reference compositions.
//!
//! Tiny random configs of every architecture (GQA ratios 1, 2 and 4, NoPE layers,
//! q/k/v, o and MLP biases, q/k norm), packed rows with several documents and odd
//! lengths: logits agree to 1e-5 relative and every parameter gradient of the
//! next-token loss (fused `lm_head` + cross-entropy vs explicit logits) to 1e-4
//! relative. Decoding on the fused path (preallocated KV cache, last-position logits,
//! left-padded batches) equals the forward.

use candle_core::{Device, Tensor};
use smelt::model::Kernels;
use smelt::ops::Precision;
use smelt::{KvCache, Model, ModelConfig, ModelType};

const VOCAB: usize = 97;

/// Configs covering every flag the fused path treats differently.
fn configs() -> Vec<(String, ModelConfig)> {
    let mut out = Vec::new();
    for t in ModelType::ALL {
        let mut c = ModelConfig::tiny(t, VOCAB);
        if t == ModelType::SmolLm3 {
            c.num_hidden_layers = 4;
            c.use_rope = vec![true, false, true, false];
        }
        out.push((format!("{t:?}"), c));
    }
    let mut mha = ModelConfig::tiny(ModelType::Llama, VOCAB);
    mha.num_key_value_heads = 4; // GQA ratio 1
    out.push(("llama-mha".into(), mha));
    let mut mqa = ModelConfig::tiny(ModelType::Qwen3, VOCAB);
    mqa.num_key_value_heads = 1; // GQA ratio 4, with q/k norm
    mqa.o_bias = true;
    mqa.mlp_bias = true;
    out.push(("qwen3-mqa-biases".into(), mqa));
    out
}

fn model(config: &ModelConfig, seed: u64, kernels: Kernels) -> Model {
    let mut m = Model::new_random(config.clone(), &Device::Cpu, seed).unwrap();
    m.set_kernels(kernels);
    m
}

/// Same parameters (shared `Var`s), other kernels.
fn with_kernels(m: &Model, kernels: Kernels) -> Model {
    let mut m = m.clone();
    m.set_kernels(kernels);
    m
}

fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 31 + salt * 17 + 5) % VOCAB as u32)
        .collect()
}

fn row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// max |a − b| / max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let diff: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    diff / scale.max(1e-20)
}

/// Two packed rows of 13 tokens: documents of 5 + 8 and 3 + 4 + 6.
fn packed_batch() -> (Tensor, Tensor, Tensor) {
    let t = 13;
    let tokens: Vec<Vec<u32>> = vec![ids(t, 1), ids(t, 2)];
    let positions: Vec<Vec<u32>> = vec![
        (0..5).chain(0..8).collect(),
        (0..3).chain(0..4).chain(0..6).collect(),
    ];
    let labels: Vec<Vec<i64>> = tokens
        .iter()
        .map(|r| {
            let mut l: Vec<i64> = r[1..].iter().map(|&x| x as i64).collect();
            l.push(-100);
            l[2] = -100; // an ignored label mid-row
            l
        })
        .collect();
    let dev = Device::Cpu;
    (
        Tensor::new(tokens, &dev).unwrap(),
        Tensor::new(positions, &dev).unwrap(),
        Tensor::new(labels, &dev).unwrap(),
    )
}

/// Summed next-token NLL through [`Model::token_nll`] (fused CE or explicit logits).
fn loss(m: &Model, input: &Tensor, pos: &Tensor, labels: &Tensor) -> Tensor {
    let hidden = m.forward_hidden(input, Some(pos)).unwrap(); // (B, T, H)
    let (b, t, h) = hidden.dims3().unwrap();
    let ce = m
        .token_nll(
            &hidden.reshape((b * t, h)).unwrap(),
            &labels.reshape(b * t).unwrap(),
        )
        .unwrap();
    ce.nll.sum_all().unwrap()
}

#[test]
fn fused_logits_and_gradients_equal_the_reference() {
    let (input, pos, labels) = packed_batch();
    for (name, config) in configs() {
        let fused = model(&config, 7, Kernels::Fused);
        let reference = with_kernels(&fused, Kernels::Reference);
        let lf = fused.forward(&input, Some(&pos)).unwrap();
        let lr = reference.forward(&input, Some(&pos)).unwrap();
        let d = rel_diff(&lf, &lr);
        assert!(d <= 1e-5, "{name}: fused logits differ by {d} (relative)");

        let loss_f = loss(&fused, &input, &pos, &labels);
        let loss_r = loss(&reference, &input, &pos, &labels);
        let d = rel_diff(&loss_f, &loss_r);
        assert!(d <= 1e-5, "{name}: fused loss differs by {d} (relative)");
        let (gf, gr) = (loss_f.backward().unwrap(), loss_r.backward().unwrap());
        for (pname, var) in fused.vars() {
            let a = gf
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no fused gradient for {pname}"));
            let b = gr
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no reference gradient for {pname}"));
            let d = rel_diff(a, b);
            assert!(
                d <= 1e-4,
                "{name}: gradient of {pname} differs by {d} (relative)"
            );
        }
    }
}

#[test]
fn fused_packed_documents_equal_separate_forwards() {
    let config = ModelConfig::tiny(ModelType::Qwen2, VOCAB);
    let m = model(&config, 3, Kernels::Fused);
    let (a, b) = (ids(6, 4), ids(7, 5));
    let packed: Vec<u32> = a.iter().chain(&b).copied().collect();
    let pos: Vec<u32> = (0..6).chain(0..7).collect();
    let pos = Tensor::new(pos.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let joint = m.forward(&row(&packed), Some(&pos)).unwrap(); // (1, 13, V)
    let alone = Tensor::cat(
        &[
            m.forward(&row(&a), None).unwrap(),
            m.forward(&row(&b), None).unwrap(),
        ],
        1,
    )
    .unwrap();
    let d = rel_diff(&joint, &alone);
    assert!(d <= 1e-5, "packed documents leak: {d}");
}

#[test]
fn fused_decode_equals_forward() {
    for (name, config) in configs() {
        let m = model(&config, 1, Kernels::Fused);
        let tokens = ids(11, 3);
        let full = m.forward(&row(&tokens), None).unwrap(); // (1, T, V)
        let layers = config.num_hidden_layers;
        // token by token, in a cache too small for the whole sequence (it must grow)
        let mut cache = KvCache::with_capacity(layers, 4);
        let steps: Vec<Tensor> = (0..tokens.len())
            .map(|i| m.decode(&row(&tokens[i..i + 1]), &mut cache).unwrap())
            .collect();
        assert_eq!(cache.len(), tokens.len());
        let d = rel_diff(&Tensor::cat(&steps, 1).unwrap(), &full);
        assert!(d <= 1e-5, "{name}: token-by-token decode differs by {d}");
        // chunked, last-position logits only, in a cache sized for the sequence
        let mut cache = KvCache::with_capacity(layers, tokens.len());
        for &(s, n) in &[(0, 4), (4, 5), (9, 2)] {
            let last = m.decode_last(&row(&tokens[s..s + n]), &mut cache).unwrap(); // (1, V)
            let want = full
                .get(0)
                .unwrap()
                .get(s + n - 1)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let d = rel_diff(&last, &want);
            assert!(d <= 1e-5, "{name}: decode_last at {} differs by {d}", s + n);
        }
        assert_eq!(
            cache.capacity(),
            tokens.len(),
            "{name}: the cache re-allocated"
        );
    }
}

#[test]
fn fused_left_padded_rows_equal_decoding_alone() {
    for (name, config) in configs() {
        let m = model(&config, 5, Kernels::Fused);
        let layers = config.num_hidden_layers;
        let (a, b) = (ids(7, 1), ids(3, 2));
        let (next_a, next_b) = (11u32, 13u32);
        // alone
        let alone = |prompt: &[u32], next: u32| -> Tensor {
            let mut c = KvCache::new(layers);
            m.decode(&row(prompt), &mut c).unwrap();
            m.decode_last(&row(&[next]), &mut c).unwrap() // (1, V)
        };
        let want = Tensor::cat(&[alone(&a, next_a), alone(&b, next_b)], 0).unwrap(); // (2, V)
                                                                                     // prefilled alone, joined left-padded, one step together
        let (mut ca, mut cb) = (KvCache::new(layers), KvCache::new(layers));
        m.decode(&row(&a), &mut ca).unwrap();
        m.decode(&row(&b), &mut cb).unwrap();
        let mut joint = KvCache::cat_left_padded(&[&ca, &cb]).unwrap();
        let input = Tensor::new(&[[next_a], [next_b]], &Device::Cpu).unwrap(); // (2, 1)
        let pads = [0, a.len() - b.len()];
        let got = m
            .decode_left_padded_last(&input, &pads, &mut joint)
            .unwrap();
        let d = rel_diff(&got, &want);
        assert!(d <= 1e-5, "{name}: left-padded decode differs by {d}");
        let full = m
            .decode_left_padded(&input, &pads, &mut joint.clone())
            .unwrap(); // (2, 1, V)
        assert_eq!(full.dims(), &[2, 1, VOCAB]);
    }
}

#[test]
fn bf16_autocast_tracks_f32() {
    let (input, pos, labels) = packed_batch();
    let config = ModelConfig::tiny(ModelType::Llama, VOCAB);
    let f32_model = model(&config, 9, Kernels::Fused);
    let mut bf16 = f32_model.clone();
    bf16.set_precision(Precision::Bf16Autocast);
    assert_eq!(bf16.precision(), Precision::Bf16Autocast);
    let d = rel_diff(
        &bf16.forward(&input, Some(&pos)).unwrap(),
        &f32_model.forward(&input, Some(&pos)).unwrap(),
    );
    assert!(d <= 5e-2, "bf16 autocast logits differ by {d} (relative)");
    let l = loss(&bf16, &input, &pos, &labels);
    let grads = l.backward().unwrap();
    for (pname, var) in bf16.vars() {
        let g = grads
            .get(var)
            .unwrap_or_else(|| panic!("no bf16 gradient for {pname}"));
        let n: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(n.is_finite() && n > 0.0, "{pname}: bf16 gradient norm² {n}");
    }
}
