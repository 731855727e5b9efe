//! Orchestration: each call is one store transaction that loads, asks `domain` to decide,
//! writes, records its outcome for retries (I10) and announces its change to the hub.

mod admin;
mod buffer;
mod entities;
mod error;
mod hub;
mod leases;
mod machines;
mod pipeline;
mod tape;

pub use crate::domain::outcome::{AcquireOutcome, AppendOutcome, CreateOutcome, LeaseView, TransitionOutcome};
pub use admin::DueStats;
pub use buffer::EventStream;
pub use error::Error;
pub use hub::Hub;
pub use machines::DefineOutcome;
pub use pipeline::PipelineStats;
pub use tape::StreamItem;

use machines::MachineCache;
use pipeline::Pipeline;

use crate::storage::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most bytes one list call reads from the database (and so holds), besides one row: about
/// what its response may carry (`grpc::convert::MAX_PAGE_BYTES`), so a page of large entities
/// ends early instead of being read whole.
pub const LIST_READ_BYTES: usize = 4 << 20;

/// Result of service calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables of the service layer (their defaults live in `app::Settings`, only there).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Heartbeat interval of idle event streams.
    pub heartbeat: Duration,
    /// How long request-id outcomes are kept.
    pub request_retention: Duration,
    /// Event bytes one stream queues for its client.
    pub stream_buffer: usize,
    /// Event bytes the replica holds for all its streams: three quarters queued for
    /// clients, a quarter of recent events in the hub.
    pub stream_memory: usize,
    /// Deliberate faults (tests only).
    #[doc(hidden)]
    pub faults: crate::faults::Faults,
}

/// The coordinator: cheap to clone, shared by every gRPC handler.
#[derive(Clone)]
pub struct Coordinator {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// The commit pipeline: every write goes through it.
    pipeline: Arc<Pipeline>,
    /// Parsed machines.
    machines: Arc<MachineCache>,
    /// The bytes every stream's queue draws on.
    streams: Arc<buffer::Budget>,
    config: ServiceConfig,
    /// Flips to true when the server drains: streams end with UNAVAILABLE, waits stop.
    shutdown: watch::Receiver<bool>,
}

impl Coordinator {
    /// Wires a coordinator over a store and starts its hub.
    pub fn new(store: Arc<dyn Store>, config: ServiceConfig, shutdown: watch::Receiver<bool>) -> Self {
        let hub = Hub::start(store.changes(), buffer::Budget::new(config.stream_memory / 4));
        let streams = buffer::Budget::new(config.stream_memory - config.stream_memory / 4);
        let machines = Arc::new(MachineCache::default());
        let pipeline = Arc::new(Pipeline::start(store.clone(), machines.clone(), config.faults.clone()));
        tokio::spawn(sweeper(
            Arc::downgrade(&hub),
            store.clone(),
            config.heartbeat,
            shutdown.clone(),
        ));
        Self {
            store,
            hub,
            pipeline,
            machines,
            streams,
            config,
            shutdown,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The commit pipeline's counters.
    pub fn pipeline_stats(&self) -> &Arc<PipelineStats> {
        self.pipeline.stats()
    }

    /// The replica's wake-up hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// One round of housekeeping when this replica is the housekeeper (`None` when it is
    /// not): entities whose due time came (state timeouts, retention), and, with
    /// `purge_requests`, request outcomes older than their retention.
    pub async fn housekeeping(&self, purge_requests: bool) -> Result<Option<Housework>> {
        if !self.store.is_housekeeper().await? {
            return Ok(None);
        }
        let due = self.run_due().await?;
        let mut requests_purged = 0;
        if purge_requests {
            let now = self.store.now().await?;
            let cutoff = crate::domain::time::Timestamp(
                now.0 - i64::try_from(self.config.request_retention.as_micros()).unwrap_or(i64::MAX),
            );
            requests_purged = self.store.purge_requests(cutoff).await?;
        }
        Ok(Some(Housework { due, requests_purged }))
    }
}

/// What one round of housekeeping did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Housework {
    /// Timeouts fired, entities purged, entities looked at too early.
    pub due: DueStats,
    /// Request outcomes deleted.
    pub requests_purged: u64,
}

impl Coordinator {
    /// Runs a write to its end on a task of its own, and waits for it.
    ///
    /// tonic drops a handler's future when its caller goes away (a deadline, a cancel, a
    /// dropped connection). A write that has committed must still be announced and its
    /// outcome recorded, so no write may run in the caller's future: the commit pipeline's
    /// lanes are tasks of their own, and a machine definition runs here.
    pub(crate) async fn detached<T, F>(&self, write: impl FnOnce(Coordinator) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        match tokio::spawn(write(self.clone())).await {
            Ok(outcome) => outcome,
            Err(e) => Err(Error::Internal(format!("write task failed: {e}"))),
        }
    }
}

/// Once per heartbeat, makes up missed wake-ups from the table ([`Hub::sweep`]), until the
/// server drains or the hub is gone.
async fn sweeper(
    hub: std::sync::Weak<Hub>,
    store: Arc<dyn Store>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = raised(&mut shutdown) => return,
            _ = tick.tick() => {}
        }
        let Some(hub) = hub.upgrade() else { return };
        if let Err(e) = hub.sweep(&*store).await {
            tracing::warn!(error = %e, "cannot compare tape heads with the table");
        }
    }
}

/// Resolves once `flag` is true (or its sender is gone). Drops the watch guard at once so
/// callers stay `Send`.
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await.map(|_| ());
}
