//! Invariants of the model on tiny random configs of every architecture:
//! KV-cache decode equals forward, packed documents equal separate forwards, every
//! parameter receives a finite non-zero gradient, and a saved checkpoint reloads to
//! identical logits.

use candle_core::{Device, Tensor};
use smelt::checkpoint;
use smelt::{KvCache, Model, ModelConfig, ModelType};

const VOCAB: usize = 97;

fn tiny(t: ModelType, seed: u64) -> Model {
    let mut config = ModelConfig::tiny(t, VOCAB);
    if t == ModelType::SmolLm3 {
        config.num_hidden_layers = 4;
        config.use_rope = vec![true, false, true, false];
    }
    Model::new_random(config, &Device::Cpu, seed).unwrap()
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

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn decode_with_cache_equals_forward() {
    for t in ModelType::ALL {
        let model = tiny(t, 1);
        let tokens = ids(11, 3);
        let full = model.forward(&row(&tokens), None).unwrap(); // (1, T, V)
                                                                // token by token
        let mut cache = KvCache::new(model.config().num_hidden_layers);
        let steps: Vec<Tensor> = (0..tokens.len())
            .map(|i| model.decode(&row(&tokens[i..i + 1]), &mut cache).unwrap())
            .collect();
        assert_eq!(cache.len(), tokens.len());
        let stepped = Tensor::cat(&steps, 1).unwrap();
        let d = max_diff(&full, &stepped);
        assert!(d <= 1e-5, "{t:?}: token-by-token decode differs by {d}");
        // chunked: prefill 4, then 5, then 2
        let mut cache = KvCache::new(model.config().num_hidden_layers);
        let chunks: Vec<Tensor> = [(0, 4), (4, 5), (9, 2)]
            .iter()
            .map(|&(s, n)| model.decode(&row(&tokens[s..s + n]), &mut cache).unwrap())
            .collect();
        let d = max_diff(&full, &Tensor::cat(&chunks, 1).unwrap());
        assert!(d <= 1e-5, "{t:?}: chunked decode differs by {d}");
    }
}

#[test]
fn packed_documents_equal_separate_forwards() {
    for t in ModelType::ALL {
        let model = tiny(t, 2);
        let (a, b) = (ids(7, 1), ids(5, 2));
        let packed: Vec<u32> = a.iter().chain(&b).copied().collect();
        let positions: Vec<u32> = (0..7).chain(0..5).collect();
        let pos = Tensor::new(positions.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let out = model.forward(&row(&packed), Some(&pos)).unwrap();
        let sep = Tensor::cat(
            &[
                model.forward(&row(&a), None).unwrap(),
                model.forward(&row(&b), None).unwrap(),
            ],
            1,
        )
        .unwrap();
        let d = max_diff(&out, &sep);
        assert!(d <= 1e-5, "{t:?}: packed differs from separate by {d}");
        // and without position_ids the second document would see the first: the test can fail
        let leaky = model.forward(&row(&packed), None).unwrap();
        assert!(
            max_diff(&leaky, &sep) > 1e-3,
            "{t:?}: packing test is not sensitive"
        );
    }
}

#[test]
fn batched_rows_with_different_packing_match() {
    let model = tiny(ModelType::Llama, 3);
    let (a, b) = (ids(6, 4), ids(6, 5));
    let batch = Tensor::new(vec![a.clone(), b.clone()], &Device::Cpu).unwrap();
    // row 0: one document; row 1: two documents of 3
    let pos = Tensor::new(
        vec![(0..6).collect::<Vec<u32>>(), vec![0, 1, 2, 0, 1, 2]],
        &Device::Cpu,
    )
    .unwrap();
    let out = model.forward(&batch, Some(&pos)).unwrap();
    let r0 = model.forward(&row(&a), None).unwrap();
    let r1 = Tensor::cat(
        &[
            model.forward(&row(&b[..3]), None).unwrap(),
            model.forward(&row(&b[3..]), None).unwrap(),
        ],
        1,
    )
    .unwrap();
    assert!(max_diff(&out.narrow(0, 0, 1).unwrap(), &r0) <= 1e-5);
    assert!(max_diff(&out.narrow(0, 1, 1).unwrap(), &r1) <= 1e-5);
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    for t in ModelType::ALL {
        for tie in [true, false] {
            let mut model = tiny(t, 4);
            if !tie && model.config().tie_word_embeddings {
                let mut c = model.config().clone();
                c.tie_word_embeddings = false;
                model = Model::new_random(c, &Device::Cpu, 4).unwrap();
            }
            let tokens = ids(9, 6);
            let logits = model.forward(&row(&tokens), None).unwrap(); // (1, T, V)
            let (_, t_len, v) = logits.dims3().unwrap();
            let targets = Tensor::new(&ids(9, 7)[..], &Device::Cpu).unwrap();
            let loss =
                candle_nn::loss::cross_entropy(&logits.reshape((t_len, v)).unwrap(), &targets)
                    .unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in model.vars() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{t:?}: `{name}` got no gradient"));
                let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                assert!(
                    g.iter().all(|x| x.is_finite()),
                    "{t:?}: `{name}` has a non-finite gradient"
                );
                assert!(
                    g.iter().any(|&x| x != 0.0),
                    "{t:?} tie={tie}: `{name}` has an all-zero gradient"
                );
            }
        }
    }
}

#[test]
fn nope_layers_change_the_output() {
    let model = tiny(ModelType::SmolLm3, 5);
    let mut all_rope = model.config().clone();
    all_rope.use_rope = vec![true; all_rope.num_hidden_layers];
    let other = Model::from_tensors(
        all_rope,
        model.named_tensors().into_iter().collect(),
        &Device::Cpu,
        std::path::Path::new("test"),
    )
    .unwrap();
    let x = row(&ids(8, 1));
    assert!(
        max_diff(
            &model.forward(&x, None).unwrap(),
            &other.forward(&x, None).unwrap()
        ) > 1e-4
    );
}

#[test]
fn save_and_reload_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    for t in ModelType::ALL {
        let model = tiny(t, 6);
        let path = dir.path().join(t.as_str());
        checkpoint::save_pretrained(&model, None, &path).unwrap();
        let (back, _) = checkpoint::load_folder(&path, &Device::Cpu, false).unwrap();
        assert_eq!(back.config(), model.config());
        let x = row(&ids(10, 2));
        assert_eq!(
            max_diff(
                &model.forward(&x, None).unwrap(),
                &back.forward(&x, None).unwrap()
            ),
            0.0,
            "{t:?}"
        );
    }
}

#[test]
fn bad_calls_are_errors_not_panics() {
    let model = tiny(ModelType::Llama, 7);
    let out_of_vocab = Tensor::new(&[[1u32, VOCAB as u32]], &Device::Cpu).unwrap();
    let e = model.forward(&out_of_vocab, None).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let pos = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
    let e = model
        .forward(&row(&[1, 2]), Some(&pos))
        .unwrap_err()
        .to_string();
    assert!(e.contains("position_ids"), "{e}");
    let mut wrong_cache = KvCache::new(5);
    assert!(model.decode(&row(&[1]), &mut wrong_cache).is_err());
}
