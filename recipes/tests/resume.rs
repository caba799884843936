//! "Kill the pipeline during any stage and run the same command again": a child
//! process (this test binary re-entered through an environment variable, so no other
//! crate's binary has to be found) runs the shrunken pipeline and is SIGKILLed in the
//! middle of SFT; the rerun skips pretraining and resumes SFT from its last checkpoint.

mod common;

use common::{base_overrides, example, small_corpus, SHRUNKEN};
use serde_json::Value;
use smelt_recipes::{run_pipeline, PipelineRecipe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to the test's temporary folder) in the child process only.
const CHILD: &str = "SMELT_RECIPES_RESUME_CHILD";

/// SFT steps of the killed run (checkpoints every 5, a record every step).
const SFT_STEPS: u64 = 60;

fn overrides(dir: &Path) -> Vec<String> {
    let mut set = base_overrides(dir, &dir.join("corpus.jsonl"));
    set.extend(SHRUNKEN.map(String::from));
    set.extend([
        format!("sft.train.max_steps={SFT_STEPS}"),
        "sft.train.save_every=5".into(),
        "sft.train.log_every=1".into(),
    ]);
    set
}

fn recipe(dir: &Path) -> PipelineRecipe {
    PipelineRecipe::load(&example(), &overrides(dir)).unwrap()
}

/// The child's body: the pipeline command. A no-op in a normal test run.
#[test]
fn child_runs_the_pipeline() {
    if let Ok(dir) = std::env::var(CHILD) {
        run_pipeline(&recipe(Path::new(&dir))).unwrap();
    }
}

/// The `metrics.jsonl` lines of a stage with their steps.
fn records(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v.get("step")
                .and_then(Value::as_u64)
                .map(|s| (s, l.to_string()))
        })
        .collect()
}

/// Every file under `dir` with its bytes, sorted (symlinks as their target).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if let Ok(target) = std::fs::read_link(&p) {
            out.push((p, target.to_string_lossy().as_bytes().to_vec()));
        } else if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// SIGKILL during SFT, rerun: pretraining is skipped (its folder byte-identical), SFT
/// keeps the records up to its last checkpoint untouched and redoes only the rest (each
/// step logged once, 1..=60), and the summary has every stage.
#[test]
fn killed_during_sft_resumes_sft_and_skips_pretraining() {
    let dir = tempfile::tempdir().unwrap();
    small_corpus(dir.path(), 12);
    let run = dir.path().join("run");
    let (sft, metrics) = (run.join("sft"), run.join("sft/metrics.jsonl"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_runs_the_pipeline", "--nocapture"])
        .env(CHILD, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once SFT has a checkpoint and has logged at least two steps past it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let checkpoint_step = loop {
        assert!(Instant::now() < deadline, "SFT never reached a checkpoint");
        assert!(child.try_wait().unwrap().is_none(), "the child ended early");
        let step = std::fs::read_link(sft.join("latest")).ok().and_then(|t| {
            t.file_name()?
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse::<u64>()
                .ok()
        });
        if let Some(step) = step {
            if records(&metrics)
                .last()
                .is_some_and(|(s, _)| *s >= step + 2)
            {
                child.kill().unwrap(); // SIGKILL on unix
                child.wait().unwrap();
                break step;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        !sft.join("done.json").exists(),
        "killed before SFT finished"
    );
    assert!(run.join("pretrain/done.json").is_file());
    let killed = records(&metrics);
    assert!(killed.last().unwrap().0 < SFT_STEPS, "killed mid-stage");
    let pretrain = snapshot(&run.join("pretrain"));

    // Where `latest` points after the kill (a checkpoint may land between poll and kill).
    let checkpoint_step = std::fs::read_link(sft.join("latest"))
        .ok()
        .and_then(|t| {
            t.file_name()?
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(checkpoint_step);
    let summary = run_pipeline(&recipe(dir.path())).unwrap();

    let stages: Vec<&str> = summary.rows.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(stages, ["init", "pretrain", "sft", "dpo", "grpo"]);
    assert!(
        snapshot(&run.join("pretrain")) == pretrain,
        "pretraining was touched"
    );
    let resumed = records(&metrics);
    let steps: Vec<u64> = resumed.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (1..=SFT_STEPS).collect::<Vec<_>>(), "each step once");
    let kept = |r: &[(u64, String)]| -> Vec<String> {
        r.iter()
            .filter(|(s, _)| *s <= checkpoint_step)
            .map(|(_, l)| l.clone())
            .collect()
    };
    assert_eq!(
        kept(&resumed),
        kept(&killed),
        "records up to checkpoint {checkpoint_step} are kept, not recomputed"
    );
    assert_eq!(summary.rows[2].steps, SFT_STEPS);
}
