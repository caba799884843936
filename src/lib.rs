//! # smelt
//!
//! The core of smelt: everything two training stages share. A Llama-family decoder
//! built for training ([`model`]), its differentiable building blocks ([`ops`]),
//! HF / GGUF / hub checkpoints ([`checkpoint`]), tokenizers and chat templates
//! ([`tokenizer`]) and plain KV-cache generation ([`generate`]).
//!
//! Design decision: parameters are candle `Var`s keyed by their HF tensor names, and
//! the model has two entry points over the same weights — `forward` (packed rows,
//! document-masked attention, logits at every position, differentiable) for training
//! and `decode` (explicit caller-owned KV cache) for generation. Nothing here hides
//! state inside the model, so a trainer, a sampler and an evaluator can share one.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod error;
pub mod generate;
pub mod model;
pub mod ops;
pub mod optim;
pub mod recipe;
pub mod rng;
pub mod runtime;
pub mod telemetry;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use model::{DecodeSession, Kernels, KvCache, Model, ModelConfig, ModelType};
