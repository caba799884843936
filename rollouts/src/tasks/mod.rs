//! Verifiable tasks that ship with smelt: generated from a seed, so tests and the
//! embedded pipeline need no downloaded data.

pub mod arithmetic;

pub use arithmetic::{ArithmeticTask, TaskRow};
