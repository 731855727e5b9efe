//! Orchestration: each call is one store transaction that loads, asks `domain` to decide,
//! writes, records its outcome for retries (I10) and announces its change to the hub.

mod entities;
mod error;
mod hub;
mod idempotency;
mod leases;
mod machines;
mod queue;
mod tape;

pub use entities::{CreateOutcome, TransitionOutcome};
pub use error::Error;
pub use hub::Hub;
pub use leases::{AcquireOutcome, LeaseView};
pub use machines::DefineOutcome;
pub use tape::{AppendOutcome, StreamItem};

use machines::MachineCache;
use queue::KeyQueue;

use crate::storage::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Result of service calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables of the service layer (their defaults live in `app::Settings`, only there).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Heartbeat interval of idle event streams.
    pub heartbeat: Duration,
    /// How long request-id outcomes are kept.
    pub request_retention: Duration,
}

/// The coordinator: cheap to clone, shared by every gRPC handler.
#[derive(Clone)]
pub struct Coordinator {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// Writers of one key take turns here before they take the key's database lock.
    queue: Arc<KeyQueue>,
    /// Parsed machines, checked at commit.
    machines: Arc<MachineCache>,
    config: ServiceConfig,
    /// Flips to true when the server drains: streams end with UNAVAILABLE, waits stop.
    shutdown: watch::Receiver<bool>,
}

impl Coordinator {
    /// Wires a coordinator over a store and starts its hub.
    pub fn new(store: Arc<dyn Store>, config: ServiceConfig, shutdown: watch::Receiver<bool>) -> Self {
        let hub = Hub::start(store.changes());
        Self {
            store,
            hub,
            queue: Arc::default(),
            machines: Arc::default(),
            config,
            shutdown,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The replica's wake-up hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Deletes expired request outcomes when this replica is the housekeeper.
    pub async fn housekeeping(&self) -> Result<u64> {
        if !self.store.is_housekeeper().await? {
            return Ok(0);
        }
        let now = self.store.now().await?;
        let cutoff = crate::domain::time::Timestamp(
            now.0 - i64::try_from(self.config.request_retention.as_micros()).unwrap_or(i64::MAX),
        );
        Ok(self.store.purge_requests(cutoff).await?)
    }
}

/// Resolves once `flag` is true (or its sender is gone). Drops the watch guard at once so
/// callers stay `Send`.
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await.map(|_| ());
}
