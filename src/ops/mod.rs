//! Differentiable building blocks of the decoder: slow references and fused kernels.
//!
//! Two layers, held equal by `tests/ops_kernels.rs`:
//! - [`reference`]: compositions of candle ops that have a backward (`rms_norm`,
//!   `softmax_last_dim`, `apply_rope`, `swiglu`, `linear`, `cross_entropy_sum`),
//!   re-exported here under their historical names so callers are unchanged;
//! - fused candle `CustomOp`s with a hand-written CPU forward AND backward
//!   ([`fused_rms_norm`], [`fused_rope`], [`fused_swiglu`], [`linear_cross_entropy`]).
//!
//! Key decision: each fused op is one pass over its rows (split across threads) in
//! f32 or f64, and its backward is itself a single no-backward `CustomOp` whose output
//! packs every input gradient into one buffer; no op keeps hidden state. Inputs the
//! kernels do not cover (half dtypes, non-CPU devices) fall back to the reference.

mod attention;
pub(crate) mod cpu;
pub mod gemm;
mod linear;
mod linear_cross_entropy;
mod precision;
pub mod reference;
mod rms_norm;
mod rope;
pub mod skinny_gemm;
mod swiglu;

pub(crate) use attention::Float;
pub use attention::{fused_attention, reference_attention};
pub use linear::{composed_autocast_linear, fused_linear};
pub use linear_cross_entropy::{
    linear_cross_entropy, linear_cross_entropy_sum, LinearCrossEntropy, DEFAULT_VOCAB_CHUNK,
};
pub use precision::{ParsePrecisionError, Precision};
pub use reference::{
    apply_rope, cross_entropy_sum, linear, rms_norm, softmax_last_dim, swiglu, IGNORE_INDEX,
};
pub use rms_norm::fused_rms_norm;
pub use rope::fused_rope;
pub(crate) use swiglu::forward_f32 as swiglu_forward_f32;
pub use swiglu::fused_swiglu;
