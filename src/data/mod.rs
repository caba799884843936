//! Training data for post-training: TRL's dataset formats, readers, encoding, packing.
//!
//! (Readers, encoders and packing are being filled in; the example types below are the
//! contract between the data pipeline and the algorithms.)

mod examples;

pub use examples::{PreferenceExample, SftExample};
