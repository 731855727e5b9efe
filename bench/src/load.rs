//! The load generator shared by every system: N workers loop over one operation each for
//! warm-up + duration; only operations started inside the measured window are counted.

use super::stats::{Outcome, Stats};
use futures::future::BoxFuture;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest one operation may take before it counts as a `Timeout` error, so one hung call
/// cannot hang the whole run.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// One client of a scenario: owns its connection and what it has done (for the checks).
pub trait Worker: Send + 'static {
    /// Runs one operation.
    fn op(&mut self) -> BoxFuture<'_, Outcome>;

    /// Successes per key so far, when the scenario's checks need them.
    fn tally(&self) -> Option<&Tally> {
        None
    }

    /// Calls this worker has sent to the server, warm-up and the call in flight at the end
    /// of the window included (what the server's own counters saw); `None`: not counted.
    fn calls(&self) -> Option<u64> {
        None
    }
}

/// How long to warm up (not counted) and then measure.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
}

/// The workers back (with their tallies) and the merged stats of the window.
pub struct Run<W> {
    pub workers: Vec<W>,
    pub stats: Stats,
}

impl<W: Worker> Run<W> {
    /// Adds the workers' tallies to the run's cumulative one; returns this cell's (whose
    /// touched keys the checks read back) and the cumulative one (what they should hold).
    pub fn settle(&self, cumulative: &mut Tally) -> (Tally, Tally) {
        let mut cell = Tally::default();
        for t in self.workers.iter().filter_map(Worker::tally) {
            cell.merge(t);
        }
        cumulative.merge(&cell);
        (cell, cumulative.clone())
    }

    /// Every call the workers sent, warm-up and tail included; `None` unless every worker
    /// counts its calls.
    pub fn calls(&self) -> Option<u64> {
        self.workers.iter().map(Worker::calls).sum()
    }
}

/// The newest version of each entity any of `known` saw (element-wise maximum): what the
/// next cell's clients start from.
pub fn newest<'a>(known: impl IntoIterator<Item = &'a [u64]>) -> Vec<u64> {
    let mut out: Vec<u64> = vec![];
    for k in known {
        if out.len() < k.len() {
            out.resize(k.len(), 0);
        }
        for (a, b) in out.iter_mut().zip(k) {
            *a = (*a).max(*b);
        }
    }
    out
}

/// The long leases of `fenced-transition`, granted once at setup: when they were asked for,
/// so a cell that would outlast them renews them first.
#[derive(Debug, Clone, Copy)]
pub struct FenceLeases {
    /// Taken before the grants were asked for, so `asked + FENCE_TTL` is never later than
    /// the server's expiry.
    asked: Instant,
}

/// TTL of the fenced-transition leases: the longest the server grants.
pub const FENCE_TTL: Duration = Duration::from_secs(3600);
/// Holder of every fenced-transition lease: one holder per entity, shared by the clients.
pub const FENCE_HOLDER: &str = "bench";
/// Room left after a cell (its checks, a slow shutdown) before a fence lease may expire.
const FENCE_MARGIN: Duration = Duration::from_secs(120);

impl FenceLeases {
    /// Call right before asking for (or renewing) the leases.
    pub fn asking() -> Self {
        Self { asked: Instant::now() }
    }

    /// Whether the leases must be renewed before a cell of `timing`; an error when even a
    /// fresh lease would expire inside the cell.
    pub fn renew_before(&self, timing: Timing) -> Result<bool, String> {
        self.renew_at(Instant::now(), timing)
    }

    fn renew_at(&self, now: Instant, timing: Timing) -> Result<bool, String> {
        let needed = timing.warmup + timing.duration + FENCE_MARGIN;
        if needed > FENCE_TTL {
            return Err(format!(
                "fenced-transition cells must end within {FENCE_TTL:?} of a lease renewal \
                 (warm-up + duration + {FENCE_MARGIN:?} of margin); use a shorter --duration"
            ));
        }
        Ok(now + needed > self.asked + FENCE_TTL)
    }
}

/// The key client `worker` of `clients` works on next, out of `n`: one of the keys it owns
/// (`worker`, `worker + clients`, …), as an orchestrator only drives the entities whose
/// lease it holds. With more clients than keys the surplus clients share all of them.
pub fn owned_key(rng: &mut fastrand::Rng, worker: usize, clients: usize, n: usize) -> usize {
    if clients == 0 || worker >= n {
        return rng.usize(..n);
    }
    let owned = (n - worker).div_ceil(clients);
    worker + clients * rng.usize(..owned)
}

/// A fresh request id, as an orchestrator sends with every mutating call.
pub fn request_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The outcome of an operation that succeeded (`Ok(true)`, tallied on key `i`), was
/// refused (`Ok(false)`, a miss) or failed (an error of kind `kind(e)`).
pub fn tallied<E>(done: Result<bool, E>, tally: &mut Tally, i: usize, kind: impl FnOnce(&E) -> String) -> Outcome {
    match done {
        Ok(true) => {
            tally.add(i);
            Outcome::Success
        }
        Ok(false) => Outcome::Miss,
        Err(e) => Outcome::Error(kind(&e)),
    }
}

/// Runs every worker until warm-up + duration has passed. Operations in flight at the end
/// finish (their effects are in the workers' tallies) but are not in the stats.
pub async fn drive<W: Worker>(workers: Vec<W>, timing: Timing) -> Result<Run<W>, String> {
    let measure_from = Instant::now() + timing.warmup;
    let end = measure_from + timing.duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut stats = Stats::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let outcome = tokio::time::timeout(OP_TIMEOUT, w.op())
                        .await
                        .unwrap_or_else(|_| Outcome::Error("Timeout".into()));
                    if started >= measure_from {
                        stats.record(outcome, started.elapsed());
                    }
                }
                (w, stats)
            })
        })
        .collect();
    let mut run = Run {
        workers: Vec::with_capacity(tasks.len()),
        stats: Stats::default(),
    };
    for t in tasks {
        let (w, stats) = t.await.map_err(|e| format!("a bench client failed: {e}"))?;
        run.stats.merge(&stats);
        run.workers.push(w);
    }
    Ok(run)
}

/// The instant every payload timestamp counts from (one process sends and receives).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Now, as nanoseconds since the bench started: what a fan-out payload carries.
pub fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Encodes a send instant as a payload.
pub fn stamp() -> Vec<u8> {
    now_nanos().to_be_bytes().to_vec()
}

/// The send instant a payload carries, if it is one of ours.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

/// Delivery latency of a payload stamped at `sent` (nanoseconds since the bench started).
pub fn since(sent: u64) -> Duration {
    Duration::from_nanos(now_nanos().saturating_sub(sent))
}

/// Successes per key index: what the end-of-scenario checks compare with the store.
#[derive(Debug, Clone, Default)]
pub struct Tally(Vec<u64>);

impl Tally {
    /// A tally over `n` keys, all zero.
    pub fn new(n: usize) -> Self {
        Self(vec![0; n])
    }

    /// One more success on key `i`.
    pub fn add(&mut self, i: usize) {
        self.0[i] += 1;
    }

    /// Adds another tally over the same keys.
    pub fn merge(&mut self, other: &Tally) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    /// Successes on key `i`.
    pub fn get(&self, i: usize) -> u64 {
        self.0.get(i).copied().unwrap_or(0)
    }

    /// Indices with at least one success.
    pub fn touched(&self) -> Vec<usize> {
        (0..self.0.len()).filter(|&i| self.0[i] > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_reject_foreign_payloads() {
        let s = stamp();
        assert!(read_stamp(&s).is_some());
        assert_eq!(read_stamp(b"not a stamp"), None);
    }

    #[test]
    fn settle_adds_the_cell_to_the_cumulative_tally() {
        let mut cumulative = Tally::new(3);
        cumulative.add(0);
        let (mut a, mut b) = (Counter(0, Tally::new(3)), Counter(0, Tally::new(3)));
        a.1.add(1);
        b.1.add(1);
        b.1.add(2);
        let run = Run {
            workers: vec![a, b],
            stats: Stats::default(),
        };
        let (cell, _) = run.settle(&mut cumulative);
        assert_eq!(cell.touched(), vec![1, 2]);
        assert_eq!((cumulative.get(0), cumulative.get(1), cumulative.get(2)), (1, 2, 1));
    }

    #[test]
    fn clients_own_disjoint_keys_that_cover_them_all() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (clients, n) = (3, 10);
        let mut owner = vec![None; n];
        for w in 0..clients {
            for _ in 0..200 {
                let k = owned_key(&mut rng, w, clients, n);
                assert_eq!(*owner[k].get_or_insert(w), w, "key {k} picked by two clients");
            }
        }
        assert!(owner.iter().all(Option::is_some), "a key nobody picks: {owner:?}");
        // More clients than keys: the surplus ones still get a key in range.
        assert!(owned_key(&mut rng, 5, 8, 4) < 4);
    }

    #[test]
    fn newest_takes_each_entitys_highest_version() {
        let (a, b) = (vec![1, 5, 2], vec![3, 4]);
        assert_eq!(newest([a.as_slice(), b.as_slice()]), vec![3, 5, 2]);
        assert_eq!(newest(std::iter::empty::<&[u64]>()), Vec::<u64>::new());
    }

    #[test]
    fn fence_leases_are_renewed_only_when_a_cell_would_outlast_them() {
        let short = Timing {
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
        };
        let leases = FenceLeases::asking();
        assert_eq!(leases.renew_before(short), Ok(false));
        let later = leases.asked + Duration::from_secs(3500);
        assert_eq!(leases.renew_at(later, short), Ok(true));
        let too_long = Timing {
            warmup: Duration::ZERO,
            duration: FENCE_TTL,
        };
        assert!(FenceLeases::asking().renew_before(too_long).is_err());
    }

    #[test]
    fn tallied_counts_only_successes() {
        let mut t = Tally::new(2);
        let kind = |e: &&str| e.to_string();
        assert_eq!(tallied(Ok(true), &mut t, 1, kind), Outcome::Success);
        assert_eq!(tallied(Ok(false), &mut t, 1, kind), Outcome::Miss);
        assert_eq!(
            tallied(Err("pg:40001"), &mut t, 1, kind),
            Outcome::Error("pg:40001".into())
        );
        assert_eq!((t.get(0), t.get(1)), (0, 1));
    }

    struct Counter(u64, Tally);
    impl Worker for Counter {
        fn op(&mut self) -> BoxFuture<'_, Outcome> {
            Box::pin(async move {
                self.0 += 1;
                tokio::task::yield_now().await;
                Outcome::Success
            })
        }

        fn tally(&self) -> Option<&Tally> {
            Some(&self.1)
        }

        fn calls(&self) -> Option<u64> {
            Some(self.0)
        }
    }

    #[tokio::test]
    async fn only_the_window_is_counted_but_every_op_reaches_the_worker() {
        let timing = Timing {
            warmup: Duration::from_millis(20),
            duration: Duration::from_millis(20),
        };
        let run = drive(vec![Counter(0, Tally::default()), Counter(0, Tally::default())], timing)
            .await
            .unwrap();
        let done: u64 = run.workers.iter().map(|w| w.0).sum();
        assert_eq!(run.calls(), Some(done));
        assert!(run.stats.successes > 0);
        assert!(done > run.stats.successes, "warm-up ops are done but not counted");
    }
}
