//! Compute precision of the matmul-heavy ops: plain f32, or bf16 autocast.
//!
//! Key decision (as `torch.autocast` on CPU): master weights, activations, optimizer
//! state and gradients stay f32; under [`Precision::Bf16Autocast`] only the *inputs*
//! of each GEMM are rounded to bf16, and the products accumulate and come out in f32.
//! The precision is a property of the call (passed to [`super::fused_linear`]), not of
//! the tensors, so one set of f32 weights serves both modes.

use std::fmt;
use std::str::FromStr;

/// Precision of the GEMMs inside the fused linear op (and whatever the model routes
/// through it). Serialised as `"f32"` / `"bf16-autocast"`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Precision {
    /// f32 inputs, f32 accumulation: bit-for-bit the reference's numerics up to
    /// summation order.
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// bf16-rounded GEMM inputs, f32 accumulation, f32 outputs and gradients.
    #[serde(rename = "bf16-autocast")]
    Bf16Autocast,
}

impl Precision {
    /// Every accepted spelling, for error messages and CLI help.
    pub const NAMES: [&'static str; 2] = ["f32", "bf16-autocast"];

    /// The canonical name (`"f32"` or `"bf16-autocast"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16Autocast => "bf16-autocast",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Precision::from_str`]: the rejected text and the accepted names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision {0:?}: expected one of \"f32\", \"bf16-autocast\"")]
pub struct ParsePrecisionError(pub String);

impl FromStr for Precision {
    type Err = ParsePrecisionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16-autocast" => Ok(Precision::Bf16Autocast),
            other => Err(ParsePrecisionError(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_fromstr_display_and_serde() {
        for name in Precision::NAMES {
            let p: Precision = name.parse().unwrap();
            assert_eq!(p.to_string(), name);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
        }
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn unknown_name_is_an_error_listing_the_choices() {
        let err = "bf16".parse::<Precision>().unwrap_err();
        assert!(err.to_string().contains("bf16-autocast"), "{err}");
        assert!(serde_json::from_str::<Precision>("\"fp32\"").is_err());
    }
}
