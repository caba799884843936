//! One module per `smelt` subcommand.

pub mod convert;
pub mod generate;
pub mod pretrain;
