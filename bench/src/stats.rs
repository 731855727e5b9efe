//! What one measured cell counts: a latency histogram, successes, misses and errors by kind.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Highest latency the histograms hold (longer ones are clamped to it): one minute.
const MAX_MICROS: u64 = 60_000_000;

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The operation did what it set out to do (lease granted, transition applied, …).
    Success,
    /// A well-formed "no": the key was held by someone else, a CAS lost. Not an error.
    Miss,
    /// A failure, by kind: a gRPC code name, or a baseline's error kind.
    Error(String),
}

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // Bounds are constants that hdrhistogram accepts, so this cannot fail.
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid"))
    }
}

impl Latency {
    /// Records one latency (clamped to 1 µs .. 1 min).
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS).clamp(1, MAX_MICROS);
        self.0.saturating_record(micros);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail; clamp instead of panicking anyway.
        let _ = self.0.add(&other.0);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Latency at quantile `q` (0.0..=1.0) in microseconds; 0 when empty.
    pub fn micros_at(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    /// The usual quantiles.
    pub fn summary(&self) -> Quantiles {
        Quantiles {
            p50: self.micros_at(0.50),
            p99: self.micros_at(0.99),
            p999: self.micros_at(0.999),
            max: if self.0.is_empty() { 0 } else { self.0.max() },
        }
    }
}

/// Latency quantiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Counts of one client (or merged over all clients) inside the measured window.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub latency: Latency,
    pub successes: u64,
    pub misses: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    /// Records one finished operation.
    pub fn record(&mut self, outcome: Outcome, took: Duration) {
        self.latency.record(took);
        match outcome {
            Outcome::Success => self.successes += 1,
            Outcome::Miss => self.misses += 1,
            Outcome::Error(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    /// Adds another client's counts.
    pub fn merge(&mut self, other: &Stats) {
        self.latency.merge(&other.latency);
        self.successes += other.successes;
        self.misses += other.misses;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    /// Every operation counted.
    pub fn ops(&self) -> u64 {
        self.successes + self.misses + self.errors.values().sum::<u64>()
    }
}

/// Per-second rate of `n` events over `window`.
pub fn rate(n: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        n as f64 / window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn quantiles_of_one_to_a_thousand() {
        let mut l = Latency::default();
        for i in 1..=1000 {
            l.record(micros(i));
        }
        let q = l.summary();
        assert_eq!((q.p50, q.p99, q.p999, q.max), (500, 990, 999, 1000));
    }

    #[test]
    fn quantiles_keep_three_significant_digits_for_large_values() {
        let mut l = Latency::default();
        for _ in 0..99 {
            l.record(micros(1_000));
        }
        l.record(Duration::from_millis(250));
        let q = l.summary();
        assert_eq!(q.p50, 1_000);
        assert_eq!(q.p99, 1_000);
        // 250 ms is held to within 0.1%.
        assert!((249_750..=250_250).contains(&q.p999), "{q:?}");
    }

    #[test]
    fn empty_histogram_reports_zeros_and_extremes_are_clamped() {
        assert_eq!(Latency::default().summary().p99, 0);
        let mut l = Latency::default();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(3600));
        assert_eq!(l.micros_at(0.0), 1);
        assert!(l.summary().max >= MAX_MICROS - MAX_MICROS / 1000);
    }

    #[test]
    fn merged_stats_add_counts_and_errors_by_kind() {
        let mut a = Stats::default();
        a.record(Outcome::Success, micros(10));
        a.record(Outcome::Error("Unavailable".into()), micros(10));
        let mut b = Stats::default();
        b.record(Outcome::Miss, micros(30));
        b.record(Outcome::Error("Unavailable".into()), micros(10));
        b.record(Outcome::Error("Aborted".into()), micros(10));
        a.merge(&b);
        assert_eq!((a.successes, a.misses, a.ops()), (1, 1, 5));
        assert_eq!(a.errors["Unavailable"], 2);
        assert_eq!(a.errors["Aborted"], 1);
        assert_eq!(a.latency.count(), 5);
    }

    #[test]
    fn rate_over_a_window() {
        assert_eq!(rate(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(rate(5, Duration::ZERO), 0.0);
    }
}
