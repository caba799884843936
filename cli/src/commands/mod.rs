//! One module per `smelt` subcommand.

pub mod bench;
pub mod convert;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod grpo;
pub mod pipeline;
pub mod pretrain;
pub mod sft;
