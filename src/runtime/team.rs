//! A persistent team of worker threads for many short parallel regions.
//!
//! A decode step runs ~150 parallel regions of 50–500 µs each (one per weight
//! matrix group of each layer). Spawning threads per region (`std::thread::scope`)
//! costs tens of µs, and a sleeping pool's futex wake-up about as much; both are a
//! sizeable share of such a region. Key decision: the team's helpers *spin* between
//! regions (for [`SPIN_BEFORE_PARK`], then they park), so a region starts within a
//! cache-line transfer while work keeps coming, and a team left idle (or one whose
//! caller runs a long multi-threaded GEMM in between) gives its cores back. The
//! calling thread is worker 0 and runs its share too. Nothing is `'static`: a region
//! borrows from the caller's stack, which is sound because [`WorkerTeam::run`]
//! returns only after every helper has finished the region.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins for the next region before it parks.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(200);

/// The region helpers run: `f(worker, workers)`; a type-erased borrow of the caller's closure.
type Region = *const (dyn Fn(usize, usize) + Sync);

struct Shared {
    /// Bumped once per region; helpers run a region when they see it change.
    epoch: AtomicU64,
    /// The current region (written before `epoch` is bumped, read after it is seen).
    region: UnsafeCell<Option<Region>>,
    /// Helpers still running the current region.
    running: AtomicUsize,
    /// A helper's region panicked (re-raised on the calling thread).
    panicked: AtomicBool,
    shutdown: AtomicBool,
    workers: usize,
}

// SAFETY: `region` is written only by the thread calling `run` while no helper reads
// it (all helpers have finished the previous region), and read by helpers only after
// the Release/Acquire pair on `epoch`; the pointee is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced during `run`.
unsafe impl Send for Shared {}

/// `workers − 1` helper threads plus the calling thread (see the module doc).
pub struct WorkerTeam {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerTeam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerTeam")
            .field("workers", &self.shared.workers)
            .finish()
    }
}

impl WorkerTeam {
    /// A team of `workers` (at least 1: the calling thread alone spawns nothing).
    pub fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            region: UnsafeCell::new(None),
            running: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            workers,
        });
        let helpers = (1..workers)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("smelt-team-{index}"))
                    .spawn(move || helper_loop(&shared, index))
                    .expect("spawning a worker thread")
            })
            .collect();
        WorkerTeam { shared, helpers }
    }

    /// A team as large as the current rayon pool (the global one: every core or
    /// `RAYON_NUM_THREADS`; inside `ThreadPool::install`, that pool's size — so a
    /// rollout generator confined to its own pool stays within it).
    pub fn with_default_size() -> Self {
        Self::new(rayon::current_num_threads())
    }

    /// Number of workers (the calling thread included).
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Runs `f(worker, workers)` on every worker (the caller is worker 0) and returns
    /// when all have finished. Panics if a helper's share panicked.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let workers = self.shared.workers;
        if workers == 1 {
            f(0, 1);
            return;
        }
        let region: &(dyn Fn(usize, usize) + Sync) = &f;
        // SAFETY: erases the borrow's lifetime; the pointer is used only until every
        // helper has decremented `running` below, before `f` goes out of scope.
        let region: Region = unsafe { std::mem::transmute(region) };
        // SAFETY: no helper is inside a region (the previous `run` waited for all).
        unsafe { *self.shared.region.get() = Some(region) };
        self.shared.running.store(workers - 1, Ordering::Relaxed);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark(); // a no-op unless the helper parked
        }
        let own = catch_unwind(AssertUnwindSafe(|| f(0, workers)));
        let mut spins = 0u32;
        while self.shared.running.load(Ordering::Acquire) != 0 {
            spin_or_yield(&mut spins);
        }
        if let Err(payload) = own {
            std::panic::resume_unwind(payload);
        }
        if self.shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread of the team panicked");
        }
    }

    /// Runs `f(i)` for every `i < n`, each worker taking a contiguous share.
    pub fn for_each<F: Fn(usize) + Sync>(&self, n: usize, f: F) {
        self.run(|worker, workers| {
            for i in share(n, worker, workers) {
                f(i);
            }
        });
    }
}

/// Worker `worker`'s contiguous share of `0..n` split `workers` ways.
pub fn share(n: usize, worker: usize, workers: usize) -> std::ops::Range<usize> {
    n * worker / workers..n * (worker + 1) / workers
}

impl Drop for WorkerTeam {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// A pause in a spin-wait; every 64th one yields the core, so a waiter that shares
/// its core with the thread it waits for (an oversubscribed machine) lets it run.
fn spin_or_yield(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(64) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn helper_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let park_after = Instant::now() + SPIN_BEFORE_PARK;
        let mut spins = 0u32;
        let epoch = loop {
            let e = shared.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            spin_or_yield(&mut spins);
            if spins.is_multiple_of(256) && Instant::now() > park_after {
                // `run` unparks after bumping the epoch, so a wake-up is never lost;
                // the timeout only bounds a missed shutdown.
                std::thread::park_timeout(Duration::from_millis(50));
            }
        };
        seen = epoch;
        // SAFETY: the Acquire load above saw the bump that followed the write.
        let region = unsafe { *shared.region.get() };
        if let Some(region) = region {
            // SAFETY: `run` keeps the closure alive until `running` reaches 0.
            let f = unsafe { &*region };
            if catch_unwind(AssertUnwindSafe(|| f(index, shared.workers))).is_err() {
                shared.panicked.store(true, Ordering::Relaxed);
            }
        }
        shared.running.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_worker_runs_every_region_and_borrows_are_safe() {
        let team = WorkerTeam::new(3);
        let hits: Vec<AtomicU32> = (0..3).map(|_| AtomicU32::new(0)).collect();
        for _ in 0..1000 {
            team.run(|w, n| {
                assert_eq!(n, 3);
                hits[w].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
        // after the helpers parked, a region still reaches them
        std::thread::sleep(Duration::from_millis(5));
        let sum = AtomicUsize::new(0);
        team.for_each(100, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn shares_cover_the_range_once() {
        for n in [0, 1, 7, 100] {
            for workers in 1..5 {
                let all: Vec<usize> = (0..workers).flat_map(|w| share(n, w, workers)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_helper_panic_reaches_the_caller() {
        let team = WorkerTeam::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(|w, _| {
                if w == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // the team still works afterwards
        let n = AtomicUsize::new(0);
        team.run(|_, _| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
