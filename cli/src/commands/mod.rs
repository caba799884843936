//! One module per `smelt` subcommand.

pub mod bench;
pub mod convert;
pub mod eval;
pub mod dpo;
pub mod generate;
pub mod pretrain;
pub mod sft;
