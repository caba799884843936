//! # smelt-pretrain
//!
//! The pretraining engine: corpus preparation (normalisation, exact and MinHash
//! near-duplicate removal, n-gram decontamination), BPE tokenizer training,
//! datatrove-compatible token shards read through memmap, a weighted resumable
//! mixture sampler with sequence packing, and the pretraining recipe that drives
//! `smelt::train`'s one training loop with the next-token objective.

pub mod bpe;
pub mod corpus;
pub mod mixture;
pub mod packing;
pub mod recipe;
pub mod run;
pub mod shards;

pub use smelt;
