//! `smelt launch` with real processes on the CPU (test-only TCP backend):
//! - 2 and 4 ranks of `smelt pretrain` give the losses and final weights of 1 rank with
//!   2× / 4× accumulation (≤ 1e-5 relative);
//! - a 2-rank run stopped and relaunched reproduces the uninterrupted 2-rank run, and
//!   resuming it with one rank fails naming both world sizes;
//! - a 2-rank run from raw documents works (rank 0 prepares the data first);
//! - a rank killed mid-run makes `smelt launch` exit non-zero within seconds naming the
//!   rank, and no rank process survives.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn smelt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smelt"));
    c.env("RAYON_NUM_THREADS", "1"); // several ranks share a small machine
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Trains the tokenizer and writes the shard once (one process), for the ranks to share.
fn prepare(dir: &Path) -> PathBuf {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/corpus");
    let train: Vec<String> = std::fs::read_to_string(assets.join("shakespeare-train.jsonl"))
        .unwrap()
        .lines()
        .take(12)
        .map(String::from)
        .collect();
    let corpus = dir.join("corpus.jsonl");
    std::fs::write(&corpus, train.join("\n") + "\n").unwrap();
    let prep = dir.join("prep");
    let recipe = dir.join("prep.toml");
    std::fs::write(
        &recipe,
        format!(
            "run_dir = \"{}\"\n[corpus]\ninputs = [{{ path = \"{}\" }}]\n[tokenizer]\ntrain = {{ vocab_size = 400 }}\n{MODEL}[data]\nseq_len = 32\nmicro_batch_size = 2\n[train]\nmax_steps = 1\nprogress = false\nplots = false\n",
            prep.display(),
            corpus.display()
        ),
    )
    .unwrap();
    run_ok(smelt().args(["pretrain", "--config"]).arg(&recipe));
    prep
}

const MODEL: &str = "[model]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 2\nnum_key_value_heads = 1\n";

/// A recipe on the prepared tokenizer and shard; `train.*` overrides come on the command line.
fn recipe(dir: &Path, prep: &Path, run: &str) -> PathBuf {
    let path = dir.join(format!("{run}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"run_dir = "{run_dir}"
[tokenizer]
path = "{prep}/tokenizer"
{MODEL}[data]
seq_len = 32
micro_batch_size = 2
sources = [{{ name = "corpus", weight = 1.0, paths = ["{prep}/shards/train/000.ds"] }}]
[train]
max_steps = 8
learning_rate = 3e-3
save_every = 4
progress = false
plots = false
[train.distributed]
backend = "tcp-test"
timeout_s = 60
"#,
            run_dir = dir.join(run).display(),
            prep = prep.display(),
        ),
    )
    .unwrap();
    path
}

fn launch(nproc: usize, recipe: &Path, sets: &[&str]) -> Command {
    let mut c = smelt();
    c.args(["launch", "--nproc", &nproc.to_string(), "--master-port"])
        .arg(free_port().to_string())
        .args(["--", "pretrain", "--config"])
        .arg(recipe);
    for s in sets {
        c.args(["--set", s]);
    }
    c
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

fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let dir = run.join("latest");
    let (model, _) = smelt::checkpoint::load_folder(&dir, &candle_core::Device::Cpu, true)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", dir.display()));
    model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn assert_close(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((s1, l1), (s2, l2)) in a.iter().zip(b) {
        assert_eq!(s1, s2, "{what}");
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs().max(l2.abs()),
            "{what} step {s1}: {l1} vs {l2}"
        );
    }
}

fn assert_weights_close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], what: &str) {
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(b) {
        let diff: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
        let norm: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
        let rel = (diff / norm.max(1e-30)).sqrt();
        assert!(rel <= 1e-5, "{what}: `{n}` differs by {rel:e}");
    }
}

#[test]
fn launched_ranks_match_one_rank_resume_exactly_and_refuse_another_world_size() {
    let dir = tempfile::tempdir().unwrap();
    let prep = prepare(dir.path());
    let r = |run: &str| recipe(dir.path(), &prep, run);

    // 1 process with 4× accumulation is the reference for 2 × 2 and 4 × 1
    run_ok(
        smelt()
            .args(["pretrain", "--config"])
            .arg(r("one"))
            .args(["--set", "train.grad_accumulation_steps=4"]),
    );
    let (one_losses, one_weights) = (
        losses(&dir.path().join("one")),
        weights(&dir.path().join("one")),
    );
    assert_eq!(one_losses.len(), 8);
    for (n, accum) in [(2usize, 2u64), (4, 1)] {
        let run = format!("dp{n}");
        let out = run_ok(&mut launch(
            n,
            &r(&run),
            &[&format!("train.grad_accumulation_steps={accum}")],
        ));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("[rank {}]", n - 1)), "{stderr}");
        assert_close(&one_losses, &losses(&dir.path().join(&run)), &run);
        assert_weights_close(&weights(&dir.path().join(&run)), &one_weights, &run);
    }

    // stopped after 6 steps (checkpoint at 4), relaunched: equals the uninterrupted dp2 run
    let split = r("split");
    run_ok(&mut launch(
        2,
        &split,
        &[
            "train.grad_accumulation_steps=2",
            "train.stop_after_steps=6",
        ],
    ));
    run_ok(&mut launch(2, &split, &["train.grad_accumulation_steps=2"]));
    let (a, b) = (dir.path().join("dp2"), dir.path().join("split"));
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(weights(&a), weights(&b));

    // one process cannot continue a 2-rank run
    let out = smelt()
        .args(["pretrain", "--config"])
        .arg(&split)
        .args(["--set", "train.max_steps=12"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("world size 2") && err.contains("world size 1"),
        "{err}"
    );

    // from raw documents: rank 0 prepares corpus, tokenizer and shards while rank 1 waits
    let fresh = dir.path().join("fresh.toml");
    let text = std::fs::read_to_string(dir.path().join("prep.toml"))
        .unwrap()
        .replace(
            &prep.display().to_string(),
            &dir.path().join("fresh").display().to_string(),
        )
        .replace("max_steps = 1", "max_steps = 2")
        + "[train.distributed]\nbackend = \"tcp-test\"\n";
    std::fs::write(&fresh, text).unwrap();
    let mut c = smelt();
    c.args(["launch", "--nproc", "2", "--master-port"])
        .arg(free_port().to_string())
        .args(["--", "pretrain", "--config"])
        .arg(&fresh);
    run_ok(&mut c);
    assert_eq!(losses(&dir.path().join("fresh")).len(), 2);
    assert!(!weights(&dir.path().join("fresh")).is_empty());
}

#[test]
fn a_killed_rank_stops_the_launch_within_seconds_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let prep = prepare(dir.path());
    let recipe = recipe(dir.path(), &prep, "long");
    let mut child = launch(
        2,
        &recipe,
        &["train.max_steps=1000000", "train.save_every=0"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // read the launcher's stderr: rank pids first, then the ranks' own lines
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut pids = Vec::new();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines
        .iter()
        .any(|l: &String| l.contains("data parallel: 2 ranks"))
    {
        assert!(
            Instant::now() < deadline,
            "training never started: {lines:#?}"
        );
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        if let Some(pid) = line
            .strip_prefix("smelt launch: rank ")
            .and_then(|r| r.split(" pid ").nth(1))
        {
            pids.push(pid.trim().parse::<i32>().unwrap());
        }
        lines.push(line);
    }
    assert_eq!(pids.len(), 2, "{lines:#?}");
    std::thread::sleep(Duration::from_millis(500)); // mid-run
    let killed_at = Instant::now();
    unsafe { libc::kill(pids[1], libc::SIGKILL) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "smelt launch did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = killed_at.elapsed();
    assert!(!status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    let all = [lines, rest].concat().join("\n");
    assert!(all.contains("rank 1 (pid"), "{all}");
    assert!(all.contains("rank 1 of 2 was killed by signal 9"), "{all}");
    for pid in pids {
        // no such process: neither running nor left as a zombie
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "rank pid {pid} survived the launcher");
    }
}
