//! `smelt convert`: any loadable checkpoint → an HF folder transformers can load.

use anyhow::Context;
use candle_core::Device;
use smelt::checkpoint::{self, LoadOptions};
use std::path::PathBuf;

/// Arguments of `smelt convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Source checkpoint: HF folder, hub id `org/name[@rev]`, or `.gguf` file.
    #[arg(long)]
    pub model: String,
    /// Output folder (written atomically; replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

/// Loads `--model` (dequantizing GGUF to f32) and saves it as an HF folder at `--out`.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let opts = LoadOptions {
        require_tokenizer: false,
        ..Default::default()
    };
    let loaded = checkpoint::load(&args.model, &Device::Cpu, &opts)
        .with_context(|| format!("loading {}", args.model))?;
    checkpoint::save_pretrained(&loaded.model, loaded.tokenizer.as_ref(), &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} parameters, tokenizer: {})",
        args.out.display(),
        loaded.model.config().num_parameters(),
        if loaded.tokenizer.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    Ok(())
}
