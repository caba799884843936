//! Training FLOPs per token and model FLOPs utilisation (MFU).
//!
//! The count is the PaLM one (Chowdhery et al. 2022, appendix B), also used by
//! nanotron's `get_flops` and nanoGPT's `estimate_mfu`:
//!
//! ```text
//! flops/token = 6·N + 12·L·H·Q·T
//! ```
//!
//! - `6·N`: every weight of a matmul does one multiply-add (2 FLOPs) per token in the
//!   forward pass and two in the backward pass (grad w.r.t. input and weight).
//! - `12·L·H·Q·T`: the two attention matmuls (`q·kᵀ` and `p·v`), each `2·H·Q·T`
//!   FLOPs per token and layer forward, ×3 for forward + backward. `H·Q` is the
//!   attention width (heads × head dim, which need not equal `hidden_size`) and `T`
//!   the sequence length. As in PaLM, the causal mask is not credited (no halving):
//!   MFU compares implementations, and this is the convention the numbers in papers
//!   use.
//!
//! Key decision: `N` counts the weights that take part in a matmul ([`matmul_params`]):
//! every linear layer and the LM head, whether or not the head is tied to the
//! embedding. The embedding lookup and the norms do no matmul work and are left out.
//! A plain parameter count would miss the tied head's `V·d` matmul, which is a large
//! share of a small model's compute (21% of SmolLM2-135M's `6·N`). Recomputation
//! (activation checkpointing) is not counted: that is hardware FLOPs, not model FLOPs.

use crate::model::ModelConfig;

/// Weights that take part in a matmul per token: q/k/v/o and the three MLP
/// projections of every layer, plus the LM head (`hidden_size × vocab_size`), tied or
/// not. Biases and norm weights are elementwise and not counted.
pub fn matmul_params(config: &ModelConfig) -> u64 {
    let d = config.hidden_size as u64;
    let q_width = (config.num_attention_heads * config.head_dim) as u64;
    let kv_width = (config.num_key_value_heads * config.head_dim) as u64;
    let ff = config.intermediate_size as u64;
    let attention = d * q_width // q_proj
        + 2 * d * kv_width // k_proj, v_proj
        + q_width * d; // o_proj
    let mlp = 3 * d * ff; // gate_proj, up_proj, down_proj
    let lm_head = d * config.vocab_size as u64;
    config.num_hidden_layers as u64 * (attention + mlp) + lm_head
}

/// Model FLOPs of one training step (forward + backward) per token, for sequences
/// of `seq_len` tokens: `6·N + 12·L·H·Q·T` (see the module docs).
pub fn training_flops_per_token(config: &ModelConfig, seq_len: usize) -> f64 {
    let n = matmul_params(config) as f64;
    let layers = config.num_hidden_layers as f64;
    let attn_width = (config.num_attention_heads * config.head_dim) as f64;
    6.0 * n + 12.0 * layers * attn_width * seq_len as f64
}

/// Model FLOPs utilisation: achieved model FLOP/s (`flops_per_token × tokens_per_s`)
/// as a fraction of `peak_flops` (the accelerator's dense peak for the compute dtype,
/// e.g. 989e12 for bf16 on an H100 SXM). NaN when `peak_flops` is not positive.
pub fn mfu(flops_per_token: f64, tokens_per_s: f64, peak_flops: f64) -> f64 {
    if peak_flops > 0.0 {
        flops_per_token * tokens_per_s / peak_flops
    } else {
        f64::NAN
    }
}
