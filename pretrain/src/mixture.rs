//! The weighted data mixture: a deterministic, resumable stream of documents drawn
//! from several sources (each a set of shards) in proportion to their weights.
//!
//! Two decisions define the stream:
//!
//! - **Which source next** is chosen *deterministically* with the greedy
//!   error-minimising rule of Megatron-LM's `build_blending_indices` (which
//!   nanotron's Nanosets use): at draw `n`, take the source `i` maximising
//!   `w_i · max(n, 1) − drawn_i` (first index on ties). Every prefix of the stream
//!   then matches the weights to within one document per source — tighter than a
//!   seeded categorical draw, and the choice needs no RNG state at all: it is a
//!   function of the per-source counts in the cursor.
//! - **Which document of that source** follows a per-epoch permutation of all the
//!   source's documents (across its shards), seeded by `(seed, source name, epoch)`.
//!   Each document appears exactly once per epoch; an exhausted source starts its
//!   next epoch with a fresh permutation. The permutation is a Fisher–Yates shuffle
//!   driven by SplitMix64 implemented here, not by `rand`, because a cursor stored in
//!   a checkpoint refers to it: it must not change when a dependency is upgraded.
//!
//! The whole state is a small serde [`MixtureCursor`] (seed, draws, per-source epoch
//! and position); [`Mixture::restore`] rebuilds the permutations from it, so a
//! restored mixture continues exactly as the uninterrupted one.

mod source;

pub use source::{MixtureSource, SourceConfig};

use serde::{Deserialize, Serialize};
use smelt::{Error, Result};

/// Where a sampled document lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocRef {
    /// Index of the source in the mixture.
    pub source: usize,
    /// Index of the shard within the source.
    pub shard: usize,
    /// Index of the document within the shard.
    pub document: usize,
}

/// Per-source part of a [`MixtureCursor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCursor {
    /// The source's name (checked on restore).
    pub name: String,
    /// Documents in the source when the cursor was taken (checked on restore: a
    /// different count would silently change every permutation).
    pub num_documents: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Documents of the current epoch already drawn.
    pub position: u64,
}

/// The complete state of a [`Mixture`]; serde, a few bytes per source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureCursor {
    /// Seed of the permutations.
    pub seed: u64,
    /// Documents drawn so far, all sources together.
    pub draws: u64,
    /// One entry per source, in mixture order.
    pub sources: Vec<SourceCursor>,
}

#[derive(Debug)]
struct SourceState {
    epoch: u64,
    position: u64,
    /// This epoch's order of the source's documents.
    order: Vec<u32>,
}

/// The deterministic weighted document stream; see the module docs.
#[derive(Debug)]
pub struct Mixture {
    sources: Vec<MixtureSource>,
    /// Weights normalised to sum to 1.
    weights: Vec<f64>,
    seed: u64,
    draws: u64,
    state: Vec<SourceState>,
}

impl Mixture {
    /// Opens every source of `configs`; names must be unique.
    pub fn open(configs: &[SourceConfig], seed: u64) -> Result<Self> {
        let sources = configs
            .iter()
            .map(MixtureSource::open)
            .collect::<Result<Vec<_>>>()?;
        Self::new(sources, seed)
    }

    /// A mixture over opened sources, at its start.
    pub fn new(sources: Vec<MixtureSource>, seed: u64) -> Result<Self> {
        if sources.is_empty() {
            return Err(Error::Invalid(
                "a data mixture needs at least one source".into(),
            ));
        }
        for (i, s) in sources.iter().enumerate() {
            if sources[..i].iter().any(|o| o.name == s.name) {
                return Err(Error::Invalid(format!(
                    "source name `{}` appears twice",
                    s.name
                )));
            }
        }
        let total: f64 = sources.iter().map(|s| s.weight).sum();
        let weights = sources.iter().map(|s| s.weight / total).collect();
        let state = sources
            .iter()
            .map(|s| SourceState {
                epoch: 0,
                position: 0,
                order: permutation(s.num_documents() as u32, epoch_seed(seed, &s.name, 0)),
            })
            .collect();
        Ok(Self {
            sources,
            weights,
            seed,
            draws: 0,
            state,
        })
    }

    /// The sources, in mixture order.
    pub fn sources(&self) -> &[MixtureSource] {
        &self.sources
    }

    /// Draws the next document's location and advances the stream.
    pub fn next_ref(&mut self) -> DocRef {
        let n = self.draws.max(1) as f64;
        let mut best = 0;
        let mut best_err = f64::NEG_INFINITY;
        for (i, w) in self.weights.iter().enumerate() {
            let err = w * n - self.drawn(i) as f64;
            if err > best_err {
                best = i;
                best_err = err;
            }
        }
        self.draws += 1;
        let src = &self.sources[best];
        let st = &mut self.state[best];
        let global = st.order[st.position as usize] as u64;
        st.position += 1;
        if st.position == src.num_documents() {
            st.epoch += 1;
            st.position = 0;
            st.order = permutation(
                src.num_documents() as u32,
                epoch_seed(self.seed, &src.name, st.epoch),
            );
        }
        let (shard, document) = src.locate(global);
        DocRef {
            source: best,
            shard,
            document,
        }
    }

    /// Draws the next document and reads its tokens (EOS included).
    pub fn next_document(&mut self) -> Result<(DocRef, Vec<u32>)> {
        let r = self.next_ref();
        Ok((r, self.document(r)?))
    }

    /// The tokens of `r` (EOS included).
    pub fn document(&self, r: DocRef) -> Result<Vec<u32>> {
        let shard = self
            .sources
            .get(r.source)
            .and_then(|s| s.shards().get(r.shard))
            .ok_or_else(|| Error::Invalid(format!("no shard for {r:?}")))?;
        shard.document(r.document)
    }

    /// Documents drawn from source `i` since the start (all epochs).
    fn drawn(&self, i: usize) -> u64 {
        let st = &self.state[i];
        st.epoch * self.sources[i].num_documents() + st.position
    }

    /// The current state.
    pub fn cursor(&self) -> MixtureCursor {
        MixtureCursor {
            seed: self.seed,
            draws: self.draws,
            sources: self
                .sources
                .iter()
                .zip(&self.state)
                .map(|(s, st)| SourceCursor {
                    name: s.name.clone(),
                    num_documents: s.num_documents(),
                    epoch: st.epoch,
                    position: st.position,
                })
                .collect(),
        }
    }

    /// Moves the stream to `cursor`, which must come from a mixture with the same
    /// seed and sources (names and document counts); errors name what differs.
    pub fn restore(&mut self, cursor: &MixtureCursor) -> Result<()> {
        if cursor.seed != self.seed {
            return Err(Error::Invalid(format!(
                "data cursor was taken with seed {} but the mixture uses seed {}",
                cursor.seed, self.seed
            )));
        }
        let names = |v: Vec<&str>| v.join(", ");
        if cursor.sources.len() != self.sources.len()
            || cursor
                .sources
                .iter()
                .zip(&self.sources)
                .any(|(c, s)| c.name != s.name)
        {
            return Err(Error::Invalid(format!(
                "data cursor has sources [{}] but the mixture has [{}]",
                names(cursor.sources.iter().map(|c| c.name.as_str()).collect()),
                names(self.sources.iter().map(|s| s.name.as_str()).collect()),
            )));
        }
        let mut total = 0u64;
        for (c, s) in cursor.sources.iter().zip(&self.sources) {
            if c.num_documents != s.num_documents() || c.position >= c.num_documents {
                return Err(Error::Invalid(format!(
                    "source `{}`: data cursor has {} documents (position {}) but the source has {}",
                    c.name,
                    c.num_documents,
                    c.position,
                    s.num_documents()
                )));
            }
            total += c.epoch * c.num_documents + c.position;
        }
        if total != cursor.draws {
            return Err(Error::Invalid(format!(
                "data cursor is inconsistent: {} draws but the sources account for {total}",
                cursor.draws
            )));
        }
        for ((c, s), st) in cursor
            .sources
            .iter()
            .zip(&self.sources)
            .zip(&mut self.state)
        {
            if st.epoch != c.epoch {
                st.order = permutation(
                    s.num_documents() as u32,
                    epoch_seed(self.seed, &s.name, c.epoch),
                );
            }
            st.epoch = c.epoch;
            st.position = c.position;
        }
        self.draws = cursor.draws;
        Ok(())
    }
}

/// Seed of `source`'s permutation in `epoch`.
fn epoch_seed(seed: u64, source: &str, epoch: u64) -> u64 {
    let mut bytes = source.as_bytes().to_vec();
    bytes.extend_from_slice(&epoch.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, seed)
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny generator fixed here for good.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        smelt::rng::splitmix64(&mut self.0)
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift with rejection; no modulo bias).
    fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = (self.next() as u128) * (bound as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// A uniformly random permutation of `0..n` (Fisher–Yates).
fn permutation(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_seed() {
        let p = permutation(1000, 7);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, permutation(1000, 8));
        assert_eq!(p, permutation(1000, 7));
    }

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference splitmix64.c).
        let mut r = SplitMix64(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
    }
}
