//! `smelt bench`: the smelt side of `shared/bench/side-by-side.sh`.
//!
//! Runs the exact workloads of `reference.py` (same splitmix64 token stream, same
//! optimizer, same loss) and prints one JSON object as its last line with the same
//! keys (`tokens_per_s`, `step_s_median`, `peak_rss_mb`, `losses`,
//! `new_tokens_per_s`), so the two sides compare as a ratio on one machine.
//! Key decision: the training step computes its loss through the fused chunked
//! `lm_head` + cross-entropy ([`smelt::model::Model::token_nll`], at `--dtype`) by default;
//! `--reference-ops` runs the slow composed path (full logits) for before/after runs.
//!
//! ```text
//! smelt bench train-step --gguf model.gguf --batch 4 --seq 256 --steps 5
//! smelt bench generate   --gguf model.gguf --batch 8 --prompt-len 32 --new-tokens 64
//! ```

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, D};
use smelt::checkpoint;
use smelt::generate::argmax;
use smelt::ops::Precision;
use smelt::optim::{AdamW, AdamWConfig};
use smelt::telemetry::peak_rss_mb;
use smelt::{DecodeSession, KvCache, Model};
use std::path::PathBuf;
use std::time::Instant;

/// The workload to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Forward + backward + AdamW step on a (batch, seq) block, loss over all tokens.
    TrainStep,
    /// Batched greedy generation with a KV cache, no early stop.
    Generate,
    /// `reference.py trl-sft`'s workload through `smelt sft` (TRL settings).
    Sft,
    /// `reference.py trl-dpo`'s workload through `smelt dpo` (TRL settings).
    Dpo,
    /// `reference.py trl-grpo`'s workload through `smelt grpo` (TRL settings).
    Grpo,
}

/// Arguments of `smelt bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which workload (`train-step` or `generate`).
    #[arg(value_enum)]
    pub workload: Workload,
    /// The model as a GGUF file (dequantized to f32).
    #[arg(long)]
    pub gguf: PathBuf,
    /// Rows per batch (prompts per step for `grpo`). Unless given, each workload uses
    /// `reference.py`'s default: 4, but 8 for `generate` and 2 for `grpo`.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per row (`train-step`).
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Optimizer steps (`train-step`); the first is excluded from the median.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Prompt tokens per row (`generate`).
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// New tokens per row (`generate`).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Seed of the splitmix64 token stream.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Compute precision of the linear layers: `f32`, or `bf16-autocast` (f32 master
    /// weights and optimizer, bf16 GEMM inputs with f32 accumulation, as `torch.autocast`).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Compute the loss through the slow composed ops (full logits) instead of the fused kernel.
    #[arg(long)]
    pub reference_ops: bool,
    /// Flags of the `grpo` workload.
    #[command(flatten)]
    pub grpo: super::bench_posttrain::GrpoFlags,
}

/// Token ids exactly as `reference.py`'s `workload_tokens`: splitmix64, `x % vocab`,
/// row-major `(batch, seq)`.
pub fn workload_tokens(batch: usize, seq: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed;
    (0..batch * seq)
        .map(|_| (smelt::rng::splitmix64(&mut x) % vocab as u64) as u32)
        .collect()
}

/// Runs the workload and prints its JSON line.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // subnormals only slow the kernels down; PyTorch's CPU autocast flushes them too
    smelt::ops::gemm::flush_denormals_to_zero();
    smelt::runtime::keep_freed_memory();
    eprintln!(
        "smelt bench: gemm backend {}",
        smelt::ops::gemm::backend_report()
    );
    if args.dtype != Precision::F32 && args.workload != Workload::TrainStep {
        bail!(
            "--dtype {}: only train-step takes a precision other than f32",
            args.dtype
        );
    }
    if matches!(
        args.workload,
        Workload::Sft | Workload::Dpo | Workload::Grpo
    ) {
        let json = match args.workload {
            Workload::Grpo => super::bench_posttrain::run_grpo_bench(&args)?,
            w => super::bench_posttrain::run(&args, w == Workload::Dpo)?,
        };
        println!("{json}");
        return Ok(());
    }
    let dev = Device::Cpu;
    let mut model = checkpoint::load_gguf(&args.gguf, &dev, false)
        .with_context(|| format!("loading {}", args.gguf.display()))?
        .model;
    model.set_precision(args.dtype);
    if args.reference_ops {
        model.set_kernels(smelt::model::Kernels::Reference); // the whole model, not only the loss
    }
    let json = match args.workload {
        Workload::TrainStep => train_step(&model, &args)?,
        Workload::Generate => generate(&model, &args)?,
        Workload::Sft | Workload::Dpo | Workload::Grpo => unreachable!("handled above"),
    };
    println!("{json}");
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Mean next-token loss over all `B·(T−1)` positions (transformers' `labels=input_ids`).
fn loss(model: &Model, ids: &Tensor) -> anyhow::Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let h = model.config().hidden_size;
    let labels = ids
        .narrow(1, 1, t - 1)?
        .flatten_all()?
        .to_dtype(DType::I64)?; // (B·(T−1),)
    let hidden = model.forward_hidden(ids, None)?; // (B, T, H)
    let hidden = hidden.narrow(1, 0, t - 1)?.reshape((b * (t - 1), h))?; // (B·(T−1), H)
                                                                         // the model's own loss path: fused chunked lm_head + CE, or the explicit logits of
                                                                         // the reference kernels, at the model's precision
    let nll = model.token_nll(&hidden, &labels)?;
    Ok((nll.nll.sum_all()? / nll.count)?)
}

fn train_step(model: &Model, a: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    if a.seq < 2 || a.batch == 0 || a.steps == 0 {
        bail!("train-step needs --seq ≥ 2, --batch ≥ 1, --steps ≥ 1");
    }
    let ids = workload_tokens(a.batch, a.seq, model.config().vocab_size, a.seed);
    let ids = Tensor::from_vec(ids, (a.batch, a.seq), model.device())?;
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(model.vars(), cfg)?;
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for _ in 0..a.steps {
        let t0 = Instant::now();
        let l = loss(model, &ids)?;
        let grads = l.backward()?;
        let g: Vec<Tensor> = model
            .vars()
            .iter()
            .map(|(name, v)| {
                grads
                    .get(v)
                    .cloned()
                    .with_context(|| format!("no gradient reached `{name}`"))
            })
            .collect::<anyhow::Result<_>>()?;
        opt.step(model.vars(), &g, 1e-5)?;
        times.push(t0.elapsed().as_secs_f64());
        losses.push(l.to_scalar::<f32>()? as f64);
    }
    let steady = if times.len() > 1 {
        times[1..].to_vec()
    } else {
        times.clone()
    };
    let med = median(steady);
    Ok(serde_json::json!({
        "workload": "train-step", "impl": "smelt", "dtype": a.dtype.to_string(),
        "ops": if a.reference_ops { "reference" } else { "fused" },
        "batch": a.batch, "seq": a.seq, "steps": a.steps,
        "step_s_median": med, "tokens_per_s": (a.batch * a.seq) as f64 / med,
        "loss_first": losses[0], "losses": losses, "peak_rss_mb": peak_rss_mb(),
        "threads": candle_core::utils::get_num_threads(),
        "gemm": smelt::ops::gemm::backend_name(),
    }))
}

fn generate(model: &Model, a: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let batch = super::bench_posttrain::or_workload_default("batch", a.batch, 8);
    if a.prompt_len == 0 || batch == 0 {
        bail!("generate needs --prompt-len ≥ 1 and --batch ≥ 1");
    }
    let ids = workload_tokens(batch, a.prompt_len, model.config().vocab_size, a.seed);
    // as transformers' `generate`: the prompt's forward picks the first new token, then
    // one decode step per further token; returns the first row's new tokens
    let greedy = |prompt: &[u32], width: usize, n: usize| -> anyhow::Result<Vec<u32>> {
        if a.reference_ops {
            // the slow composition, through the model's candle-op decode path
            let mut cache = KvCache::with_capacity(model.config().num_hidden_layers, width + n);
            let prompt = Tensor::from_vec(prompt.to_vec(), (batch, width), model.device())?;
            let mut last = model.decode_last(&prompt, &mut cache)?; // (B, V)
            let mut first_row = Vec::with_capacity(n);
            for i in 0..n {
                let next = last.argmax_keepdim(D::Minus1)?; // (B, 1)
                first_row.push(next.get(0)?.get(0)?.to_scalar::<u32>()?);
                if i + 1 < n {
                    last = model.decode_last(&next, &mut cache)?;
                }
            }
            return Ok(first_row);
        }
        let mut session = DecodeSession::new(model, batch, width + n)?;
        let vocab = model.config().vocab_size;
        let mut logits = session.extend(prompt, width)?; // (B, V)
        let mut first_row = Vec::with_capacity(n);
        for i in 0..n {
            let next: Vec<u32> = logits.chunks_exact(vocab).map(argmax).collect();
            first_row.push(next[0]);
            if i + 1 < n {
                logits = session.extend(&next, 1)?;
            }
        }
        Ok(first_row)
    };
    let warm = a.prompt_len.min(8);
    let warm_ids: Vec<u32> = ids
        .chunks_exact(a.prompt_len)
        .flat_map(|row| row[..warm].to_vec())
        .collect();
    greedy(&warm_ids, warm, 4)?; // warm-up, as reference.py
    let t0 = Instant::now();
    let first_row = greedy(&ids, a.prompt_len, a.new_tokens)?;
    let n = first_row.len();
    let dt = t0.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "workload": "generate", "impl": "smelt", "batch": batch,
        "prompt_len": a.prompt_len, "new_tokens": n, "seconds": dt,
        "new_tokens_per_s": (batch * n) as f64 / dt, "peak_rss_mb": peak_rss_mb(),
        "first_row_tail": &first_row[..n.min(8)],
    }))
}
