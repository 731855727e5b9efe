//! What baton reports about itself: the names of its metrics, in one place ([`METRICS`],
//! which the README's metrics table is checked against), the logging and tracing set-up
//! ([`Telemetry::init`]), and the observation of each RPC ([`Call`]): a counter and a
//! latency histogram by method and code, a span parented on the caller's `traceparent`, and
//! one request log line. Code emits metrics through the `metrics` facade; the admin listener
//! renders them for Prometheus.

mod logs;
mod rpc;

pub use logs::Telemetry;
pub use rpc::{Call, code_name, traces_on};

/// Metric names.
pub mod names {
    /// 1, labelled with the build's `version`.
    pub const BUILD_INFO: &str = "baton_build_info";
    /// Finished RPCs, by `method` and `code`.
    pub const RPC_REQUESTS: &str = "baton_rpc_requests_total";
    /// Seconds per RPC, by `method` and `code` (a stream: its whole life).
    pub const RPC_DURATION: &str = "baton_rpc_duration_seconds";
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
    /// Seconds per database read outside the write path, by `query`.
    pub const DB_READ_SECONDS: &str = "baton_db_read_seconds";
    /// Database connections, by `state` (`in_use`, `idle`).
    pub const DB_CONNECTIONS: &str = "baton_db_connections";
    /// Open StreamEvents streams on this replica.
    pub const STREAMS_OPEN: &str = "baton_streams_open";
    /// Entities with at least one open stream on this replica.
    pub const STREAM_ENTITIES: &str = "baton_stream_entities";
    /// Times a stream re-read the table because it may have missed a wake-up.
    pub const STREAM_CATCHUPS: &str = "baton_stream_catchups_total";
    /// AcquireLease calls waiting for a lease on this replica.
    pub const LEASE_WAITERS: &str = "baton_lease_waiters";
    /// Committed changes the hub missed because it fell behind the change feed.
    pub const HUB_LAGGED: &str = "baton_hub_lagged_total";
    /// Times every subscriber was told to re-read (lost notifications, a lagging hub).
    pub const HUB_RESYNCS: &str = "baton_hub_resyncs_total";
    /// Entities whose subscribers the heartbeat sweep had to wake (a lost wake-up).
    pub const HUB_MISSED_WAKEUPS: &str = "baton_hub_missed_wakeups_total";
    /// Notifications sent to the other replicas (Postgres).
    pub const NOTIFICATIONS_SENT: &str = "baton_notifications_sent_total";
    /// Notifications received from the other replicas (Postgres).
    pub const NOTIFICATIONS_RECEIVED: &str = "baton_notifications_received_total";
    /// Housekeeping runs, by `result` (`ok`, `error`).
    pub const HOUSEKEEPING_RUNS: &str = "baton_housekeeping_runs_total";
    /// Rows housekeeping deleted, by `what`: `requests` (expired request outcomes),
    /// `entities` (finished entities past `retain_after_final`, with their tapes).
    pub const HOUSEKEEPING_PURGED: &str = "baton_housekeeping_purged_total";
    /// State timeouts that fired.
    pub const TIMEOUTS_FIRED: &str = "baton_timeouts_fired_total";
}

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name Prometheus gives the type.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric: its name, type, labels and help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric baton emits (the README's metrics table lists exactly these).
pub const METRICS: &[Metric] = {
    use Kind::*;
    use names::*;
    &[
        m(BUILD_INFO, Gauge, &["version"], "Always 1; the version of this build."),
        m(
            RPC_REQUESTS,
            Counter,
            &["method", "code"],
            "Finished RPCs by method and gRPC code.",
        ),
        m(
            RPC_DURATION,
            Histogram,
            &["method", "code"],
            "Seconds per RPC (a stream: its whole life).",
        ),
        m(
            WRITE_BATCHES,
            Counter,
            &[],
            "Write batches (transactions) the commit pipeline ran.",
        ),
        m(WRITE_COMMANDS, Counter, &[], "Commands those batches decided."),
        m(
            WRITE_DEFERRED,
            Counter,
            &[],
            "Commands put off because another replica held a key.",
        ),
        m(WRITE_BATCH_SIZE, Histogram, &[], "Commands per write batch."),
        m(
            WRITE_PHASE_SECONDS,
            Histogram,
            &["phase"],
            "Seconds per phase of the write path.",
        ),
        m(DB_ROUND_TRIPS, Counter, &[], "Database round trips of the write path."),
        m(
            DB_READ_SECONDS,
            Histogram,
            &["query"],
            "Seconds per database read outside the write path.",
        ),
        m(
            DB_CONNECTIONS,
            Gauge,
            &["state"],
            "Database connections in use and idle.",
        ),
        m(STREAMS_OPEN, Gauge, &[], "Open StreamEvents streams on this replica."),
        m(
            STREAM_ENTITIES,
            Gauge,
            &[],
            "Entities with at least one open stream on this replica.",
        ),
        m(
            STREAM_CATCHUPS,
            Counter,
            &[],
            "Times a stream re-read the table to catch up.",
        ),
        m(
            LEASE_WAITERS,
            Gauge,
            &[],
            "AcquireLease calls waiting for a lease on this replica.",
        ),
        m(
            HUB_LAGGED,
            Counter,
            &[],
            "Committed changes the hub missed by falling behind.",
        ),
        m(HUB_RESYNCS, Counter, &[], "Times every subscriber was told to re-read."),
        m(
            HUB_MISSED_WAKEUPS,
            Counter,
            &[],
            "Entities the heartbeat sweep found behind.",
        ),
        m(
            NOTIFICATIONS_SENT,
            Counter,
            &[],
            "Notifications sent to other replicas.",
        ),
        m(
            NOTIFICATIONS_RECEIVED,
            Counter,
            &[],
            "Notifications received from other replicas.",
        ),
        m(HOUSEKEEPING_RUNS, Counter, &["result"], "Housekeeping runs by result."),
        m(
            HOUSEKEEPING_PURGED,
            Counter,
            &["what"],
            "Rows housekeeping deleted: expired request outcomes, finished entities past retention.",
        ),
        m(TIMEOUTS_FIRED, Counter, &[], "State timeouts that fired."),
    ]
};

/// Registers every metric's help text with the installed recorder and sets the build info.
pub fn describe() {
    for metric in METRICS {
        let help = metric.help;
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, help),
        }
    }
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Times a database read outside the write path (`baton_db_read_seconds{query}`), in a
/// `store.<query>` span when traces are exported.
pub async fn db_read<T>(query: &'static str, read: impl Future<Output = T>) -> T {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let out = if traces_on() {
        read.instrument(tracing::info_span!("store.read", query)).await
    } else {
        read.await
    };
    metrics::histogram!(names::DB_READ_SECONDS, "query" => query).record(started.elapsed().as_secs_f64());
    out
}
