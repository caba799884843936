//! Telemetry: the metrics log's resume and crash behaviour, the throughput
//! watchdog's thresholds, the FLOPs/MFU arithmetic, the plots and the plain-line
//! progress output.
//!
//! Run: `cargo test -p smelt --test telemetry`. To look at the plots it draws:
//! `SMELT_KEEP_PLOTS=some/dir cargo test -p smelt --test telemetry plots`.

use serde_json::{json, Value};
use smelt::model::ModelType;
use smelt::telemetry::{
    matmul_params, mfu, peak_rss_mb, plot_metrics, plot_metrics_with, training_flops_per_token,
    MetricsLog, PlotOptions, Progress, ThroughputConfig, ThroughputMonitor, WarningKind,
};
use smelt::ModelConfig;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn steps(records: &[Value]) -> Vec<Option<u64>> {
    records.iter().map(|r| r["step"].as_u64()).collect()
}

#[test]
fn metrics_round_trip_then_truncate_for_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    log.write(&json!({"event": "start", "model": "tiny"}))
        .unwrap();
    for s in 1..=10u64 {
        log.write(&json!({"step": s, "loss": 10.0 / s as f64, "lr": 3e-4}))
            .unwrap();
    }
    let all = MetricsLog::read_all(&path).unwrap();
    assert_eq!(all.len(), 11);
    assert_eq!(all[0]["event"], "start");
    assert_eq!(all[4], json!({"step": 4, "loss": 2.5, "lr": 3e-4}));

    // Resume at step 6: steps 7..=10 are redone, so their old records go.
    log.truncate_after_step(6).unwrap();
    log.write(&json!({"step": 7, "loss": 1.0})).unwrap();
    let all = MetricsLog::read_all(&path).unwrap();
    let mut expected: Vec<Option<u64>> = vec![None];
    expected.extend((1..=7).map(Some));
    assert_eq!(steps(&all), expected);
    assert_eq!(
        all.last().unwrap()["loss"],
        1.0,
        "the new step 7, not the old one"
    );

    // Reopening (a second resume) appends after what is there.
    drop(log);
    let mut log = MetricsLog::open(&path).unwrap();
    log.write(&json!({"step": 8})).unwrap();
    assert_eq!(MetricsLog::read_all(&path).unwrap().len(), 9);

    // No temporary files are left beside the log.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["metrics.jsonl"]);
}

#[test]
fn corrupted_line_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let text = "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3, \"loss\": oops}\n{\"step\": 4}\n";
    std::fs::write(&path, text).unwrap();
    let err = MetricsLog::read_all(&path).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl:3"), "{err}");

    // Truncating must not rewrite (and so silently lose) a log it cannot parse.
    let mut log = MetricsLog::open(&path).unwrap();
    let err = log.truncate_after_step(1).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl:3"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // A line that is JSON but not an object is rejected too, and so is a bad step.
    std::fs::write(&path, "{\"step\": 1}\n[1, 2]\n").unwrap();
    let err = MetricsLog::read_all(&path).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl:2") && err.contains("object"),
        "{err}"
    );
    std::fs::write(&path, "{\"step\": 1}\n{\"step\": -3}\n").unwrap();
    let mut log = MetricsLog::open(&path).unwrap();
    let err = log.truncate_after_step(0).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl:2") && err.contains("step"),
        "{err}"
    );
    assert!(
        log.write(&json!([1, 2])).is_err(),
        "records must be objects"
    );
}

#[test]
fn torn_last_line_from_a_crash_is_dropped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    // The writer died in the middle of step 3's record.
    std::fs::write(&path, "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3, \"lo").unwrap();
    let mut log = MetricsLog::open(&path).unwrap();
    log.write(&json!({"step": 3, "loss": 2.0})).unwrap();
    let all = MetricsLog::read_all(&path).unwrap();
    assert_eq!(steps(&all), vec![Some(1), Some(2), Some(3)]);

    // A complete record that merely lacks its newline is kept.
    std::fs::write(&path, "{\"step\": 1}").unwrap();
    let mut log = MetricsLog::open(&path).unwrap();
    log.write(&json!({"step": 2})).unwrap();
    assert_eq!(
        steps(&MetricsLog::read_all(&path).unwrap()),
        vec![Some(1), Some(2)]
    );
}

/// Steady 1000 tok/s with ±10% deterministic jitter (inside the default ±30% band).
fn noisy(step: u64) -> f64 {
    1000.0 * (1.0 + 0.1 * ((step * 7919 % 21) as f64 / 10.0 - 1.0))
}

#[test]
fn throughput_monitor_flags_a_planted_drop_but_not_noise_or_warmup() {
    let mut mon = ThroughputMonitor::new(ThroughputConfig::default()).unwrap();
    // Warmup: the first 5 steps are slow (allocation, compilation) and never flagged.
    for step in 1..=5 {
        assert_eq!(
            mon.observe(step, 100.0, 0.9, 1.0),
            None,
            "warmup step {step}"
        );
    }
    assert_eq!(mon.median(), None, "warmup steps stay out of the window");
    for step in 6..=80 {
        let w = mon.observe(step, noisy(step), 0.01, 1.0);
        assert_eq!(w, None, "noise at step {step}");
    }
    let median = mon.median().unwrap();
    assert!((median - 1000.0).abs() < 60.0, "median {median}");

    // A 50% drop: below 0.7 × median.
    let w = mon.observe(81, 500.0, 0.01, 2.0).expect("drop is flagged");
    assert_eq!(w.step, 81);
    assert_eq!(w.kind, WarningKind::ThroughputDrop);
    assert!(
        w.message.contains("step 81") && w.message.contains("below the median"),
        "{}",
        w.message
    );
    assert_eq!(w.median_tokens_per_s, Some(median));

    // Just inside the band (25% below) is not flagged.
    assert_eq!(mon.observe(82, 0.75 * median, 0.01, 1.0), None);
}

#[test]
fn throughput_monitor_flags_data_stalls() {
    let config = ThroughputConfig {
        warmup: 2,
        ..ThroughputConfig::default()
    };
    let mut mon = ThroughputMonitor::new(config).unwrap();
    for step in 1..=10 {
        assert_eq!(mon.observe(step, 1000.0, 0.1, 1.0), None);
    }
    // Waiting 40% of the step is below the 50% threshold.
    assert_eq!(mon.observe(11, 1000.0, 0.4, 1.0), None);
    // 60% of the step waiting for data, throughput unchanged: a stall.
    let w = mon.observe(12, 1000.0, 0.6, 1.0).expect("stall is flagged");
    assert_eq!(w.kind, WarningKind::DataStall);
    assert!((w.data_wait_fraction - 0.6).abs() < 1e-12);
    assert!(w.message.contains("data stall"), "{}", w.message);
    // Stall and drop together are reported as a stall (the cause), naming both.
    let w = mon.observe(13, 400.0, 1.5, 2.5).expect("flagged");
    assert_eq!(w.kind, WarningKind::DataStall);
    assert!(w.message.contains("below the median"), "{}", w.message);
}

#[test]
fn throughput_config_defaults_and_validation() {
    let c: ThroughputConfig = serde_json::from_str("{\"window\": 10}").unwrap();
    assert_eq!(c.window, 10);
    assert_eq!(c.drop_fraction, 0.3);
    assert_eq!(c.warmup, 5);
    assert_eq!(c.data_stall_fraction, 0.5);
    let err = serde_json::from_str::<ThroughputConfig>("{\"windw\": 10}").unwrap_err();
    assert!(err.to_string().contains("windw"), "{err}");
    let bad = ThroughputConfig {
        drop_fraction: 1.5,
        ..ThroughputConfig::default()
    };
    let err = ThroughputMonitor::new(bad).unwrap_err().to_string();
    assert!(err.contains("drop_fraction"), "{err}");
}

/// `ModelConfig::tiny(Llama, 256)`: d = 64, ff = 128, L = 2, 4 query heads and 2 kv
/// heads of width 16, vocab 256, tied head.
///
/// Matmul weights per layer:
///   q_proj 64·64 = 4096, k_proj + v_proj 2·64·32 = 4096, o_proj 64·64 = 4096,
///   gate/up/down 3·64·128 = 24576  → 36864; × 2 layers = 73728.
/// LM head (tied, but still a matmul) 64·256 = 16384  → N = 90112.
/// 6·N = 540672. Attention at T = 128: 12·L·(H·Q)·T = 12·2·64·128 = 196608.
/// FLOPs/token = 540672 + 196608 = 737280.
/// MFU at 1e6 tok/s on a 1e12 FLOP/s peak = 737280·1e6 / 1e12 = 0.73728.
#[test]
fn mfu_matches_the_hand_computed_example() {
    let cfg = ModelConfig::tiny(ModelType::Llama, 256);
    assert_eq!(matmul_params(&cfg), 90_112);
    let fpt = training_flops_per_token(&cfg, 128);
    assert_eq!(fpt, 737_280.0);
    assert!((mfu(fpt, 1e6, 1e12) - 0.73728).abs() < 1e-12);
    assert!(mfu(fpt, 1e6, 0.0).is_nan());

    // Cross-check against the model's own parameter count: untied, the matmul weights
    // are everything except the embedding (V·d) and the norms (2·d per layer + d).
    let mut untied = cfg.clone();
    untied.tie_word_embeddings = false;
    let (d, v, l) = (64u64, 256u64, 2u64);
    assert_eq!(
        matmul_params(&untied),
        untied.num_parameters() as u64 - v * d - (2 * d * l + d)
    );
}

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 1000, "{} is nearly empty", path.display());
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// `scratch/name`, or `$SMELT_KEEP_PLOTS/name` to keep the PNGs for a look.
fn plots_dir(scratch: &Path, name: &str) -> std::path::PathBuf {
    std::env::var_os("SMELT_KEEP_PLOTS")
        .map_or_else(|| scratch.to_path_buf(), std::path::PathBuf::from)
        .join(name)
}

#[test]
fn plots_are_png_files_of_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&log_path).unwrap();
    log.write(&json!({"event": "start"})).unwrap();
    for s in 1..=200u64 {
        let x = s as f64;
        let lr = 3e-4 * (x / 20.0).min(1.0);
        let mut r = json!({"step": s, "loss": 2.0 + 8.0 * (-x / 40.0).exp(), "lr": lr,
                           "tokens_per_s": 12_000.0 + 500.0 * (x / 7.0).sin()});
        if s % 25 == 0 {
            r["eval_loss"] = json!(2.2 + 8.0 * (-x / 40.0).exp());
        }
        if s == 120 {
            r["loss"] = Value::Null; // a NaN loss is logged as null: a gap in the line, not an error
        }
        log.write(&r).unwrap();
    }
    let out = plots_dir(dir.path(), "plots");
    let written = plot_metrics(&log_path, &out).unwrap();
    let names: Vec<_> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    // grad_norm is absent from the log, so its plot is skipped.
    assert_eq!(names, vec!["loss.png", "lr.png", "tokens_per_s.png"]);
    let default = PlotOptions::default();
    for p in &written {
        assert_eq!(png_size(p), (default.width, default.height));
    }
    assert!(!out.join("grad_norm.png").exists());

    let small = PlotOptions {
        width: 640,
        height: 400,
    };
    let written = plot_metrics_with(&log_path, &dir.path().join("small"), &small).unwrap();
    assert_eq!(png_size(&written[0]), (640, 400));
    // Only the PNGs are left: no temporary files.
    assert_eq!(
        std::fs::read_dir(dir.path().join("small")).unwrap().count(),
        3
    );
}

#[test]
fn post_training_logs_get_their_own_curves() {
    let dir = tempfile::tempdir().unwrap();
    let plots = |name: &str, records: Vec<Value>| -> Vec<String> {
        let path = dir.path().join(format!("{name}.jsonl"));
        let mut log = MetricsLog::open(&path).unwrap();
        for r in &records {
            log.write(r).unwrap();
        }
        plot_metrics(&path, &plots_dir(dir.path(), name))
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let grpo = (1..=20u64)
        .map(|s| json!({"step": s, "loss": 0.0, "reward": 0.2 + 0.01 * s as f64, "entropy": 0.5}))
        .collect();
    assert_eq!(
        plots("grpo", grpo),
        ["loss.png", "reward.png", "entropy.png"]
    );
    let dpo = (1..=20u64)
        .map(
            |s| json!({"step": s, "loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.1}),
        )
        .collect();
    assert_eq!(
        plots("dpo", dpo),
        ["loss.png", "reward_accuracy.png", "reward_margin.png"]
    );
}

/// A `Write` that appends into a shared buffer the test can read.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn progress_prints_plain_lines_when_not_on_a_terminal() {
    let buf = Shared::default();
    let mut p = Progress::with_writer(100, 50, Box::new(buf.clone())).plain_every(10);
    for step in 51..=100 {
        p.update(step, 3.2149, 3e-4, 1234.4);
        if step == 75 {
            p.println("eval: loss 3.30");
        }
    }
    p.finish();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let status: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("step "))
        .collect();
    // The first step of this (resumed) process, every 10th step, and the last.
    let printed: Vec<&str> = status
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(
        printed,
        vec!["51/100", "60/100", "70/100", "80/100", "90/100", "100/100"]
    );
    assert!(
        status[1].starts_with("step 60/100 loss 3.21 lr 3.0e-4 1,234 tok/s ETA "),
        "{}",
        status[1]
    );
    assert!(lines.contains(&"eval: loss 3.30"));
    assert!(
        lines.last().unwrap().starts_with("done: 50 steps in "),
        "{text}"
    );

    // The stderr-backed constructors must not panic, bar or not.
    for enabled in [true, false] {
        let mut p = Progress::new(3, 0, enabled);
        p.update(1, 1.0, 1e-3, 10.0);
        p.println("message");
        p.finish();
    }
}

#[test]
fn peak_rss_is_reported_on_linux() {
    let rss = peak_rss_mb();
    if cfg!(target_os = "linux") {
        let mb = rss.expect("VmHWM is available on Linux");
        assert!(mb > 1.0 && mb < 1e6, "{mb} MiB");
    } else {
        assert_eq!(rss, None);
    }
}
