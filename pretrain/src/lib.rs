//! # smelt-pretrain
//!
//! The pretraining engine. It will hold corpus preparation (normalisation, exact and
//! MinHash near-duplicate removal, n-gram decontamination), BPE tokenizer training,
//! datatrove-compatible token shards read through memmap, a weighted resumable mixture
//! sampler with sequence packing, and the pretraining recipe that drives
//! `smelt::train`'s one training loop with the next-token objective.
//!
//! Today it re-exports the core so downstream code can already depend on it.
pub use smelt;
