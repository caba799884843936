//! Kill `smelt pretrain` with SIGKILL at random moments (seeded), rerun the same
//! command each time, and require the result to equal an uninterrupted run: every
//! logged loss bit-identical, final weights identical, and every checkpoint `latest`
//! ever pointed at loads cleanly. Kills land in every stage: corpus preparation,
//! tokenizer training, sharding, training steps and checkpoint writes.

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn smelt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smelt"))
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/corpus")
}

/// A small corpus slice and a recipe that checkpoints every 2 steps.
fn write_recipe(dir: &Path, run: &str) -> PathBuf {
    let train: Vec<String> = std::fs::read_to_string(assets().join("shakespeare-train.jsonl"))
        .unwrap()
        .lines()
        .take(12)
        .map(String::from)
        .collect();
    let corpus = dir.join("corpus.jsonl");
    std::fs::write(&corpus, train.join("\n") + "\n").unwrap();
    let recipe = dir.join(format!("{run}.toml"));
    std::fs::write(
        &recipe,
        format!(
            r#"
run_dir = "{run_dir}"
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
max_steps = 120
learning_rate = 3e-3
save_every = 2
keep_last = 2
progress = false
plots = false
"#,
            run_dir = dir.join(run).display(),
            corpus = corpus.display()
        ),
    )
    .unwrap();
    recipe
}

fn start(recipe: &Path) -> Child {
    smelt()
        .args(["pretrain", "--config"])
        .arg(recipe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("event").is_none())
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (model, _) = smelt::checkpoint::load_folder(dir, &candle_core::Device::Cpu, true)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", dir.display()));
    model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn sigkill_anywhere_then_resume_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    // The uninterrupted reference, timed to place the kills.
    let reference = write_recipe(dir.path(), "reference");
    let t0 = Instant::now();
    assert!(start(&reference).wait().unwrap().success());
    let full = t0.elapsed();

    let crashed = write_recipe(dir.path(), "crashed");
    let run = dir.path().join("crashed");
    let mut rng = StdRng::seed_from_u64(7);
    let mut kills = 0;
    let mut latest_seen = Vec::new();
    // Each resumed process skips finished stages and steps, so delays are short
    // fractions of the full run; keep killing until 10 kills have landed.
    for _ in 0..40 {
        if kills == 10 {
            break;
        }
        let mut child = start(&crashed);
        let delay = full.mul_f64(rng.random_range(0.02..0.15));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            kills += 1;
        }
        child.wait().unwrap();
        if let Ok(target) = std::fs::read_link(run.join("latest")) {
            let target = run.join(target);
            weights(&target); // every checkpoint `latest` names must load
            latest_seen.push(target);
        }
    }
    // Finish with the same command.
    let mut last = start(&crashed);
    let deadline = Instant::now() + full * 4 + Duration::from_secs(60);
    while last.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "resumed run did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(last.wait().unwrap().success());
    assert!(kills == 10, "only {kills} kills landed");
    assert!(!latest_seen.is_empty());

    let (a, b) = (losses(&dir.path().join("reference")), losses(&run));
    assert_eq!(a.len(), 120);
    assert_eq!(
        a, b,
        "losses of the resumed run differ from the uninterrupted run"
    );
    assert_eq!(
        weights(&dir.path().join("reference/latest")),
        weights(&run.join("latest")),
        "final weights differ"
    );
    eprintln!(
        "{kills} SIGKILLs; latest pointed at {} checkpoints over the run",
        latest_seen.len()
    );
}
