//! MinHash LSH near-duplicate detection, as datatrove's `MinhashDedup*` steps.
//!
//! A document's shingles are its word 5-grams of the matching form
//! ([`simplify`](super::normalize::simplify)), each hashed with xxh64. 112 = 14 × 8
//! universal hash permutations `h ↦ (a·h + b) mod (2⁶¹ − 1)` give 112 minimums: the
//! signature. It is cut into 14 buckets of 8; two documents that agree on all 8 values
//! of any one bucket are a candidate pair, and pairs are merged into clusters with
//! union-find. One document per cluster is kept — the first in reading order — and every
//! other member is a near-duplicate of it.
//!
//! Threshold: documents with Jaccard similarity `s` share some bucket with probability
//! `1 − (1 − s⁸)¹⁴` ([`candidate_probability`]). The usual LSH threshold
//! `(1/b)^(1/r) = (1/14)^(1/8) ≈ 0.72` ([`lsh_threshold`], datatrove's comment) sits at the
//! steep part of that S-curve, where a pair is caught 65% of the time; the exact 50% point
//! is s ≈ 0.68 ([`half_probability_similarity`]). A pair is caught 92% of the time at
//! s = 0.8, 99.96% at 0.9, and 5% at 0.5. Key decisions, where this departs from datatrove:
//! - datatrove runs as three distributed passes over signature files; here the whole
//!   index lives in memory (one `(bucket, 64-bit key) → first doc` entry per bucket per
//!   document, ~14 × 24 bytes per document) — enough for the corpora this crate prepares
//!   on one machine.
//! - the product `a·h` is computed exactly in 128 bits (numpy's `uint64` product in
//!   datatrove wraps at 2⁶⁴ before the modulus), so signatures do not equal datatrove's
//!   bit for bit; the similarity estimate is the same.
//! - a document shorter than `n_grams` words is one shingle of all its words (datatrove
//!   gives it no shingles); a document with no words gets no signature and is never a
//!   near-duplicate.
//! - union-find keeps the smallest document index as each cluster's root, so "the kept
//!   document" is the first one read, and a later document that bridges two clusters
//!   merges them (as datatrove's clustering does).

use smelt::rng::splitmix64;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;
use xxhash_rust::xxh64::xxh64;

use super::normalize::words;

/// The Mersenne prime 2⁶¹ − 1, the modulus of the permutations.
const MERSENNE_61: u64 = (1 << 61) - 1;

/// MinHash LSH settings; the defaults are datatrove's `MinhashConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinhashConfig {
    /// Run near-duplicate removal at all (default true).
    pub enabled: bool,
    /// Words per shingle (default 5, datatrove).
    pub n_grams: usize,
    /// LSH bands `b` (default 14, datatrove).
    pub num_buckets: usize,
    /// Hashes per band `r` (default 8, datatrove); `b·r` permutations in all.
    pub hashes_per_bucket: usize,
    /// Seed of the permutation parameters (default 1, datatrove); fixed so runs agree.
    pub seed: u64,
}

impl Default for MinhashConfig {
    fn default() -> Self {
        MinhashConfig {
            enabled: true,
            n_grams: 5,
            num_buckets: 14,
            hashes_per_bucket: 8,
            seed: 1,
        }
    }
}

impl MinhashConfig {
    /// The LSH threshold `(1/b)^(1/r)` (≈ 0.72 for datatrove's 14 × 8; see [`lsh_threshold`]).
    pub fn threshold(&self) -> f64 {
        lsh_threshold(self.num_buckets, self.hashes_per_bucket)
    }
}

/// `(1/b)^(1/r)`: the standard LSH threshold of `b` bands of `r` hashes, where the
/// S-curve [`candidate_probability`] is steepest (≈ 0.72 for b = 14, r = 8, caught ~65% of
/// the time there).
pub fn lsh_threshold(b: usize, r: usize) -> f64 {
    (1.0 / b as f64).powf(1.0 / r as f64)
}

/// The Jaccard similarity caught exactly half the time, `(1 − ½^(1/b))^(1/r)` (≈ 0.68 for
/// b = 14, r = 8).
pub fn half_probability_similarity(b: usize, r: usize) -> f64 {
    (1.0 - 0.5f64.powf(1.0 / b as f64)).powf(1.0 / r as f64)
}

/// `1 − (1 − s^r)^b`: the probability that two documents with Jaccard similarity `s`
/// share at least one full band.
pub fn candidate_probability(s: f64, b: usize, r: usize) -> f64 {
    1.0 - (1.0 - s.powi(r as i32)).powi(b as i32)
}

/// Computes MinHash signatures.
#[derive(Debug, Clone)]
pub struct MinHasher {
    config: MinhashConfig,
    /// Multipliers in [1, p) and offsets in [0, p), one per permutation.
    a: Vec<u64>,
    b: Vec<u64>,
}

impl MinHasher {
    /// Draws the `num_buckets · hashes_per_bucket` permutations from `config.seed`.
    pub fn new(config: MinhashConfig) -> Self {
        let n = config.num_buckets * config.hashes_per_bucket;
        let mut state = config.seed;
        let a = (0..n)
            .map(|_| splitmix64(&mut state) % (MERSENNE_61 - 1) + 1)
            .collect();
        let b = (0..n)
            .map(|_| splitmix64(&mut state) % MERSENNE_61)
            .collect();
        MinHasher { config, a, b }
    }

    /// The xxh64 hashes of `text`'s word n-grams (one of all words when shorter).
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        let words = words(text);
        let n = self.config.n_grams.max(1);
        if words.is_empty() {
            return Vec::new();
        }
        if words.len() < n {
            return vec![xxh64(words.join(" ").as_bytes(), 0)];
        }
        words
            .windows(n)
            .map(|w| xxh64(w.join(" ").as_bytes(), 0))
            .collect()
    }

    /// The signature (`num_buckets · hashes_per_bucket` minimums) of `text`, or `None`
    /// when it has no words.
    pub fn signature(&self, text: &str) -> Option<Vec<u64>> {
        let shingles = self.shingles(text);
        if shingles.is_empty() {
            return None;
        }
        let sig = self
            .a
            .iter()
            .zip(&self.b)
            .map(|(&a, &b)| {
                shingles
                    .iter()
                    .map(|&h| ((a as u128 * h as u128 + b as u128) % MERSENNE_61 as u128) as u64)
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .collect();
        Some(sig)
    }

    /// One 64-bit key per bucket: xxh3 of the bucket's `hashes_per_bucket` values.
    pub fn bucket_keys(&self, signature: &[u64]) -> Vec<u64> {
        signature
            .chunks(self.config.hashes_per_bucket)
            .map(|band| {
                let bytes: Vec<u8> = band.iter().flat_map(|v| v.to_le_bytes()).collect();
                xxh3_64(&bytes)
            })
            .collect()
    }
}

/// Union-find over insertion positions; the root of a set is its smallest member.
#[derive(Debug, Default)]
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn push(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.parent.len() - 1
    }

    fn find(&mut self, x: usize) -> usize {
        let mut root = x;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        let mut x = x;
        while self.parent[x] != root {
            let next = self.parent[x];
            self.parent[x] = root;
            x = next;
        }
        root
    }

    fn union(&mut self, x: usize, y: usize) {
        let (rx, ry) = (self.find(x), self.find(y));
        if rx != ry {
            let (lo, hi) = (rx.min(ry), rx.max(ry));
            self.parent[hi] = lo;
        }
    }
}

/// The LSH index: documents are inserted in reading order, clusters come out at the end.
#[derive(Debug)]
pub struct MinhashLsh {
    hasher: MinHasher,
    /// (bucket, key) → first insertion position with that band.
    bands: HashMap<(u32, u64), usize>,
    /// The caller's document index of each insertion position.
    docs: Vec<usize>,
    sets: UnionFind,
}

impl MinhashLsh {
    /// An empty index.
    pub fn new(config: MinhashConfig) -> Self {
        MinhashLsh {
            hasher: MinHasher::new(config),
            bands: HashMap::new(),
            docs: Vec::new(),
            sets: UnionFind::default(),
        }
    }

    /// Adds document `doc` (indices must increase) with normalised `text`; returns false
    /// when it has no words and so takes no part.
    pub fn insert(&mut self, doc: usize, text: &str) -> bool {
        let Some(sig) = self.hasher.signature(text) else {
            return false;
        };
        let pos = self.sets.push();
        self.docs.push(doc);
        for (bucket, key) in self.hasher.bucket_keys(&sig).into_iter().enumerate() {
            match self.bands.get(&(bucket as u32, key)) {
                Some(&first) => self.sets.union(first, pos),
                None => {
                    self.bands.insert((bucket as u32, key), pos);
                }
            }
        }
        true
    }

    /// `(duplicate, kept)` document index pairs: every inserted document that is not the
    /// first of its cluster, with that first document.
    pub fn near_duplicates(mut self) -> Vec<(usize, usize)> {
        (0..self.docs.len())
            .filter_map(|pos| {
                let root = self.sets.find(pos);
                (root != pos).then(|| (self.docs[pos], self.docs[root]))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible pseudo-random text of `n` words drawn from a 2,000-word vocabulary
    /// (letters only: digits would all simplify to `0`).
    fn text(seed: u64, n: usize) -> Vec<String> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                let k = splitmix64(&mut s) % 2000;
                [k / 676, k / 26 % 26, k % 26]
                    .iter()
                    .map(|&c| (b'a' + c as u8) as char)
                    .collect()
            })
            .collect()
    }

    fn jaccard(a: &[u64], b: &[u64]) -> f64 {
        use std::collections::HashSet;
        let (a, b): (HashSet<_>, HashSet<_>) = (a.iter().collect(), b.iter().collect());
        a.intersection(&b).count() as f64 / a.union(&b).count() as f64
    }

    #[test]
    fn threshold_is_072_for_14_by_8() {
        assert!((lsh_threshold(14, 8) - 0.7192).abs() < 1e-3);
        assert!((candidate_probability(0.8, 14, 8) - 0.924).abs() < 1e-3);
        // At the threshold itself a pair is caught with probability ≈ 0.65; the 50% point is ≈ 0.68.
        assert!((candidate_probability(lsh_threshold(14, 8), 14, 8) - 0.65).abs() < 0.01);
        assert!((half_probability_similarity(14, 8) - 0.684).abs() < 1e-3);
        assert!(
            (candidate_probability(half_probability_similarity(14, 8), 14, 8) - 0.5).abs() < 1e-9
        );
    }

    #[test]
    fn signature_agreement_estimates_jaccard() {
        // Replace every 10th word: the shingle sets overlap with Jaccard ≈ 0.35–0.45;
        // the fraction of equal signature slots must estimate it (±0.15 at 112 slots).
        let h = MinHasher::new(MinhashConfig::default());
        let a = text(1, 600);
        let mut b = a.clone();
        for i in (0..b.len()).step_by(10) {
            b[i] = "changed".into();
        }
        let (sa, sb) = (h.shingles(&a.join(" ")), h.shingles(&b.join(" ")));
        let j = jaccard(&sa, &sb);
        let (ga, gb) = (
            h.signature(&a.join(" ")).unwrap(),
            h.signature(&b.join(" ")).unwrap(),
        );
        let agree = ga.iter().zip(&gb).filter(|(x, y)| x == y).count() as f64 / ga.len() as f64;
        assert!(
            (agree - j).abs() < 0.15,
            "jaccard {j}, signature agreement {agree}"
        );
        assert_eq!(ga.len(), 112);
    }

    #[test]
    fn a_copy_is_a_near_duplicate_of_the_first() {
        let mut lsh = MinhashLsh::new(MinhashConfig::default());
        let a = text(7, 400).join(" ");
        let other = text(8, 400).join(" ");
        assert!(lsh.insert(0, &a));
        assert!(lsh.insert(3, &other));
        assert!(lsh.insert(5, &a));
        assert!(!lsh.insert(6, " ... "));
        assert_eq!(lsh.near_duplicates(), vec![(5, 0)]);
    }

    #[test]
    fn union_find_root_is_the_smallest_member() {
        // 3 joins 1, then 2 bridges {1, 3} and {0}: all four share root 0.
        let mut uf = UnionFind::default();
        for _ in 0..5 {
            uf.push();
        }
        uf.union(1, 3);
        assert_eq!(uf.find(3), 1);
        uf.union(0, 2);
        uf.union(3, 2);
        assert_eq!((0..4).map(|x| uf.find(x)).collect::<Vec<_>>(), [0, 0, 0, 0]);
        assert_eq!(uf.find(4), 4);
    }
}
