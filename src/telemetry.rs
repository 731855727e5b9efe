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
    /// Database round trips of the write path.
    pub const DB_ROUND_TRIPS: &str = "baton_db_round_trips_total";
}
