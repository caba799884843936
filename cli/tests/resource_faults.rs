//! Resource faults in `smelt pretrain`: a disk that fills up during a checkpoint
//! write, and a data shard that goes bad mid-run. Each must stop the run with a clear
//! error naming the file, leave the previous checkpoint intact (and `latest` on it),
//! and let the same command finish once the fault is gone.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn recipe(dir: &Path) -> PathBuf {
    let corpus: Vec<String> = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/corpus/shakespeare-train.jsonl"),
    )
    .unwrap()
    .lines()
    .take(8)
    .map(String::from)
    .collect();
    std::fs::write(dir.join("corpus.jsonl"), corpus.join("\n") + "\n").unwrap();
    let path = dir.join("recipe.toml");
    std::fs::write(
        &path,
        format!(
            r#"
run_dir = "{run}"
[corpus]
inputs = [{{ path = "{corpus}" }}]
[tokenizer]
train = {{ vocab_size = 400 }}
[model]
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
[data]
seq_len = 32
micro_batch_size = 4
[train]
max_steps = 6
save_every = 2
progress = false
plots = false
"#,
            run = dir.join("run").display(),
            corpus = dir.join("corpus.jsonl").display()
        ),
    )
    .unwrap();
    path
}

fn pretrain(recipe: &Path, extra: &[&str], max_file_bytes: Option<u64>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smelt"));
    cmd.args(["pretrain", "--config"]).arg(recipe).args(extra);
    if let Some(limit) = max_file_bytes {
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN); // writes fail with EFBIG instead
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.output().unwrap()
}

fn latest(run: &Path) -> PathBuf {
    run.join(std::fs::read_link(run.join("latest")).expect("latest exists"))
}

fn assert_loads(dir: &Path) {
    smelt::checkpoint::load_folder(dir, &candle_core::Device::Cpu, true)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", dir.display()));
}

#[test]
fn disk_full_during_checkpoint_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let run = dir.path().join("run");
    assert!(
        pretrain(&recipe, &["--set", "train.stop_after_steps=2"], None)
            .status
            .success()
    );
    assert!(latest(&run).ends_with("checkpoint-000002"));

    // Every file is capped at 32 KiB: the next checkpoint's model.safetensors cannot be written.
    let out = pretrain(&recipe, &[], Some(32 * 1024));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run must fail when the disk is full"
    );
    assert!(
        stderr.contains("model.safetensors") || stderr.contains("too large"),
        "{stderr}"
    );
    assert!(
        latest(&run).ends_with("checkpoint-000002"),
        "latest moved to a failed checkpoint"
    );
    assert_loads(&latest(&run));

    // The fault gone, the same command finishes.
    let out = pretrain(&recipe, &[], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(latest(&run).ends_with("checkpoint-000006"));
    assert_loads(&latest(&run));
}

#[test]
fn a_corrupt_shard_mid_run_is_named_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let run = dir.path().join("run");
    assert!(
        pretrain(&recipe, &["--set", "train.stop_after_steps=2"], None)
            .status
            .success()
    );
    let shard = run.join("shards/train/000.ds");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 6]).unwrap(); // the index now disagrees with the data

    let out = pretrain(&recipe, &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("000.ds"),
        "the error must name the shard: {stderr}"
    );
    assert!(latest(&run).ends_with("checkpoint-000002"));
    assert_loads(&latest(&run));
}
