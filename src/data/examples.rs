//! Tokenized training examples: what the data pipeline hands to the algorithms.
//!
//! Token ids are *unshifted*; a mask marks which tokens are training targets (token
//! `t` is predicted from tokens `< t`). Collation shifts them into labels.

use serde::{Deserialize, Serialize};

/// One supervised example: a token sequence and which of its tokens carry loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftExample {
    /// Token ids of the whole rendered example.
    pub input_ids: Vec<u32>,
    /// 1 where the token is a training target (assistant / completion tokens), else 0.
    pub loss_mask: Vec<u8>,
}

/// One preference pair, tokenized as TRL does: the prompt once, then each completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceExample {
    /// Prompt token ids (chat template applied with the generation prompt).
    pub prompt_ids: Vec<u32>,
    /// Chosen completion token ids (ending with the end-of-turn / EOS token).
    pub chosen_ids: Vec<u32>,
    /// Rejected completion token ids (ending with the end-of-turn / EOS token).
    pub rejected_ids: Vec<u32>,
}
