//! `Schedule`: which weight version each generation batch is generated from.
//!
//! Bounded staleness made deterministic: generation batch `n` is first trained on at
//! optimizer step `n · steps_per_batch`, and is generated from exactly version
//! `v(n) = max(floor, n · steps_per_batch − max_staleness)` — never "whatever is newest".
//! `floor` is the version the run (re)started from: a resumed run has no older weights.
//! So what the generator produces is a pure function of the seeds and the trainer's
//! weights, for any staleness, however the threads are timed.

/// The version schedule of a [`RolloutService`](super::RolloutService).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Versions a batch may lag the trainer when first used (`s`).
    pub max_staleness: u64,
    /// Optimizer steps per generation batch (`spb`, GRPO's μ).
    pub steps_per_batch: u64,
    /// First generation batch this service produces.
    pub start_batch: u64,
    /// Oldest version that exists (the trainer's version when the service started).
    pub floor: u64,
}

impl Schedule {
    /// The optimizer step (= trainer version) at which batch `index` is first used.
    pub fn first_use(&self, index: u64) -> u64 {
        index.saturating_mul(self.steps_per_batch)
    }

    /// The weight version batch `index` is generated from.
    pub fn version_of(&self, index: u64) -> u64 {
        self.first_use(index)
            .saturating_sub(self.max_staleness)
            .max(self.floor)
    }

    /// Whether some batch from `start_batch` on is generated from `version` (publishing
    /// any other version would only cost a deep copy nobody reads).
    pub fn needs(&self, version: u64) -> bool {
        let first = self.version_of(self.start_batch);
        if version < first {
            return false;
        }
        if version == first {
            return true;
        }
        // past the floor, v(n) = n·spb − s exactly
        (version + self.max_staleness).is_multiple_of(self.steps_per_batch)
            && self.version_of((version + self.max_staleness) / self.steps_per_batch) == version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_needs(s: &Schedule, version: u64) -> bool {
        (s.start_batch..s.start_batch + 64).any(|n| s.version_of(n) == version)
    }

    #[test]
    fn versions_lag_first_use_by_exactly_the_staleness() {
        let s = Schedule {
            max_staleness: 2,
            steps_per_batch: 1,
            start_batch: 0,
            floor: 0,
        };
        let v: Vec<u64> = (0..6).map(|n| s.version_of(n)).collect();
        assert_eq!(v, [0, 0, 0, 1, 2, 3]);
        let s = Schedule {
            max_staleness: 1,
            steps_per_batch: 2,
            start_batch: 0,
            floor: 0,
        };
        let v: Vec<u64> = (0..4).map(|n| s.version_of(n)).collect();
        assert_eq!(v, [0, 1, 3, 5]);
        // zero staleness is synchronous: batch n from the weights of its first use
        let s = Schedule {
            max_staleness: 0,
            steps_per_batch: 3,
            start_batch: 0,
            floor: 0,
        };
        assert!((0..8).all(|n| s.version_of(n) == s.first_use(n)));
    }

    #[test]
    fn a_resumed_schedule_never_asks_for_versions_older_than_its_floor() {
        let s = Schedule {
            max_staleness: 3,
            steps_per_batch: 1,
            start_batch: 5,
            floor: 4,
        };
        assert_eq!(
            s.version_of(5),
            4,
            "5 − 3 = 2 does not exist after a resume at 4"
        );
        assert_eq!(s.version_of(9), 6);
    }

    #[test]
    fn needs_agrees_with_enumerating_the_batches() {
        for spb in 1..4 {
            for st in 0..5 {
                for start in 0..4 {
                    for floor in 0..6 {
                        let s = Schedule {
                            max_staleness: st,
                            steps_per_batch: spb,
                            start_batch: start,
                            floor,
                        };
                        for v in 0..40 {
                            assert_eq!(s.needs(v), brute_needs(&s, v), "{s:?} version {v}");
                        }
                    }
                }
            }
        }
    }
}
