//! The crash campaign for post-training: kill `smelt sft`, `smelt dpo` and `smelt grpo`
//! (synchronous, and with asynchronous generation at `max_staleness` 0 and 1) with
//! SIGKILL at random moments (seeded), rerun the same command each time, and require
//! the result to equal an uninterrupted run: every logged loss bit-identical, final
//! weights identical, and every checkpoint `latest` ever pointed at loads cleanly.
//! `cli/tests/pretrain_crash_resume.rs` does the same for `smelt pretrain`.
//!
//! Key decision: every recipe checkpoints after every step (`save_every = 1`), so most
//! of a process's life is spent near or inside a checkpoint write and the random kills
//! land there too. GRPO's rollouts must be a function of the checkpointed weights,
//! prompt cursor and seeds alone for an exact resume: with `max_staleness = 0` each
//! step's rollouts wait for the weights of the step before, inline or on the
//! asynchronous generator task; with `max_staleness = 1` batch `n` is generated from
//! exactly weight version `n - 1`, and a checkpoint stores the rollouts generated from
//! weights older than its own.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;
use smelt::checkpoint::save_pretrained;
use smelt::{Model, ModelConfig, ModelType};
use smelt_pretrain::bpe::{train_bpe, BpeTrainingConfig, CHATML_TEMPLATE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills that must land per job (pretraining lands 10 more in its own test).
const KILLS: usize = 6;

/// A fresh directory under cargo's per-target test scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash_campaign-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny chat model folder (random weights, a byte-level BPE with a ChatML template).
fn tiny_model(dir: &Path) -> PathBuf {
    let sentences = [
        "What is two plus three? Two plus three is five.",
        "What is 7 - 4? The answer is 3. 12 + 9 = 21, 6 * 8 = 48.",
        "The quick brown fox jumps over the lazy dog.",
        "Say hello. Hello! How can I help you today?",
    ];
    let config = BpeTrainingConfig {
        vocab_size: 300,
        min_frequency: 1,
        eos_token: Some("<|im_end|>".into()),
        pad_token: Some("<|endoftext|>".into()),
        chat_template: Some(CHATML_TEMPLATE.into()),
        ..BpeTrainingConfig::default()
    };
    let tokenizer = train_bpe(sentences.iter(), &config, &dir.join("tokenizer")).unwrap();
    let model_config = ModelConfig::tiny(ModelType::Llama, tokenizer.vocab_size());
    let model = Model::new_random(model_config, &candle_core::Device::Cpu, 7).unwrap();
    let out = dir.join("model");
    save_pretrained(&model, Some(&tokenizer), &out).unwrap();
    out
}

/// One CLI job: `smelt <command> --config <recipe>` writing into `run`.
struct Job {
    command: &'static str,
    /// Name in messages (the command, or the command and its mode).
    label: &'static str,
    recipe: PathBuf,
    run: PathBuf,
}

impl Job {
    fn start(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_smelt"))
            .args([self.command, "--config"])
            .arg(&self.recipe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs to the end; panics with stderr when the command fails.
    fn finish(&self, deadline: Duration) {
        let child = Command::new(env!("CARGO_BIN_EXE_smelt"))
            .args([self.command, "--config"])
            .arg(&self.recipe)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(
            started.elapsed() < deadline,
            "{} run did not finish in time",
            self.command
        );
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            self.command,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `(step, loss bits)` of every step record in `metrics.jsonl`.
    fn losses(&self) -> Vec<(u64, u64)> {
        std::fs::read_to_string(self.run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r.get("event").is_none())
            .map(|r| {
                (
                    r["step"].as_u64().unwrap(),
                    r["loss"].as_f64().unwrap().to_bits(),
                )
            })
            .collect()
    }
}

/// Every named weight of the checkpoint at `dir`, flattened; panics when it does not load.
fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (model, _) = smelt::checkpoint::load_folder(dir, &candle_core::Device::Cpu, true)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", dir.display()));
    model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Steps logged so far in `run`'s `metrics.jsonl` (event records and a torn last line
/// not counted).
fn steps_logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|r| r.get("event").is_none())
                .count()
        })
        .unwrap_or(0)
}

/// Runs `job` to the end; returns how long it took to log its first step and in all.
fn timed_run(job: &Job) -> (Duration, Duration) {
    let stderr = job.run.with_extension("stderr");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args([job.command, "--config"])
        .arg(&job.recipe)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut first_step = None;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if first_step.is_none() && steps_logged(&job.run) > 0 {
            first_step = Some(started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{} run did not finish in time",
            job.label
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        status.success(),
        "{} failed:\n{}",
        job.label,
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    let full = started.elapsed();
    (first_step.unwrap_or(full), full)
}

/// Runs `reference` uninterrupted, then SIGKILLs `crashed` [`KILLS`] times at seeded
/// random moments, reruns it to the end, and compares. The weights must have moved away
/// from `initial` (else the comparison proves nothing). Returns the bytes of weights compared.
///
/// Key decision: kills are placed by the crashed run's own progress, not by the clock
/// of the reference run, so a machine that is busier for one run than for the other
/// cannot make a run finish before its kills land. Most kills wait for a seeded random
/// number of further steps to be logged, then a random fraction of one step's time
/// (so they land inside training steps and checkpoint writes alike); some land a random
/// fraction into start-up (loading, resuming, DPO's reference pass).
fn campaign(initial: &Path, reference: &Job, crashed: &Job, steps: usize, seed: u64) -> usize {
    let (startup, full) = timed_run(reference);
    let per_step = (full - startup).div_f64(steps as f64);
    eprintln!(
        "{}: uninterrupted run took {full:?} ({startup:?} to its first step)",
        reference.label
    );

    let mut rng = StdRng::seed_from_u64(seed);
    let (mut kills, mut in_writes, mut starts, mut latest_seen) = (0, 0, 0, Vec::new());
    while kills < KILLS {
        let done = steps_logged(&crashed.run);
        assert!(
            done + 2 < steps && starts < 4 * KILLS,
            "{}: the run reached step {done} of {steps} (or {starts} starts passed) with only \
             {kills} kills landed",
            crashed.label
        );
        let mut child = crashed.start();
        starts += 1;
        if 2 * done < steps && rng.random_range(0..4) == 0 {
            std::thread::sleep(startup.mul_f64(rng.random_range(0.05..1.0)));
        } else {
            // Kill after step `target` is logged, leaving at least one step to run.
            let room = (steps - done - 2).div_ceil(KILLS - kills).max(1);
            let target = done + 1 + rng.random_range(0..room);
            let mut reached = None;
            let jitter = per_step.mul_f64(rng.random_range(0.0..1.0));
            // Then a random fraction of a step, but never past the next step's record.
            while child.try_wait().unwrap().is_none() {
                let logged = steps_logged(&crashed.run);
                if logged >= target {
                    let at = *reached.get_or_insert_with(Instant::now);
                    if logged > target || at.elapsed() >= jitter {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        if child.try_wait().unwrap().is_none() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            kills += 1;
            child.wait().unwrap();
            // A checkpoint being written lives in `.<name>.tmp-<pid>-<n>` until renamed in.
            let tmp = format!(".tmp-{}-", child.id());
            in_writes += std::fs::read_dir(&crashed.run)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .any(|e| e.file_name().to_string_lossy().contains(&tmp))
                })
                .unwrap_or(false) as usize;
        }
        child.wait().unwrap();
        if let Ok(target) = std::fs::read_link(crashed.run.join("latest")) {
            let target = crashed.run.join(target);
            weights(&target); // every checkpoint `latest` names must load
            latest_seen.push(target);
        }
    }
    crashed.finish(full * 4 + Duration::from_secs(120));

    let (a, b) = (reference.losses(), crashed.losses());
    assert_eq!(
        a.len(),
        steps,
        "{} logged {} steps",
        reference.label,
        a.len()
    );
    assert_eq!(
        a, b,
        "{}: losses of the resumed run differ from the uninterrupted run",
        crashed.label
    );
    let (wa, wb) = (
        weights(&reference.run.join("latest")),
        weights(&crashed.run.join("latest")),
    );
    assert_eq!(wa, wb, "{}: final weights differ", crashed.label);
    assert_ne!(
        wa,
        weights(initial),
        "{}: training never moved the weights",
        crashed.label
    );
    let bytes: usize = wa.iter().map(|(_, w)| 4 * w.len()).sum();
    eprintln!(
        "{}: {kills} SIGKILLs ({in_writes} inside a checkpoint write), {starts} resumes, \
         latest named {} checkpoints, {} losses and {bytes} weight bytes identical",
        crashed.label,
        latest_seen.len(),
        a.len()
    );
    bytes
}

/// `smelt sft` on 12 conversations: 120 steps, a checkpoint after each.
#[test]
fn sft_sigkill_anywhere_then_resume_equals_uninterrupted_run() {
    let dir = scratch("sft");
    let model = tiny_model(&dir);
    let data = dir.join("chats.jsonl");
    let rows: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"messages": [{{"role": "user", "content": "What is {i} plus 3?"}}, {{"role": "assistant", "content": "It is {}."}}]}}"#,
                i + 3
            )
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let job = |run: &str| {
        let recipe = dir.join(format!("{run}.toml"));
        let out = dir.join(run);
        std::fs::write(
            &recipe,
            format!(
                "model = {model:?}\n[data]\ntrain_files = [{data:?}]\n[sft]\nmax_length = 64\n\
                 per_device_train_batch_size = 2\nassistant_only_loss = true\n\
                 [train]\noutput_dir = {out:?}\nmax_steps = 120\nlearning_rate = 1e-3\n\
                 save_every = 1\nkeep_last = 2\nprogress = false\nplots = false\n",
            ),
        )
        .unwrap();
        Job {
            command: "sft",
            label: "sft",
            recipe,
            run: out,
        }
    };
    campaign(&model, &job("reference"), &job("crashed"), 120, 11);
}

/// `smelt dpo` on 12 conversational preference pairs: 60 steps, a checkpoint after each,
/// reference log-probs precomputed before training (so every resume recomputes them
/// from the reference model, not from the resumed policy).
#[test]
fn dpo_sigkill_anywhere_then_resume_equals_uninterrupted_run() {
    dpo_campaign("dpo", "dpo", "loss_type = \"sigmoid\"");
}

/// `smelt dpo` with `bco_pair` shifted by its running reward mean: the mean is state of
/// the loss, not of the weights or the data, so it must travel in the checkpoint
/// (`Algorithm::checkpoint_state`); without it a resumed run restarts the mean at zero
/// and its losses part from the uninterrupted run's at the first resumed step.
#[test]
fn dpo_bco_running_mean_sigkill_then_resume_equals_uninterrupted_run() {
    dpo_campaign(
        "dpo-bco",
        "dpo (bco_pair, running mean)",
        "loss_type = [\"sigmoid\", \"bco_pair\"]\nbco_running_mean = true",
    );
}

/// The DPO campaign with `loss` (TOML lines of `[dpo]`) in scratch folder `name`.
fn dpo_campaign(name: &str, label: &'static str, loss: &str) {
    let dir = scratch(name);
    let model = tiny_model(&dir);
    let data = dir.join("pairs.jsonl");
    let rows: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"prompt": [{{"role": "user", "content": "What is {i} plus 3?"}}], "chosen": [{{"role": "assistant", "content": "It is {}."}}], "rejected": [{{"role": "assistant", "content": "It is {}."}}]}}"#,
                i + 3,
                i + 4
            )
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let job = |run: &str| {
        let recipe = dir.join(format!("{run}.toml"));
        let out = dir.join(run);
        std::fs::write(
            &recipe,
            format!(
                "model = {model:?}\n[data]\ntrain_files = [{data:?}]\n\
                 per_device_train_batch_size = 2\n\
                 [dpo]\nmax_length = 64\nbeta = 0.1\n{loss}\n\
                 precompute_ref_log_probs = true\n\
                 [train]\noutput_dir = {out:?}\nmax_steps = 60\nlearning_rate = 1e-3\n\
                 save_every = 1\nkeep_last = 2\nprogress = false\nplots = false\n",
            ),
        )
        .unwrap();
        Job {
            command: "dpo",
            label,
            recipe,
            run: out,
        }
    };
    campaign(&model, &job("reference"), &job("crashed"), 60, 17);
}

/// A `smelt grpo` job on arithmetic prompts: 2 prompts × 4 completions per step, a
/// checkpoint after each. A random model never answers right, so beside `math_answer` a
/// digit-format reward gives the groups non-zero advantages (else every gradient is 0
/// and the weights never move, which would make the comparison vacuous).
fn grpo_job(
    label: &'static str,
    dir: &Path,
    model: &Path,
    run: &str,
    steps: usize,
    generation: &str,
) -> Job {
    let recipe = dir.join(format!("{run}.toml"));
    let out = dir.join(run);
    std::fs::write(
        &recipe,
        format!(
            "model = {model:?}\nmax_batch = 8\n\
             [data]\narithmetic = {{ task = {{ seed = 7, max_operand = 9 }}, num_prompts = 16 }}\n\
             [[rewards]]\nkind = \"math_answer\"\n\
             [[rewards]]\nkind = \"format_regex\"\npattern = \"[0-9]\"\n\
             [grpo]\nnum_generations = 4\nper_device_train_batch_size = 8\n\
             max_completion_length = 8\ntemperature = 1.0\n{generation}\n\
             [train]\noutput_dir = {out:?}\nmax_steps = {steps}\nlearning_rate = 1e-3\n\
             save_every = 1\nkeep_last = 2\nprogress = false\nplots = false\n",
        ),
    )
    .unwrap();
    Job {
        command: "grpo",
        label,
        recipe,
        run: out,
    }
}

/// `smelt grpo`, synchronous generation: 40 steps.
#[test]
fn grpo_sigkill_anywhere_then_resume_equals_uninterrupted_run() {
    let dir = scratch("grpo");
    let model = tiny_model(&dir);
    let generation = "async_generation = false\nmax_staleness = 0";
    let job = |run: &str| grpo_job("grpo (sync)", &dir, &model, run, 40, generation);
    campaign(&model, &job("reference"), &job("crashed"), 40, 13);
}

/// `smelt grpo` with generation on the asynchronous generator task (`max_staleness = 0`):
/// 30 steps; a kill may land while the generator is mid-rollout for the next step.
#[test]
fn async_grpo_sigkill_anywhere_then_resume_equals_uninterrupted_run() {
    let dir = scratch("grpo-async");
    let model = tiny_model(&dir);
    let generation = "async_generation = true\nmax_staleness = 0";
    let job = |run: &str| {
        grpo_job(
            "grpo (async, staleness 0)",
            &dir,
            &model,
            run,
            30,
            generation,
        )
    };
    campaign(&model, &job("reference"), &job("crashed"), 30, 19);
}

/// `smelt grpo` with asynchronous generation one weight version ahead
/// (`max_staleness = 1`): a checkpoint holds the rollouts generated from weights older
/// than its own, so a resumed run trains on exactly what the uninterrupted one did.
/// 30 steps.
#[test]
fn async_grpo_staleness_1_sigkill_anywhere_then_resume_equals_uninterrupted_run() {
    let dir = scratch("grpo-async-s1");
    let model = tiny_model(&dir);
    let generation = "async_generation = true\nmax_staleness = 1";
    let job = |run: &str| {
        grpo_job(
            "grpo (async, staleness 1)",
            &dir,
            &model,
            run,
            30,
            generation,
        )
    };
    campaign(&model, &job("reference"), &job("crashed"), 30, 23);
}
