//! Checkpoint I/O: HF folders, sharded safetensors, hub cache, GGUF import, atomic save.
//!
//! Run: `cargo test -p smelt --test checkpoint_io` (add `--release -- --nocapture` to
//! see the real SmolLM2 GGUF load time). Tests that need the real SmolLM2 GGUF look at
//! `SMELT_SMOLLM2_GGUF`, else `$HOME/.cache/smelt/assets/smollm2-135m-instruct/…`; if
//! it is missing they are skipped with a note, or fail when `SMELT_REQUIRE_ASSETS=1`.

mod common;

use candle_core::quantized::gguf_file::{self, Value as GV};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, View};
use smelt::checkpoint::{self, load, save_pretrained, write_dir_atomically, LoadOptions, Origin};
use smelt::{Model, ModelConfig, ModelType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

const CPU: Device = Device::Cpu;

fn tiny(t: ModelType, seed: u64) -> Model {
    Model::new_random(ModelConfig::tiny(t, 300), &CPU, seed).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Same names, same order, bit-identical values.
fn assert_same_tensors(a: &Model, b: &Model) {
    let (a, b) = (a.named_tensors(), b.named_tensors());
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.dims(), y.dims(), "{name}");
        assert!(bits(x) == bits(y), "tensor {name} differs");
    }
}

use common::smollm2_gguf;

/// A tensor's bytes for the `safetensors` writer, in any dtype.
struct Raw(StDtype, Vec<usize>, Vec<u8>);
impl View for &Raw {
    fn dtype(&self) -> StDtype {
        self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.2)
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

fn raw(t: &Tensor, dtype: DType) -> Raw {
    let shape = t.dims().to_vec();
    let t = t.to_dtype(dtype).unwrap().flatten_all().unwrap();
    let (st, bytes): (StDtype, Vec<u8>) = match dtype {
        DType::BF16 => (
            StDtype::BF16,
            t.to_vec1::<half::bf16>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::F16 => (
            StDtype::F16,
            t.to_vec1::<half::f16>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        _ => (
            StDtype::F32,
            t.to_vec1::<f32>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
    };
    Raw(st, shape, bytes)
}

fn write_st(path: &Path, tensors: &[(String, Raw)]) {
    safetensors::tensor::serialize_to_file(
        tensors.iter().map(|(n, r)| (n.as_str(), r)),
        None,
        path,
    )
    .unwrap();
}

fn write_config(dir: &Path, model: &Model) {
    std::fs::create_dir_all(dir).unwrap();
    let text = serde_json::to_string_pretty(&model.config().to_hf_json()).unwrap();
    std::fs::write(dir.join("config.json"), text).unwrap();
}

fn err_of(r: smelt::Result<checkpoint::Loaded>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn save_load_round_trip_is_bit_identical_for_every_model_type() {
    let dir = tempfile::tempdir().unwrap();
    for (i, t) in ModelType::ALL.into_iter().enumerate() {
        let model = tiny(t, 10 + i as u64);
        let out = dir.path().join(t.as_str());
        save_pretrained(&model, None, &out).unwrap();
        let loaded = load(out.to_str().unwrap(), &CPU, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.origin, Origin::Folder(out.clone()));
        assert!(loaded.tokenizer.is_none());
        assert_eq!(loaded.model.config(), model.config(), "{t:?}");
        assert_same_tensors(&model, &loaded.model);
        // Header metadata and tied lm_head omitted, as transformers writes them.
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let has_head = meta.tensors().contains_key("lm_head.weight");
        assert_eq!(has_head, !model.config().tie_word_embeddings, "{t:?}");
        let gen: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("generation_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (gen["bos_token_id"].as_u64(), gen["eos_token_id"].as_u64()),
            (Some(1), Some(2))
        );
    }
}

#[test]
fn bf16_and_f16_safetensors_load_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(ModelType::Qwen2, 3);
    for dtype in [DType::BF16, DType::F16] {
        let out = dir.path().join(format!("{dtype:?}"));
        write_config(&out, &model);
        let tensors: Vec<(String, Raw)> = model
            .named_tensors()
            .iter()
            .map(|(n, t)| (n.clone(), raw(t, dtype)))
            .collect();
        write_st(&out.join("model.safetensors"), &tensors);
        let loaded = load(out.to_str().unwrap(), &CPU, &LoadOptions::default()).unwrap();
        for ((name, want), (_, got)) in model
            .named_tensors()
            .iter()
            .zip(loaded.model.named_tensors())
        {
            assert_eq!(got.dtype(), DType::F32);
            let want = want.to_dtype(dtype).unwrap();
            assert!(bits(&want) == bits(&got), "{dtype:?} {name}");
        }
    }
}

#[test]
fn sharded_index_loads() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(ModelType::Qwen3, 4);
    write_config(dir.path(), &model);
    let named = model.named_tensors();
    let half = named.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in [&named[..half], &named[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let tensors: Vec<(String, Raw)> = chunk
            .iter()
            .map(|(n, t)| (n.clone(), raw(t, DType::F32)))
            .collect();
        write_st(&dir.path().join(&file), &tensors);
        for (n, _) in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let loaded = load(dir.path().to_str().unwrap(), &CPU, &LoadOptions::default()).unwrap();
    assert_same_tensors(&model, &loaded.model);

    // A shard that the index names but that is gone is an error naming it.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = err_of(load(
        dir.path().to_str().unwrap(),
        &CPU,
        &LoadOptions::default(),
    ));
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn wrong_shape_and_missing_tensor_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(ModelType::Llama, 5);
    write_config(dir.path(), &model);
    let q = "model.layers.1.self_attn.q_proj.weight";
    let mut tensors: Vec<(String, Raw)> = model
        .named_tensors()
        .iter()
        .map(|(n, t)| {
            let t = if n == q {
                Tensor::zeros((64, 32), DType::F32, &CPU).unwrap()
            } else {
                t.clone()
            };
            (n.clone(), raw(&t, DType::F32))
        })
        .collect();
    let st = dir.path().join("model.safetensors");
    write_st(&st, &tensors);
    let e = err_of(load(
        dir.path().to_str().unwrap(),
        &CPU,
        &LoadOptions::default(),
    ));
    assert!(
        e.contains("model.safetensors")
            && e.contains(q)
            && e.contains("[64, 32]")
            && e.contains("[64, 64]"),
        "{e}"
    );

    tensors.retain(|(n, _)| n != q);
    write_st(&st, &tensors);
    let e = err_of(load(
        dir.path().to_str().unwrap(),
        &CPU,
        &LoadOptions::default(),
    ));
    assert!(
        e.contains("model.safetensors") && e.contains("missing") && e.contains(q),
        "{e}"
    );
}

#[test]
fn malformed_config_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(ModelType::Llama, 6);
    let out = dir.path().join("m");
    save_pretrained(&model, None, &out).unwrap();
    let src = out.to_str().unwrap();

    let e = err_of(load(
        src,
        &CPU,
        &LoadOptions {
            require_tokenizer: true,
            ..Default::default()
        },
    ));
    assert!(e.contains("no tokenizer.json in") && e.contains(src), "{e}");

    std::fs::write(
        out.join("config.json"),
        "{\"model_type\": \"llama\", \"hidden_size\": ",
    )
    .unwrap();
    let e = err_of(load(src, &CPU, &LoadOptions::default()));
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");
    std::fs::write(out.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
    let e = err_of(load(src, &CPU, &LoadOptions::default()));
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );

    std::fs::remove_file(out.join("config.json")).unwrap();
    let e = err_of(load(src, &CPU, &LoadOptions::default()));
    assert!(e.contains("no config.json"), "{e}");

    let e = err_of(load(
        "definitely/not/a-thing",
        &CPU,
        &LoadOptions::default(),
    ));
    assert!(e.contains("definitely/not/a-thing"), "{e}");
}

#[test]
fn truncated_safetensors_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(ModelType::Llama, 7);
    let out = dir.path().join("m");
    save_pretrained(&model, None, &out).unwrap();
    let st = out.join("model.safetensors");
    let full = std::fs::read(&st).unwrap();
    for cut in [0, 5, 8, 20, 200, full.len() / 2, full.len() - 1] {
        std::fs::write(&st, &full[..cut]).unwrap();
        let e = err_of(load(out.to_str().unwrap(), &CPU, &LoadOptions::default()));
        assert!(e.contains("model.safetensors"), "cut {cut}: {e}");
    }
}

/// llama.cpp's `convert_hf_to_gguf.py` permutation of q/k rows (`LlamaModel.permute`).
fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((n_head, 2, rows / n_head / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Writes `model` as an F32 GGUF the way llama.cpp's converter lays it out.
fn write_tiny_gguf(model: &Model, path: &Path) {
    write_tiny_gguf_with(model, path, vec![]);
}

/// As [`write_tiny_gguf`], with metadata entries added or overridden by `extra`.
fn write_tiny_gguf_with(model: &Model, path: &Path, extra: Vec<(String, GV)>) {
    let c = model.config();
    let arch = c.model_type.as_str();
    let k = |s: &str| format!("{arch}.{s}");
    let meta: Vec<(String, GV)> = vec![
        ("general.architecture".into(), GV::String(arch.into())),
        (k("block_count"), GV::U32(c.num_hidden_layers as u32)),
        (
            k("context_length"),
            GV::U32(c.max_position_embeddings as u32),
        ),
        (k("embedding_length"), GV::U32(c.hidden_size as u32)),
        (
            k("feed_forward_length"),
            GV::U32(c.intermediate_size as u32),
        ),
        (
            k("attention.head_count"),
            GV::U32(c.num_attention_heads as u32),
        ),
        (
            k("attention.head_count_kv"),
            GV::U32(c.num_key_value_heads as u32),
        ),
        (k("attention.key_length"), GV::U32(c.head_dim as u32)),
        (k("rope.freq_base"), GV::F32(c.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GV::F32(c.rms_norm_eps as f32),
        ),
        (k("vocab_size"), GV::U32(c.vocab_size as u32)),
        ("tokenizer.ggml.bos_token_id".into(), GV::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GV::U32(2)),
    ];
    let mut meta = meta;
    for (k, v) in extra {
        meta.retain(|(m, _)| *m != k);
        meta.push((k, v));
    }
    let rename = |hf: &str| -> String {
        let fixed = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
            return g.to_string();
        }
        let rest = hf.strip_prefix("model.layers.").unwrap();
        let (layer, rest) = rest.split_once('.').unwrap();
        let parts = [
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("self_attn.q_norm", "attn_q_norm"),
            ("self_attn.k_norm", "attn_k_norm"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ];
        let (part, kind) = rest.rsplit_once('.').unwrap();
        let g = parts.iter().find(|(h, _)| *h == part).unwrap().1;
        format!("blk.{layer}.{g}.{kind}")
    };
    let mut tensors = Vec::new();
    for (name, t) in model.named_tensors() {
        let t = match (c.model_type, name.as_str()) {
            (ModelType::Llama, n) if n.ends_with("q_proj.weight") => {
                llama_cpp_permute(&t, c.num_attention_heads)
            }
            (ModelType::Llama, n) if n.ends_with("k_proj.weight") => {
                llama_cpp_permute(&t, c.num_key_value_heads)
            }
            _ => t,
        };
        tensors.push((
            rename(&name),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let meta_refs: Vec<(&str, &GV)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

#[test]
fn tiny_gguf_import_unpermutes_to_the_original_hf_weights() {
    let dir = tempfile::tempdir().unwrap();
    for t in [ModelType::Llama, ModelType::Qwen2, ModelType::Qwen3] {
        let model = tiny(t, 21);
        let path = dir.path().join(format!("{}.gguf", t.as_str()));
        write_tiny_gguf(&model, &path);
        let loaded = load(path.to_str().unwrap(), &CPU, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.origin, Origin::Gguf(path.clone()));
        assert!(loaded.tokenizer.is_none());
        assert_eq!(loaded.model.config(), model.config(), "{t:?}");
        assert_same_tensors(&model, &loaded.model);
    }
}

#[test]
fn tiny_gguf_lies_and_truncations_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(ModelType::Llama, 22);
    let p = dir.path().join("tiny.gguf");
    // Metadata disagreeing with the tensors: the tensor and both shapes are named.
    write_tiny_gguf_with(
        &model,
        &p,
        vec![("llama.feed_forward_length".into(), GV::U32(256))],
    );
    let e = err_of(load(p.to_str().unwrap(), &CPU, &LoadOptions::default()));
    assert!(
        e.contains("tiny.gguf")
            && e.contains("ffn_")
            && e.contains("[128, 64]")
            && e.contains("[256, 64]"),
        "{e}"
    );
    // A zero alignment would make candle's reader divide by zero: an error, not a panic.
    write_tiny_gguf_with(&model, &p, vec![("general.alignment".into(), GV::U32(0))]);
    let e = err_of(load(p.to_str().unwrap(), &CPU, &LoadOptions::default()));
    assert!(e.contains("tiny.gguf") && e.contains("malformed"), "{e}");
    // An unsupported architecture is named.
    write_tiny_gguf_with(
        &model,
        &p,
        vec![("general.architecture".into(), GV::String("gemma3".into()))],
    );
    let e = err_of(load(p.to_str().unwrap(), &CPU, &LoadOptions::default()));
    assert!(e.contains("tiny.gguf") && e.contains("gemma3"), "{e}");
    // Cut anywhere: header, tensor table, data.
    write_tiny_gguf(&model, &p);
    let full = std::fs::read(&p).unwrap();
    let cut_path = dir.path().join("tiny-cut.gguf");
    for cut in (0..full.len()).step_by(997).chain([full.len() - 1]) {
        std::fs::write(&cut_path, &full[..cut]).unwrap();
        let e = err_of(load(
            cut_path.to_str().unwrap(),
            &CPU,
            &LoadOptions::default(),
        ));
        assert!(
            e.contains("tiny-cut.gguf") && !e.contains('\n'),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn non_gguf_bytes_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.gguf");
    for bytes in [
        &b""[..],
        b"GG",
        b"not a gguf file at all, just text",
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\x00",
    ] {
        std::fs::write(&p, bytes).unwrap();
        let e = err_of(load(p.to_str().unwrap(), &CPU, &LoadOptions::default()));
        assert!(e.contains("junk.gguf"), "{e}");
    }
    let e = err_of(load(
        dir.path().join("absent.gguf").to_str().unwrap(),
        &CPU,
        &LoadOptions::default(),
    ));
    assert!(e.contains("absent.gguf"), "{e}");
}

#[test]
fn truncated_gguf_is_an_error_naming_the_file() {
    let Some(real) = smollm2_gguf() else { return };
    let full = std::fs::read(&real).unwrap();
    let content = gguf_file::Content::read(&mut std::io::Cursor::new(&full)).unwrap();
    let data = content.tensor_data_offset as usize;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.gguf");
    let cuts = [
        4,
        12,
        23,
        100,
        5_000,
        1_000_000,
        data - 1,
        data,
        data + 1000,
        full.len() / 2,
        full.len() - 1,
    ];
    for cut in cuts {
        std::fs::write(&p, &full[..cut]).unwrap();
        let e = err_of(load(p.to_str().unwrap(), &CPU, &LoadOptions::default()));
        eprintln!("cut at {cut}: {e}");
        assert!(e.contains("cut.gguf"), "cut {cut}: {e}");
        if cut >= data {
            assert!(
                e.contains("truncated: tensor `") && e.contains(&format!("the file has {cut}")),
                "cut {cut}: {e}"
            );
        }
    }
}

#[test]
fn real_smollm2_gguf_imports_and_saves_as_hf_folder() {
    let Some(real) = smollm2_gguf() else { return };
    let start = std::time::Instant::now();
    let loaded = load(
        real.to_str().unwrap(),
        &CPU,
        &LoadOptions {
            require_tokenizer: true,
            ..Default::default()
        },
    )
    .unwrap();
    eprintln!(
        "SmolLM2-135M Q4_1 GGUF load (dequantize + un-permute + model build): {:.2?}",
        start.elapsed()
    );
    let c = loaded.model.config();
    assert_eq!(
        (
            c.model_type,
            c.vocab_size,
            c.hidden_size,
            c.num_hidden_layers
        ),
        (ModelType::Llama, 49152, 576, 30)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (9, 3, 64)
    );
    assert_eq!(
        (c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings),
        (100000.0, 1e-5, true)
    );
    assert_eq!(
        (
            c.bos_token_id,
            c.eos_token_ids.as_slice(),
            c.max_position_embeddings
        ),
        (Some(1), &[2u32][..], 8192)
    );
    let tok = loaded
        .tokenizer
        .as_ref()
        .expect("GGUF has tokenizer metadata");

    // GGUF -> HF folder -> load again: identical tensors and a tokenizer that encodes alike.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    save_pretrained(&loaded.model, Some(tok), &out).unwrap();
    if let Some(keep) = std::env::var_os("SMELT_KEEP_SMOLLM2_HF") {
        save_pretrained(&loaded.model, Some(tok), Path::new(&keep)).unwrap();
    }
    for f in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let back = load(
        out.to_str().unwrap(),
        &CPU,
        &LoadOptions {
            require_tokenizer: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_same_tensors(&loaded.model, &back.model);
    let text = "Hello, world! The capital of France is";
    assert_eq!(
        tok.encode(text, false).unwrap(),
        back.tokenizer.unwrap().encode(text, false).unwrap()
    );
}

/// Lays out `files` as the hub cache does: refs/<rev> -> snapshots/<hash>/<file>.
fn fake_hub_repo(cache: &Path, repo: &str, files: &Path, names: &[&str]) -> PathBuf {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let hash = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), hash).unwrap();
    let snap = root.join("snapshots").join(hash);
    std::fs::create_dir_all(&snap).unwrap();
    for n in names {
        std::fs::copy(files.join(n), snap.join(n)).unwrap();
    }
    snap
}

#[test]
fn hub_id_resolves_from_a_filled_cache_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(ModelType::Llama, 8);
    let src = dir.path().join("src");
    save_pretrained(&model, None, &src).unwrap();
    let cache = dir.path().join("hub");
    // A repo id no server has: any network call would fail the load.
    let repo = "smelt-test-org/not-on-the-hub-tiny";
    let snap = fake_hub_repo(&cache, repo, &src, &["config.json", "model.safetensors"]);
    for offline in [Some(true), Some(false)] {
        let opts = LoadOptions {
            hub_cache: Some(cache.clone()),
            offline,
            ..Default::default()
        };
        let loaded = load(repo, &CPU, &opts).unwrap();
        assert_eq!(
            loaded.origin,
            Origin::Hub {
                repo: repo.into(),
                revision: "main".into(),
                path: snap.clone()
            }
        );
        assert_same_tensors(&model, &loaded.model);
    }
    // Offline with a file missing: an error naming the repo and the file.
    let opts = LoadOptions {
        hub_cache: Some(cache.clone()),
        offline: Some(true),
        require_tokenizer: true,
    };
    let e = err_of(load(repo, &CPU, &opts));
    assert!(
        e.contains(repo) && e.contains("tokenizer.json") && e.contains("offline"),
        "{e}"
    );
    std::fs::remove_file(snap.join("model.safetensors")).unwrap();
    let opts = LoadOptions {
        hub_cache: Some(cache.clone()),
        offline: Some(true),
        ..Default::default()
    };
    let e = err_of(load(repo, &CPU, &opts));
    assert!(e.contains(repo) && e.contains("model.safetensors"), "{e}");
    let e = err_of(load("smelt-test-org/never-cached@v2", &CPU, &opts));
    assert!(
        e.contains("smelt-test-org/never-cached@v2") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn atomic_save_replaces_wholly_and_failed_save_keeps_previous() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ckpt");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("optimizer.safetensors"), "stale").unwrap();
    let first = tiny(ModelType::Qwen2, 1);
    save_pretrained(&first, None, &out).unwrap();
    assert!(
        !out.join("optimizer.safetensors").exists(),
        "old folder must be replaced wholly"
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "no temp folders left: {entries:?}");

    // A save that fails half-way leaves the previous checkpoint as it was.
    let second = tiny(ModelType::Qwen2, 2);
    let r = write_dir_atomically(&out, |tmp| {
        checkpoint::write_safetensors(&tmp.join("model.safetensors"), &second.named_tensors())?;
        Err(smelt::Error::Invalid("disk full (simulated)".into()))
    });
    assert!(r.unwrap_err().to_string().contains("simulated"));
    let loaded = load(out.to_str().unwrap(), &CPU, &LoadOptions::default()).unwrap();
    assert_same_tensors(&first, &loaded.model);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
