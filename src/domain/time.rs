//! Time as microseconds since the Unix epoch. Postgres supplies database time; elsewhere a
//! [`Clock`] does, and tests move it forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    /// How long from `self` until `later` (zero when `later` is not later).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }
}

/// The time source of a store. Production uses the system clock (SQLite) or database time
/// (Postgres, which adds [`Clock::skew_micros`] to `clock_timestamp()`); tests call
/// [`Clock::advance`] to make leases expire and runs go stale without sleeping.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    skew: Arc<AtomicI64>,
}

impl Clock {
    /// The real clock, no skew.
    pub fn system() -> Self {
        Self::default()
    }

    /// Moves this clock (and every store sharing it) forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.skew
            .fetch_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Microseconds added to the underlying time source.
    pub fn skew_micros(&self) -> i64 {
        self.skew.load(Ordering::SeqCst)
    }

    /// System time plus skew.
    pub fn now(&self) -> Timestamp {
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(sys.as_micros()).unwrap_or(i64::MAX) + self.skew_micros())
    }
}
