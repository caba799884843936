//! `RolloutService` behaviour with a fake generator (no model work): versions and
//! gating, staleness dropping, deep-copied snapshots, clean shutdown and loud failure.
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
fn batches_staler_than_the_bound_are_dropped_and_counted() {
    within(20, || {
        let (m, mut s) = (model(), service(1, 2, None));
        s.publish(0, &m).unwrap();
        // with staleness 1, batches 0 and 1 may be generated from version 0
        std::thread::sleep(Duration::from_millis(200));
        // the trainer jumps to version 3: buffered version-0 batches are 3 versions old
        s.publish(3, &m).unwrap();
        let b = s.next(3).unwrap();
        assert_eq!(b.version, 3);
        let (batches, rollouts) = s.dropped();
        assert!(
            batches >= 1 && rollouts == 2 * batches,
            "dropped {batches} batches, {rollouts} rollouts"
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
