//! What baton reports about itself: the names of its metrics, in one place (the README's
//! metrics table lists them). Code emits through the `metrics` facade; the admin listener
//! renders them for Prometheus.

/// Metric names.
pub mod names {
    /// Write batches (transactions) the commit pipeline ran.
    pub const WRITE_BATCHES: &str = "baton_write_batches_total";
    /// Commands those batches decided.
    pub const WRITE_COMMANDS: &str = "baton_write_commands_total";
    /// Commands put off because another replica held a key they need.
    pub const WRITE_DEFERRED: &str = "baton_write_deferred_total";
    /// Commands per batch.
    pub const WRITE_BATCH_SIZE: &str = "baton_write_batch_size";
    /// Seconds per phase of the write path, by `phase`: `queue` (a command waiting for its
    /// batch), `read` (begin, lock and read: one round trip), `decide` (the domain rules, in
    /// memory), `commit` (write and commit: one round trip).
    pub const WRITE_PHASE_SECONDS: &str = "baton_write_phase_seconds";
    /// Database round trips of the write path.
    pub const DB_ROUND_TRIPS: &str = "baton_db_round_trips_total";
}
