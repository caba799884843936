//! `RolloutService` behaviour with a fake generator (no model work): the deterministic
//! version schedule, collecting in-flight batches, a skipped version as an error,
//! deep-copied snapshots, clean shutdown and loud failure.
//! Every test that could hang runs under a timeout.

use candle_core::Device;
use smelt::model::{ModelConfig, ModelType};
use smelt::{Model, Result};
use smelt_rollouts::service::{
    deep_copy, CyclingPrompts, Generator, PromptRow, RolloutService, ServiceConfig,
};
use smelt_rollouts::{FinishReason, Rollout};
use std::sync::mpsc;
use std::time::Duration;

/// One rollout per prompt whose single completion token records the version.
struct Fake {
    panic_on: Option<u64>,
    calls: u64,
}

impl Generator for Fake {
    fn generate(&mut self, _: &Model, prompts: &[PromptRow], version: u64) -> Result<Vec<Rollout>> {
        self.calls += 1;
        if self.panic_on == Some(self.calls) {
            panic!("boom in call {}", self.calls);
        }
        Ok(prompts
            .iter()
            .map(|p| Rollout {
                prompt_index: p.index,
                sample_index: 0,
                prompt_ids: p.prompt_ids.clone(),
                completion_ids: vec![version as u32],
                completion_text: String::new(),
                behaviour_logprobs: vec![0.0],
                processed_logprobs: vec![0.0],
                finish: FinishReason::Stop,
                reward: 0.0,
                rewards: Default::default(),
                weight_version: version,
                generation_s: 0.0,
            })
            .collect())
    }
}

fn model() -> Model {
    Model::new_random(ModelConfig::tiny(ModelType::Llama, 16), &Device::Cpu, 1).unwrap()
}

fn service(max_staleness: u64, capacity: usize, panic_on: Option<u64>) -> RolloutService {
    let prompts =
        CyclingPrompts::new(vec![(vec![1, 2], serde_json::Value::Null); 3], 2, 5).unwrap();
    let config = ServiceConfig {
        max_staleness,
        capacity,
        steps_per_batch: 1,
        start_batch: 0,
        start_version: 0,
        generator_threads: 0,
    };
    RolloutService::start(
        Box::new(Fake { panic_on, calls: 0 }),
        Box::new(prompts),
        config,
    )
    .unwrap()
}

/// Runs `f` on a thread and fails the test if it does not finish within `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("timed out: the service hung")
}

#[test]
fn zero_staleness_waits_for_each_version() {
    within(20, || {
        let (m, mut s) = (model(), service(0, 4, None));
        for v in 0..4 {
            s.publish(v, &m).unwrap();
            let b = s.next(v).unwrap();
            assert_eq!((b.index, b.version), (v, v));
            assert!(b.rollouts.iter().all(|r| r.weight_version == v));
        }
        assert_eq!(s.dropped(), (0, 0));
    });
}

#[test]
fn each_batch_comes_from_exactly_its_scheduled_version_however_fast_the_trainer_is() {
    within(20, || {
        let (m, mut s) = (model(), service(2, 4, None));
        // publish everything at once: a "newest weights" service would use version 5
        for v in 0..6 {
            s.publish(v, &m).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        for n in 0..6u64 {
            let b = s.next(n).unwrap();
            let want = n.saturating_sub(2);
            assert_eq!((b.index, b.version), (n, want));
            assert!(b.rollouts.iter().all(|r| r.completion_ids == [want as u32]));
        }
        assert_eq!(s.dropped(), (0, 0));
    });
}

#[test]
fn collect_waits_for_the_batches_older_than_a_version() {
    within(20, || {
        let (m, mut s) = (model(), service(2, 1, None));
        for v in 0..3 {
            s.publish(v, &m).unwrap();
        }
        s.next(0).unwrap();
        // a checkpoint at version 2: batches 1..=3 come from versions 0, 0, 1 (< 2)
        let got: Vec<(u64, u64)> = s
            .collect(2)
            .unwrap()
            .iter()
            .map(|b| (b.index, b.version))
            .collect();
        assert_eq!(got, [(1, 0), (2, 0), (3, 1)]);
        assert!(
            s.collect(2).unwrap().is_empty(),
            "nothing is collected twice"
        );
        let b = s.next(4).unwrap(); // batch 4 is from version 2
        assert_eq!((b.index, b.version), (4, 2));
    });
}

#[test]
fn a_skipped_version_is_an_error_not_a_hang() {
    within(20, || {
        let (m, mut s) = (model(), service(0, 2, None));
        s.publish(0, &m).unwrap();
        s.next(0).unwrap();
        s.publish(2, &m).unwrap(); // batch 1 needs version 1, which never comes
        let err = s.next(1).unwrap_err().to_string();
        assert!(
            err.contains("version 1") && err.contains("never published"),
            "{err}"
        );
    });
}

#[test]
fn snapshots_are_deep_copies() {
    let m = model();
    let copy = deep_copy(&m).unwrap();
    let (name, var) = &m.vars()[0];
    var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
    let kept = copy
        .named_tensors()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1;
    let sum = kept
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(sum > 0.0, "the copy changed with the original");
}

#[test]
fn shutdown_does_not_hang_even_while_waiting_for_weights() {
    within(10, || {
        let s = service(0, 1, None); // never published: the task waits on the weights channel
        drop(s);
        let (m, mut s) = (model(), service(3, 1, None));
        s.publish(0, &m).unwrap(); // the task runs ahead and blocks on the full channel
        std::thread::sleep(Duration::from_millis(100));
        s.shutdown();
    });
}

#[test]
fn a_panicking_generator_fails_the_run_instead_of_hanging() {
    within(20, || {
        let (m, mut s) = (model(), service(0, 1, Some(2)));
        s.publish(0, &m).unwrap();
        s.next(0).unwrap();
        s.publish(1, &m).unwrap();
        let err = s.next(1).unwrap_err().to_string();
        assert!(err.contains("panicked") && err.contains("boom"), "{err}");
        // and afterwards: an error again, not a hang
        assert!(s.next(1).is_err());
    });
}

#[test]
fn asking_for_a_batch_before_its_version_exists_is_an_error_not_a_hang() {
    within(20, || {
        let (m, mut s) = (model(), service(0, 2, None));
        s.publish(0, &m).unwrap();
        s.next(0).unwrap();
        // batch 1 comes from version 1, which a trainer at version 0 has not published
        let err = s.next(0).unwrap_err().to_string();
        assert!(
            err.contains("version 1") && err.contains("wait forever"),
            "{err}"
        );
    });
}
