//! The mutation fuzzer shared by `tests/fuzz_readers.rs` and
//! `pretrain/tests/fuzz_pretrain_readers.rs` (included with `#[path]`).
//!
//! Key decision: deterministic and dependency-free. A splitmix64 stream seeded by
//! `SMELT_FUZZ_SEED` (default 0) drives every mutation, so a failing case is named by
//! its iteration and replays exactly; `SMELT_FUZZ_ITERS` (default 2000) sets the random
//! cases per reader, on top of a deterministic pass over each seed (truncation at every
//! region boundary, every plausible length/offset field rewritten to a huge value).
//! `SMELT_FUZZ_SECS`, when set, replaces the iteration count with a wall-clock budget
//! for the random cases (long local runs: `fuzz/long_run.sh`).

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a single case may take (debug builds included) before it counts as a hang.
pub const CASE_LIMIT: Duration = Duration::from_secs(10);
/// Growth of the process's peak RSS over the fuzzing start allowed across all cases.
pub const RSS_BUDGET_MB: f64 = 512.0;

/// How a seed may be mutated beyond raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Structure {
    /// Bytes only.
    Binary,
    /// One JSON document.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A TOML document.
    Toml,
    /// Plain text.
    Text,
    /// An 8-byte little-endian header length, a JSON header, then data.
    Safetensors,
}

/// One reader under test.
pub struct Target<'a> {
    /// Short name (the corpus folder and the work folder).
    pub name: &'a str,
    /// Name of the file the mutated input is written to; errors must contain it.
    pub file_name: &'a str,
    /// Folder of seed files.
    pub seeds: PathBuf,
    /// Structure-aware mutations to apply besides byte mutations.
    pub structure: Structure,
    /// Reads the file at the path; `Err` carries the user-facing message.
    pub run: &'a (dyn Fn(&Path) -> Result<(), String> + Sync),
}

/// splitmix64 (Steele, Lea & Flood 2014): tiny, fast, and good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Values a lying length or offset field is rewritten to.
const HUGE: [u64; 4] = [u64::MAX, 1 << 40, 1 << 32, u32::MAX as u64];

/// Offsets of 8- and 4-byte little-endian integers in `seed` whose value could be a
/// length or an offset into it (1..=len): the fields a lying header would rewrite.
fn length_fields(seed: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for width in [8usize, 4] {
        for at in 0..seed.len().saturating_sub(width - 1) {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(&seed[at..at + width]);
            let v = u64::from_le_bytes(b);
            if v >= 1 && v <= seed.len() as u64 {
                out.push((at, width));
            }
        }
    }
    out
}

/// Region boundaries of `seed`: structural characters of text formats, the header
/// and each tensor's bytes of a safetensors file, else every offset of the first
/// 4 KiB (binary headers) and every 64th after.
fn boundaries(seed: &[u8], structure: Structure) -> Vec<usize> {
    let mut cuts: Vec<usize> = match structure {
        Structure::Json | Structure::Jsonl | Structure::Toml | Structure::Text => seed
            .iter()
            .enumerate()
            .filter(|(_, b)| b"{}[],:\"\n=".contains(b))
            .flat_map(|(i, _)| [i, i + 1])
            .collect(),
        Structure::Safetensors => {
            let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
            let header: Value = serde_json::from_slice(&seed[8..8 + n]).unwrap();
            let mut cuts = vec![0, 4, 8, 8 + n / 2, 8 + n];
            for info in header.as_object().unwrap().values() {
                if let Some(o) = info.get("data_offsets").and_then(Value::as_array) {
                    cuts.extend(
                        o.iter()
                            .filter_map(Value::as_u64)
                            .map(|x| 8 + n + x as usize),
                    );
                }
            }
            cuts
        }
        Structure::Binary => (0..seed.len().min(4096))
            .chain((4096..seed.len()).step_by(64))
            .collect(),
    };
    cuts.retain(|&c| c < seed.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Wrong-typed replacements for a JSON/TOML value (no null for TOML: it has none).
fn wrong_value(rng: &mut Rng, toml: bool) -> Value {
    let choices = [
        Value::Bool(true),
        serde_json::json!(-1),
        serde_json::json!(u32::MAX),
        serde_json::json!(1e308),
        serde_json::json!(0.5),
        serde_json::json!(""),
        serde_json::json!("\u{0}\u{ffff}"),
        serde_json::json!([]),
        serde_json::json!([[[[1]]]]),
        serde_json::json!({}),
        serde_json::json!({"type": "x"}),
        Value::Null,
    ];
    let n = if toml {
        choices.len() - 1
    } else {
        choices.len()
    };
    choices[rng.below(n)].clone()
}

/// Every JSON pointer in `v` (the root excluded).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    let esc = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            let p = format!("{at}/{}", esc(k));
            out.push(p.clone());
            pointers(c, p, out);
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
            let p = format!("{at}/{i}");
            out.push(p.clone());
            pointers(c, p, out);
        }),
        _ => {}
    }
}

/// `v` with one random node replaced by a wrong-typed value, or removed.
fn mutate_value(mut v: Value, rng: &mut Rng, toml: bool) -> (Value, String) {
    let mut ps = Vec::new();
    pointers(&v, String::new(), &mut ps);
    if ps.is_empty() {
        return (wrong_value(rng, toml), "root replaced".into());
    }
    let p = ps[rng.below(ps.len())].clone();
    let (parent, key) = p.rsplit_once('/').unwrap();
    if rng.below(5) == 0 {
        match v.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                m.remove(&key.replace("~1", "/").replace("~0", "~"));
            }
            Some(Value::Array(a)) => {
                a.remove(key.parse::<usize>().unwrap());
            }
            _ => {}
        }
        return (v, format!("removed {p}"));
    }
    let w = wrong_value(rng, toml);
    let what = format!("{p} := {w}");
    *v.pointer_mut(&p).unwrap() = w;
    (v, what)
}

/// A structure-aware mutation of `seed`, when the structure allows one.
fn mutate_structured(seed: &[u8], s: Structure, rng: &mut Rng) -> Option<(Vec<u8>, String)> {
    match s {
        Structure::Json => {
            let v: Value = serde_json::from_slice(seed).ok()?;
            let (v, what) = mutate_value(v, rng, false);
            Some((serde_json::to_vec(&v).ok()?, what))
        }
        Structure::Jsonl => {
            let text = std::str::from_utf8(seed).ok()?;
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            let i = rng.below(lines.len().max(1));
            let v: Value = serde_json::from_str(lines.get(i)?).ok()?;
            let (v, what) = mutate_value(v, rng, false);
            lines[i] = serde_json::to_string(&v).ok()?;
            Some((
                (lines.join("\n") + "\n").into_bytes(),
                format!("line {}: {what}", i + 1),
            ))
        }
        Structure::Toml => {
            let t: toml::Table = toml::from_str(std::str::from_utf8(seed).ok()?).ok()?;
            let v = serde_json::to_value(t).ok()?;
            let (v, what) = mutate_value(v, rng, true);
            Some((toml::to_string(&v).ok()?.into_bytes(), what))
        }
        Structure::Safetensors => {
            let n = u64::from_le_bytes(seed.get(..8)?.try_into().ok()?) as usize;
            let header: Value = serde_json::from_slice(seed.get(8..8 + n)?).ok()?;
            let (mut header, what) = mutate_value(header, rng, false);
            // Half the time, make an offset or a dimension lie instead.
            if rng.below(2) == 0 {
                let mut ps = Vec::new();
                pointers(&header, String::new(), &mut ps);
                let nums: Vec<_> = ps
                    .into_iter()
                    .filter(|p| p.contains("data_offsets") || p.contains("shape"))
                    .filter(|p| p.matches('/').count() == 3)
                    .collect();
                if !nums.is_empty() {
                    let p = &nums[rng.below(nums.len())];
                    let huge = HUGE[rng.below(HUGE.len())];
                    *header.pointer_mut(p)? = huge.into();
                    let body = serde_json::to_vec(&header).ok()?;
                    let mut out = (body.len() as u64).to_le_bytes().to_vec();
                    out.extend(body);
                    out.extend(&seed[8 + n..]);
                    return Some((out, format!("{p} := {huge}")));
                }
            }
            let body = serde_json::to_vec(&header).ok()?;
            let mut out = (body.len() as u64).to_le_bytes().to_vec();
            out.extend(body);
            out.extend(&seed[8 + n..]);
            Some((out, format!("header {what}")))
        }
        Structure::Binary | Structure::Text => None,
    }
}

/// A random byte-level mutation of `seed` (1 to 4 stacked).
fn mutate_bytes(seed: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let mut b = seed.to_vec();
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(7) {
            0 | 1 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
                what.push(format!("flip@{i}"));
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, bytes);
                what.push(format!("insert{n}@{i}"));
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                b.drain(i..i + n);
                what.push(format!("delete{n}@{i}"));
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = b[i..i + n].to_vec();
                let j = rng.below(len + 1);
                b.splice(j..j, chunk);
                what.push(format!("dup{n}@{i}->{j}"));
            }
            5 if len > 0 => {
                let i = rng.below(len);
                b.truncate(i);
                what.push(format!("truncate@{i}"));
            }
            _ if len >= 8 => {
                let i = rng.below(len - 7);
                let huge = HUGE[rng.below(HUGE.len())];
                b[i..i + 8].copy_from_slice(&huge.to_le_bytes());
                what.push(format!("u64@{i}:={huge}"));
            }
            _ => {}
        }
    }
    (b, what.join(","))
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the panic hook once: panics inside a case are recorded for the report, not
/// printed; any other panic (the test's own assertions) goes to the default hook.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let msg = format!("{info}");
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
            } else {
                default(info);
            }
        }));
    });
}

/// Peak RSS when fuzzing first started in this process.
fn rss_baseline() -> f64 {
    static BASE: OnceLock<f64> = OnceLock::new();
    *BASE.get_or_init(|| smelt::telemetry::peak_rss_mb().unwrap_or(0.0))
}

/// Fuzzes `target`: seeds must read cleanly, then every mutated case must end in
/// `Ok` or an error naming the file, without a panic, a hang or a memory blow-up.
pub fn fuzz(target: Target) {
    quiet_panics();
    let base_rss = rss_baseline();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz")
        .join(target.name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let input = work.join(target.file_name);

    let mut seed_files: Vec<PathBuf> = std::fs::read_dir(&target.seeds)
        .unwrap_or_else(|e| panic!("{}: {e}", target.seeds.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    seed_files.sort();
    assert!(
        !seed_files.is_empty(),
        "no seeds in {}",
        target.seeds.display()
    );
    let seeds: Vec<Vec<u8>> = seed_files
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    let mut failures = Vec::new();
    let (cases, errors) = (Cell::new(0usize), Cell::new(0usize));
    let rss_blamed = Cell::new(false);
    let check = |bytes: &[u8], what: String, failures: &mut Vec<String>| {
        cases.set(cases.get() + 1);
        std::fs::write(&input, bytes).unwrap();
        let started = Instant::now();
        IN_CASE.with(|c| c.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        IN_CASE.with(|c| c.set(false));
        let took = started.elapsed();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                errors.set(errors.get() + 1);
                if !msg.contains(target.file_name) {
                    failures.push(format!("{what}: error does not name the file: {msg}"));
                }
            }
            Err(_) => {
                let saved = work.join(format!("crash-{}-{}", failures.len(), target.file_name));
                std::fs::write(&saved, bytes).unwrap();
                let msg = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_default();
                failures.push(format!(
                    "{what}: PANIC ({msg}); input saved at {}",
                    saved.display()
                ));
            }
        }
        if took > CASE_LIMIT {
            failures.push(format!("{what}: took {took:?}"));
        }
        // Peak RSS only grows, so the first case past the budget is the one to blame.
        let grown = smelt::telemetry::peak_rss_mb().unwrap_or(0.0) - base_rss;
        if grown >= RSS_BUDGET_MB && !rss_blamed.get() {
            rss_blamed.set(true);
            let saved = work.join(format!("oom-{}-{}", failures.len(), target.file_name));
            std::fs::write(&saved, bytes).unwrap();
            failures.push(format!(
                "{what}: peak RSS grew by {grown:.0} MB; input saved at {}",
                saved.display()
            ));
        }
    };

    for (file, seed) in seed_files.iter().zip(&seeds) {
        std::fs::write(&input, seed).unwrap();
        if let Err(e) = (target.run)(&input) {
            panic!("seed {} does not read cleanly: {e}", file.display());
        }
    }
    let started = Instant::now();
    for (file, seed) in seed_files.iter().zip(&seeds) {
        let name = file.file_name().unwrap().to_string_lossy();
        for cut in boundaries(seed, target.structure) {
            check(
                &seed[..cut],
                format!("{name} truncated at {cut}"),
                &mut failures,
            );
        }
        // Length fields of binary headers (text formats have their numbers in text).
        if matches!(target.structure, Structure::Binary | Structure::Safetensors) {
            for (at, width) in length_fields(&seed[..seed.len().min(4096)]) {
                // (The low 4 bytes of 2^40 and 2^32 are zero: u32 fields get their own values.)
                let values: [u64; 2] = if width == 8 {
                    [u64::MAX, 1 << 40]
                } else {
                    [u32::MAX as u64, 1 << 31]
                };
                for huge in values {
                    let mut b = seed.clone();
                    b[at..at + width].copy_from_slice(&huge.to_le_bytes()[..width]);
                    check(
                        &b,
                        format!("{name} u{}@{at} := {huge}", width * 8),
                        &mut failures,
                    );
                }
            }
        }
    }
    let deterministic = cases.get();
    let mut rng = Rng::new(env_u64("SMELT_FUZZ_SEED", 0) ^ fnv(target.name));
    let budget = std::env::var("SMELT_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let iters = if budget.is_some() {
        u64::MAX
    } else {
        env_u64("SMELT_FUZZ_ITERS", 2000)
    };
    for iter in 0..iters {
        if let Some(b) = budget {
            if started.elapsed() >= b {
                break;
            }
            if iter % 1000 == 0 {
                eprintln!(
                    "fuzz {}: {:.0}s, {} cases, {} failures",
                    target.name,
                    started.elapsed().as_secs_f64(),
                    cases.get(),
                    failures.len()
                );
            }
        }
        let i = rng.below(seeds.len());
        let structured = if rng.below(3) == 0 {
            mutate_structured(&seeds[i], target.structure, &mut rng)
        } else {
            None
        };
        let (bytes, what) = structured.unwrap_or_else(|| mutate_bytes(&seeds[i], &mut rng));
        let name = seed_files[i].file_name().unwrap().to_string_lossy();
        check(
            &bytes,
            format!("iter {iter} on {name}: {what}"),
            &mut failures,
        );
    }
    let grown = smelt::telemetry::peak_rss_mb().unwrap_or(0.0) - base_rss;
    eprintln!(
        "fuzz {}: {} cases ({deterministic} deterministic), {} rejected with an error, \
         {} failures, {:.1}s, peak RSS +{grown:.0} MB",
        target.name,
        cases.get(),
        errors.get(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        grown < RSS_BUDGET_MB,
        "{}: peak RSS grew by {grown:.0} MB",
        target.name
    );
    assert!(
        failures.is_empty(),
        "{}: {} failing cases:\n{}",
        target.name,
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// FNV-1a of `s`: a per-reader offset of the mutation stream.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
