//! `smelt generate`: stream a continuation (or a chat reply) to stdout.

use anyhow::{bail, Context};
use candle_core::Device;
use smelt::checkpoint::{self, LoadOptions};
use smelt::generate::{generate, GenerationConfig};
use smelt::tokenizer::Message;
use std::io::Write;
use std::time::Instant;

/// Arguments of `smelt generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model: HF folder, hub id `org/name[@rev]` (from the local cache when offline), or `.gguf` file.
    #[arg(long)]
    pub model: String,
    /// The prompt text (the user message with `--chat`).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn with the model's chat template (and the generation prompt).
    #[arg(long)]
    pub chat: bool,
    /// Optional system message (with `--chat`).
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Top-k sampling (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// RNG seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print the generated token ids (one JSON line) after the text.
    #[arg(long)]
    pub print_ids: bool,
    /// Print load time, prefill and generation speed to stderr.
    #[arg(long)]
    pub stats: bool,
}

/// Loads the model, renders the prompt, and streams the generation.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let opts = LoadOptions {
        require_tokenizer: true,
        ..Default::default()
    };
    let loaded = checkpoint::load(&args.model, &Device::Cpu, &opts)
        .with_context(|| format!("loading {}", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();
    let Some(tokenizer) = loaded.tokenizer else {
        bail!("{}: no tokenizer found", args.model)
    };
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        tokenizer.apply_chat_template(&messages, true)?
    } else {
        args.prompt.clone()
    };
    // A rendered chat already holds its special tokens; plain text gets none added
    // (as transformers' `generate` examples with `add_special_tokens=False`).
    let prompt_ids = tokenizer.encode(&text, false)?;
    let mut stop_ids = Vec::new();
    if !args.ignore_eos {
        stop_ids.extend(loaded.model.config().eos_token_ids.iter().copied());
        stop_ids.extend(tokenizer.eos_token_id());
    }
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop_ids,
    };
    let mut out = std::io::stdout().lock();
    let mut ids = Vec::new();
    let mut printed = 0usize;
    let t1 = Instant::now();
    let mut first_token_s = None;
    let generation = generate(&loaded.model, &prompt_ids, &config, |id| {
        first_token_s.get_or_insert_with(|| t1.elapsed().as_secs_f64());
        ids.push(id);
        // Decode everything so far and print the new suffix: multi-byte characters
        // split across tokens come out whole once complete.
        let text = tokenizer.decode(&ids, true)?;
        if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{fffd}') {
            let _ = out.write_all(text[printed..].as_bytes());
            let _ = out.flush();
            printed = text.len();
        }
        Ok(())
    })?;
    let total_s = t1.elapsed().as_secs_f64();
    writeln!(out)?;
    if args.print_ids {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "prompt_ids": prompt_ids, "new_ids": generation.tokens })
        )?;
    }
    if args.stats {
        let n = generation.tokens.len();
        let prefill = first_token_s.unwrap_or(total_s);
        let decode_tps = if n > 1 {
            (n - 1) as f64 / (total_s - prefill).max(1e-9)
        } else {
            0.0
        };
        eprintln!(
            "{}",
            serde_json::json!({
                "load_s": load_s, "prompt_tokens": prompt_ids.len(), "new_tokens": n,
                "prefill_s": prefill, "prefill_tokens_per_s": prompt_ids.len() as f64 / prefill.max(1e-9),
                "decode_tokens_per_s": decode_tps, "finish": format!("{:?}", generation.finish),
                "peak_rss_mb": smelt::telemetry::peak_rss_mb(),
            })
        );
    }
    Ok(())
}
