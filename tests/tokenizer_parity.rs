//! smelt's tokenizer against transformers, on SmolLM2-135M-Instruct.
//!
//!     cargo test -p smelt --test tokenizer_parity
//!
//! The expected values are `tests/fixtures/tokenizer/smollm2.json`, written by
//! `scripts/make_tokenizer_fixtures.py` (transformers loading the same GGUF). The model file
//! comes from `shared/scripts/fetch-smollm2.sh`; it is found through `SMELT_SMOLLM2_GGUF` or
//! the default cache path. Without it the tests that need it print a note and pass, unless
//! `SMELT_REQUIRE_ASSETS=1`. The error-path tests need no assets.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;
use smelt::tokenizer::{ChatTemplate, Message, Tokenizer};

use common::smollm2_gguf as gguf_path;

/// The GGUF-built tokenizer, once per test binary; `None` when the model file is absent.
fn smollm2() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = gguf_path()?;
        let mut reader = BufReader::new(File::open(&path).expect("open gguf"));
        let content = gguf_file::Content::read(&mut reader).expect("read gguf metadata");
        Some(Tokenizer::from_gguf_metadata(&content.metadata, &path).expect("tokenizer from gguf"))
    })
    .as_ref()
}

fn fixture() -> &'static Json {
    static FIX: OnceLock<Json> = OnceLock::new();
    FIX.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/smollm2.json");
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read fixture"))
            .expect("parse fixture")
    })
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn messages(v: &Json) -> Vec<Message> {
    serde_json::from_value(v.clone()).expect("messages")
}

fn s(v: &Json) -> &str {
    v.as_str().expect("string")
}

/// Checks every fixture string; reports all mismatches at once.
fn check_encodings(tok: &Tokenizer, label: &str) {
    let mut failures = Vec::new();
    let entries = fixture()["encodings"].as_array().unwrap();
    assert!(
        entries.len() >= 60,
        "fixture has only {} strings",
        entries.len()
    );
    for e in entries {
        let text = s(&e["text"]);
        let want = ids(&e["ids"]);
        let got = tok.encode(text, false).unwrap();
        if got != want {
            failures.push(format!("{text:?}: ids {got:?} != transformers {want:?}"));
        }
        let got_special = tok.encode(text, true).unwrap();
        if got_special != ids(&e["ids_add_special"]) {
            failures.push(format!("{text:?}: add_special_tokens ids {got_special:?}"));
        }
        let dec = tok.decode(&want, false).unwrap();
        if dec != s(&e["decode"]) {
            failures.push(format!("{text:?}: decode {dec:?} != {:?}", s(&e["decode"])));
        }
        let dec_skip = tok.decode(&want, true).unwrap();
        if dec_skip != s(&e["decode_skip_special"]) {
            failures.push(format!(
                "{text:?}: decode(skip) {dec_skip:?} != {:?}",
                s(&e["decode_skip_special"])
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_chats(tok: &Tokenizer, label: &str) {
    for c in fixture()["chats"].as_array().unwrap() {
        let msgs = messages(&c["messages"]);
        let gen = c["add_generation_prompt"].as_bool().unwrap();
        let text = tok.apply_chat_template(&msgs, gen).unwrap();
        assert_eq!(
            text,
            s(&c["text"]),
            "{label}: render of {msgs:?} (add_generation_prompt={gen})"
        );
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids(&c["ids"]),
            "{label}: chat ids of {text:?}"
        );
    }
}

#[test]
fn encode_and_decode_match_transformers() {
    let Some(tok) = smollm2() else { return };
    check_encodings(tok, "gguf");
}

#[test]
fn vocab_and_special_tokens_match_transformers() {
    let Some(tok) = smollm2() else { return };
    let f = fixture();
    assert_eq!(tok.vocab_size() as u64, f["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos_token(), f["bos_token"].as_str());
    assert_eq!(tok.eos_token(), f["eos_token"].as_str());
    assert_eq!(tok.pad_token(), f["pad_token"].as_str());
    assert_eq!(
        tok.bos_token_id().map(u64::from),
        f["bos_token_id"].as_u64()
    );
    assert_eq!(
        tok.eos_token_id().map(u64::from),
        f["eos_token_id"].as_u64()
    );
    assert_eq!(
        tok.pad_token_id().map(u64::from),
        f["pad_token_id"].as_u64()
    );
    assert_eq!(
        tok.chat_template().unwrap().source(),
        s(&f["chat_template"])
    );
}

#[test]
fn chat_renders_and_ids_match_transformers() {
    let Some(tok) = smollm2() else { return };
    check_chats(tok, "gguf");
}

#[test]
fn other_templates_render_like_jinja2() {
    // These exercise whitespace control, namespace, loop controls, python string methods,
    // tojson and raise_exception's neighbourhood; they need no model, only the fixture.
    let f = fixture();
    let templates = f["extra_templates"].as_object().unwrap();
    for r in f["extra_renders"].as_array().unwrap() {
        let name = s(&r["template"]);
        let t = ChatTemplate::new(
            s(&templates[name]).to_string(),
            Some(s(&f["bos_token"]).into()),
            Some(s(&f["eos_token"]).into()),
        )
        .unwrap()
        .with_special_token("unk_token", s(&f["unk_token"]))
        .with_special_token("pad_token", s(&f["pad_token"]));
        let msgs = messages(&r["messages"]);
        let gen = r["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            t.render(&msgs, gen).unwrap(),
            s(&r["text"]),
            "template {name}, {msgs:?}, gen={gen}"
        );
    }
}

#[test]
fn assistant_mask_matches_transformers_generation_mask() {
    let Some(tok) = smollm2() else { return };
    let cases = fixture()["assistant_masks"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let msgs = messages(&c["messages"]);
        let (got_ids, mask) = tok.apply_chat_template_with_assistant_mask(&msgs).unwrap();
        assert_eq!(got_ids, ids(&c["ids"]), "ids of {msgs:?}");
        let want: Vec<u8> = c["assistant_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(mask, want, "mask of {msgs:?}");

        // Each run of masked tokens decodes to one assistant message's content + <|im_end|>.
        let mut runs: Vec<Vec<u32>> = Vec::new();
        for (i, (&id, &m)) in got_ids.iter().zip(&mask).enumerate() {
            if m == 1 {
                if i == 0 || mask[i - 1] == 0 {
                    runs.push(Vec::new());
                }
                runs.last_mut().unwrap().push(id);
            }
        }
        let contents: Vec<String> = msgs
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| format!("{}<|im_end|>", m.content))
            .collect();
        let decoded: Vec<String> = runs.iter().map(|r| tok.decode(r, false).unwrap()).collect();
        assert_eq!(decoded, contents);
    }
}

#[test]
fn assistant_mask_is_empty_without_assistant_turns() {
    let Some(tok) = smollm2() else { return };
    let (ids, mask) = tok
        .apply_chat_template_with_assistant_mask(&[Message::new("user", "hi")])
        .unwrap();
    assert_eq!(ids.len(), mask.len());
    assert!(mask.iter().all(|&m| m == 0));
}

#[test]
fn save_then_from_dir_round_trips() {
    let Some(tok) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    if let Some(out) = std::env::var_os("SMELT_TOKENIZER_SAVE_TO") {
        // For the Python cross-check: `make_tokenizer_fixtures.py --check-saved $SMELT_TOKENIZER_SAVE_TO`.
        std::fs::create_dir_all(&out).unwrap();
        tok.save(Path::new(&out)).unwrap();
    }
    let back = Tokenizer::from_dir(dir.path()).unwrap();
    check_encodings(&back, "saved");
    check_chats(&back, "saved");
    assert_eq!(back.vocab_size(), tok.vocab_size());
    assert_eq!(
        (
            back.bos_token_id(),
            back.eos_token_id(),
            back.pad_token_id()
        ),
        (tok.bos_token_id(), tok.eos_token_id(), tok.pad_token_id())
    );
    let config: Json = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
}

#[test]
fn loads_the_folder_transformers_exported() {
    // `reference.py export-hf` writes tokenizer.json + chat_template.jinja + tokenizer_config.json.
    let Some(gguf) = gguf_path() else { return };
    let dir = gguf.with_extension("hf");
    if !dir.join("tokenizer.json").exists() {
        eprintln!(
            "skipping: {} not exported (reference.py export-hf)",
            dir.display()
        );
        return;
    }
    let tok = Tokenizer::from_dir(&dir).unwrap();
    check_encodings(&tok, "transformers export");
    check_chats(&tok, "transformers export");
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&dir.path().join("tokenizer.json").display().to_string()),
        "{err}"
    );
}

#[test]
fn malformed_tokenizer_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, "{\"model\": 42").unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("malformed"),
        "{err}"
    );
}

#[test]
fn malformed_tokenizer_config_names_the_file() {
    let Some(tok) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, "{ not json").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&config.display().to_string()), "{err}");
}

#[test]
fn gguf_metadata_without_tokens_names_the_key() {
    let mut md = HashMap::new();
    md.insert(
        "tokenizer.ggml.model".to_string(),
        gguf_file::Value::String("gpt2".into()),
    );
    let err = Tokenizer::from_gguf_metadata(&md, Path::new("broken.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.ggml.tokens") && err.contains("broken.gguf"),
        "{err}"
    );
}

#[test]
fn no_chat_template_is_an_error() {
    let Some(tok) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "{}").unwrap();
    let bare = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(bare.chat_template().is_none());
    assert!(bare
        .apply_chat_template(&[Message::new("user", "hi")], true)
        .is_err());
    assert!(bare
        .apply_chat_template_with_assistant_mask(&[Message::new("user", "hi")])
        .is_err());
}
