//! The replica's wake-up hub. One task reads the store's committed changes (NOTIFY from
//! every replica, or in-process for SQLite) and fans each out from one in-memory copy to
//! the local stream subscribers of that entity and the lease waiters of that key.
//!
//! A wake-up can still be missed (a replica that died between its commit and its NOTIFY,
//! a bug): [`Hub::sweep`] compares, once per heartbeat, the head the hub last heard of for
//! every subscribed entity with the stored one, in one query, and wakes the subscribers of
//! any entity that is behind (and tells those of a deleted entity it is gone) — so a missed wake-up costs at most one heartbeat.

use super::buffer::{Budget, Held};
use crate::domain::names::{EntityId, LeaseKey, Namespace};
use crate::domain::tape::{Seq, StoredEvent};
use crate::storage::{Change, Store};
use crate::telemetry::names;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, broadcast, watch};

/// What a tape subscriber hears.
#[derive(Clone)]
pub enum TapeSignal {
    /// New events, in seq order.
    Events(Arc<RecentEvents>),
    /// The tape grew to this head; read the new events from the table.
    Head(Seq),
    /// Something may have been missed; re-read from the table.
    Resync,
    /// The entity is gone (deleted, or purged past its retention).
    Gone,
}

/// New events as the hub fans them out, their bytes counted against the replica's budget
/// for recent events until every subscriber has taken them (or the channel overwrote them).
pub struct RecentEvents {
    events: Vec<Arc<StoredEvent>>,
    _held: Held,
}

impl RecentEvents {
    /// The events, in seq order.
    pub fn events(&self) -> impl Iterator<Item = &Arc<StoredEvent>> {
        self.events.iter()
    }
}

type TapeKey = (Namespace, EntityId);
type LeaseKeyOf = (Namespace, LeaseKey);

/// One subscribed entity.
struct Tape {
    signals: broadcast::Sender<TapeSignal>,
    /// The highest head this replica has heard of (None until the first sweep or change).
    head: Option<Seq>,
}

/// Entities whose stored heads one sweep query reads.
const SWEEP_CHUNK: usize = 500;

/// Per-replica registry of subscribers and waiters.
pub struct Hub {
    /// Bytes of new events in the subscribers' channels: past it, subscribers hear only the
    /// new head and read the events from the table.
    recent: Arc<Budget>,
    tapes: Mutex<HashMap<TapeKey, Tape>>,
    leases: Mutex<HashMap<LeaseKeyOf, Arc<Notify>>>,
    /// How many lease waiters are registered, published so that tests (and metrics) can
    /// wait for a waiter to park instead of polling.
    waiting: watch::Sender<usize>,
}

/// Capacity of one entity's signal channel; a subscriber further behind gets `Lagged` and
/// re-reads from the table. The bytes the channels hold are bounded by the hub's budget.
const TAPE_CHANNEL_CAPACITY: usize = 256;

impl Hub {
    /// Starts the dispatch task over a store's change feed; the events it fans out hold at
    /// most `recent` bytes at once.
    pub fn start(mut changes: broadcast::Receiver<Change>, recent: Arc<Budget>) -> Arc<Self> {
        let hub = Arc::new(Self {
            recent,
            tapes: Mutex::default(),
            leases: Mutex::default(),
            waiting: watch::channel(0).0,
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                let change = match changes.recv().await {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!(names::HUB_LAGGED).increment(n);
                        tracing::warn!(missed = n, "hub lagged behind the change feed; resyncing");
                        Change::Resync
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(hub) = weak.upgrade() else { return };
                hub.dispatch(change);
            }
        });
        hub
    }

    fn dispatch(&self, change: Change) {
        match change {
            Change::Tape {
                ns,
                entity_id,
                head,
                events,
            } => {
                let mut tapes = self.tapes.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tape) = tapes.get_mut(&(ns, entity_id)) {
                    tape.head = tape.head.max(Some(head));
                    let bytes = events.iter().map(|e| 64 + e.payload.len()).sum();
                    let held = (!events.is_empty()).then(|| self.recent.try_take(bytes)).flatten();
                    let signal = match held {
                        Some(held) => TapeSignal::Events(Arc::new(RecentEvents { events, _held: held })),
                        None => TapeSignal::Head(head),
                    };
                    let _ = tape.signals.send(signal);
                }
            }
            Change::LeaseFreed { ns, key } => {
                if let Some(n) = self.leases.lock().unwrap_or_else(|p| p.into_inner()).get(&(ns, key)) {
                    n.notify_waiters();
                }
            }
            Change::Resync => {
                metrics::counter!(names::HUB_RESYNCS).increment(1);
                for tape in self.tapes.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    let _ = tape.signals.send(TapeSignal::Resync);
                }
                for n in self.leases.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    n.notify_waiters();
                }
            }
        }
    }

    /// Wakes the subscribers of every entity whose stored head is past the head this
    /// replica has heard of: one query per [`SWEEP_CHUNK`] subscribed entities, whatever the
    /// number of streams. Returns how many entities were behind.
    pub async fn sweep(&self, store: &dyn Store) -> crate::storage::Result<usize> {
        let keys: Vec<TapeKey> = self
            .tapes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut behind = 0;
        for chunk in keys.chunks(SWEEP_CHUNK) {
            let heads = store.heads(chunk).await?;
            let mut tapes = self.tapes.lock().unwrap_or_else(|p| p.into_inner());
            let stored: std::collections::HashSet<&TapeKey> = heads.iter().map(|(k, _)| k).collect();
            for key in chunk.iter().filter(|k| !stored.contains(k)) {
                if let Some(tape) = tapes.get(key) {
                    let _ = tape.signals.send(TapeSignal::Gone);
                }
            }
            for (key, stored) in heads {
                let Some(tape) = tapes.get_mut(&key) else { continue };
                if tape.head.is_none_or(|known| stored > known) {
                    if tape.head.is_some() {
                        behind += 1;
                    }
                    tape.head = Some(stored);
                    let _ = tape.signals.send(TapeSignal::Head(stored));
                }
            }
        }
        if behind > 0 {
            metrics::counter!(names::HUB_MISSED_WAKEUPS).increment(behind as u64);
            tracing::warn!(entities = behind, "missed wake-ups made up from the table");
        }
        Ok(behind)
    }

    /// Subscribes to an entity's signals. Subscribe *before* reading the table, so nothing
    /// committed after the read can be missed.
    pub fn subscribe_tape(self: &Arc<Self>, ns: &Namespace, id: &EntityId) -> TapeSubscription {
        let key = (ns.clone(), id.clone());
        let mut tapes = self.tapes.lock().unwrap_or_else(|p| p.into_inner());
        let rx = tapes
            .entry(key.clone())
            .or_insert_with(|| Tape {
                signals: broadcast::channel(TAPE_CHANNEL_CAPACITY).0,
                head: None,
            })
            .signals
            .subscribe();
        TapeSubscription {
            rx,
            hub: self.clone(),
            key,
        }
    }

    /// The wake-up of a lease key's waiters.
    pub fn lease_waiter(self: &Arc<Self>, ns: &Namespace, key: &LeaseKey) -> LeaseWaiter {
        let k = (ns.clone(), key.clone());
        let notify = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(k.clone())
            .or_default()
            .clone();
        self.waiting.send_modify(|n| *n += 1);
        LeaseWaiter {
            notify,
            hub: self.clone(),
            key: k,
        }
    }

    /// Number of callers waiting on a lease key (for tests and metrics).
    pub fn lease_waiters(&self, ns: &Namespace, key: &LeaseKey) -> usize {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(&(ns.clone(), key.clone()))
            .map_or(0, |n| Arc::strong_count(n) - 1)
    }

    /// The number of registered lease waiters, on every change.
    pub fn watch_lease_waiters(&self) -> watch::Receiver<usize> {
        self.waiting.subscribe()
    }

    /// Number of entities with local subscribers (for tests and metrics).
    pub fn subscribed_tapes(&self) -> usize {
        self.tapes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of local tape subscribers: one per open event stream (for metrics).
    pub fn tape_subscribers(&self) -> usize {
        let tapes = self.tapes.lock().unwrap_or_else(|p| p.into_inner());
        tapes.values().map(|t| t.signals.receiver_count()).sum()
    }

    /// Number of lease waiters registered (for metrics).
    pub fn waiting_for_leases(&self) -> usize {
        *self.waiting.borrow()
    }
}

/// A subscriber's receiver; unregisters the entity when the last one goes.
pub struct TapeSubscription {
    /// Signals for this entity.
    pub rx: broadcast::Receiver<TapeSignal>,
    hub: Arc<Hub>,
    key: TapeKey,
}

impl Drop for TapeSubscription {
    fn drop(&mut self) {
        let mut tapes = self.hub.tapes.lock().unwrap_or_else(|p| p.into_inner());
        // Our own receiver is still alive here: 1 means we are the last.
        if tapes.get(&self.key).is_some_and(|t| t.signals.receiver_count() <= 1) {
            tapes.remove(&self.key);
        }
    }
}

/// A lease waiter's wake-up; unregisters the key when the last waiter goes.
pub struct LeaseWaiter {
    /// Notified on release of the key, and on resync.
    pub notify: Arc<Notify>,
    hub: Arc<Hub>,
    key: LeaseKeyOf,
}

impl Drop for LeaseWaiter {
    fn drop(&mut self) {
        let mut leases = self.hub.leases.lock().unwrap_or_else(|p| p.into_inner());
        // The map's copy and ours: 2 means no other waiter.
        if Arc::strong_count(&self.notify) <= 2 {
            leases.remove(&self.key);
        }
        self.hub.waiting.send_modify(|n| *n = n.saturating_sub(1));
    }
}
