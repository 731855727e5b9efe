//! How replicas hear of each other's commits: a batched `NOTIFY` after commit, and one
//! `LISTEN` connection per replica. Local subscribers are woken in-process at once; a
//! notification lost with a crashed replica is made up by the hub's heartbeat sweep.

use super::super::Change;
use super::conn::{Endpoint, Slot};
use crate::domain::names::{EntityId, LeaseKey, Namespace};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::Timestamp;
use base64::Engine;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

pub const TAPE_CHANNEL: &str = "baton_tape";
pub const LEASE_CHANNEL: &str = "baton_lease";
/// "Re-read everything": sent when notifications may have been lost.
pub const RESYNC_CHANNEL: &str = "baton_resync";
/// Postgres refuses NOTIFY payloads of 8000 bytes or more; events travel whole below this.
const MAX_NOTIFY_PAYLOAD: usize = 7000;

#[derive(serde::Serialize, serde::Deserialize)]
struct WireTape {
    ns: String,
    id: String,
    head: Seq,
    #[serde(default)]
    ev: Vec<WireEvent>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireEvent {
    seq: u64,
    t: String,
    ct: String,
    p: String,
    st: Option<String>,
    at: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireLease {
    ns: String,
    key: String,
}

/// Announces committed changes: to this replica's subscribers at once, to the others
/// through the notifier.
pub struct Announcer {
    pub changes: broadcast::Sender<Change>,
    pub notices: mpsc::UnboundedSender<(&'static str, String)>,
    /// Prefixes this replica's notifications, so its listener skips them unread.
    pub replica: u64,
}

impl Announcer {
    pub fn announce(&self, committed: Vec<Change>) {
        for change in committed {
            if let Some((channel, payload)) = encode(&change) {
                let _ = self.notices.send((channel, format!("{}{payload}", tag(self.replica))));
            }
            let _ = self.changes.send(change);
        }
    }
}

/// The fixed-width prefix naming the replica a notification came from.
pub fn tag(replica: u64) -> String {
    format!("{replica:016x}")
}

/// A change as a notification (channel, payload) for the other replicas.
fn encode(change: &Change) -> Option<(&'static str, String)> {
    match change {
        Change::Tape {
            ns,
            entity_id,
            head,
            events,
        } => Some((TAPE_CHANNEL, encode_tape(ns, entity_id, *head, events))),
        Change::LeaseFreed { ns, key } => {
            let wire = WireLease {
                ns: ns.to_string(),
                key: key.to_string(),
            };
            Some((LEASE_CHANNEL, serde_json::to_string(&wire).unwrap_or_default()))
        }
        Change::Resync => None,
    }
}

/// The tape notification: the new events themselves when small, else just the head.
fn encode_tape(ns: &Namespace, id: &EntityId, head: Seq, events: &[Arc<StoredEvent>]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut wire = WireTape {
        ns: ns.to_string(),
        id: id.to_string(),
        head,
        ev: events
            .iter()
            .map(|e| WireEvent {
                seq: e.seq.get(),
                t: e.event_type.clone(),
                ct: e.content_type.clone(),
                p: b64.encode(&e.payload),
                st: e.state.clone(),
                at: e.created_at.0,
            })
            .collect(),
    };
    let full = serde_json::to_string(&wire).unwrap_or_default();
    if full.len() <= MAX_NOTIFY_PAYLOAD {
        return full;
    }
    wire.ev.clear();
    serde_json::to_string(&wire).unwrap_or_default()
}

/// A notification (its replica prefix removed) as a change.
fn decode(channel: &str, payload: &str) -> Option<Change> {
    let b64 = base64::engine::general_purpose::STANDARD;
    match channel {
        TAPE_CHANNEL => {
            let w: WireTape = serde_json::from_str(payload).ok()?;
            let events =
                w.ev.into_iter()
                    .map(|e| {
                        Some(Arc::new(StoredEvent {
                            seq: Seq::parse("seq", e.seq).ok()?,
                            event_type: e.t,
                            payload: b64.decode(e.p).ok()?,
                            content_type: e.ct,
                            state: e.st,
                            created_at: Timestamp(e.at),
                        }))
                    })
                    .collect::<Option<Vec<_>>>()?;
            Some(Change::Tape {
                ns: Namespace::parse("ns", w.ns).ok()?,
                entity_id: EntityId::parse("id", w.id).ok()?,
                head: w.head,
                events,
            })
        }
        LEASE_CHANNEL => {
            let w: WireLease = serde_json::from_str(payload).ok()?;
            Some(Change::LeaseFreed {
                ns: Namespace::parse("ns", w.ns).ok()?,
                key: LeaseKey::parse("key", w.key).ok()?,
            })
        }
        _ => None,
    }
}

/// Sends committed changes to the other replicas: `pg_notify` after commit, in batches (one
/// statement for everything queued meanwhile). A NOTIFY inside the write itself would hold
/// Postgres's cluster-wide notify lock across the commit's WAL flush, serializing every tape
/// write; this way the lock is taken once per batch. The price: a replica that dies between
/// a commit and its batch leaves the others' subscribers unwoken until their hub's next
/// heartbeat sweep.
pub async fn notifier(endpoint: Endpoint, slot: Slot, mut queued: mpsc::UnboundedReceiver<(&'static str, String)>) {
    // One NOTIFY statement carries at most this much payload.
    const BATCH_BYTES: usize = 256 * 1024;
    while let Some(first) = queued.recv().await {
        let mut size = first.1.len();
        let (mut channels, mut payloads) = (vec![first.0], vec![first.1]);
        while size < BATCH_BYTES
            && let Ok((c, p)) = queued.try_recv()
        {
            size += p.len();
            channels.push(c);
            payloads.push(p);
        }
        let sent = match slot.get(&endpoint).await {
            Ok(conn) => conn
                .client
                .execute(&conn.q.notify, &[&channels, &payloads])
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if sent.is_ok() {
            metrics::counter!(crate::telemetry::names::NOTIFICATIONS_SENT).increment(payloads.len() as u64);
        }
        if let Err(e) = sent {
            // The other replicas may have missed these: ask them to re-read (this replica
            // delivered them itself). If even that fails, their heartbeat sweeps will.
            tracing::warn!(error = %e, n = payloads.len(), "cannot notify other replicas; asking them to resync");
            if let Ok(conn) = slot.get(&endpoint).await {
                let resync = conn
                    .client
                    .execute(&conn.q.notify, &[&vec![RESYNC_CHANNEL], &vec![String::new()]])
                    .await;
                if resync.is_err() {
                    slot.clear().await;
                }
            }
        }
    }
}

/// The replica's one LISTEN connection. After every (re)connection it announces `Resync`,
/// so subscribers re-read from their last seq whatever was committed while it was down.
pub async fn listen(
    endpoint: Endpoint,
    changes: broadcast::Sender<Change>,
    replica: u64,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let own = tag(replica);
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let (client, mut connection) = tokio::select! {
            _ = stop.changed() => return,
            c = endpoint.connect() => match c {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %super::conn::describe_pg(&e), "notification listener cannot connect; retrying");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        // The connection's messages: our LISTEN's answer and every notification.
        let (tx, mut notes) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "notification connection failed");
                        return;
                    }
                }
            }
        });
        let listening = format!("LISTEN {TAPE_CHANNEL}; LISTEN {LEASE_CHANNEL}; LISTEN {RESYNC_CHANNEL}");
        if let Err(e) = client.batch_execute(&listening).await {
            tracing::warn!(error = %e, "cannot LISTEN; retrying");
            driver.abort();
            continue;
        }
        backoff = Duration::from_millis(50);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        // Anything committed while we were not listening is found by re-reading.
        let _ = changes.send(Change::Resync);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    driver.abort();
                    return;
                }
                note = notes.recv() => match note {
                    Some(n) if n.channel() == RESYNC_CHANNEL => { let _ = changes.send(Change::Resync); }
                    // Our own: delivered at commit already; skipped without parsing.
                    Some(n) if n.payload().starts_with(own.as_str()) => {}
                    Some(n) => match n.payload().get(own.len()..).and_then(|p| decode(n.channel(), p)) {
                        Some(change) => {
                            metrics::counter!(crate::telemetry::names::NOTIFICATIONS_RECEIVED).increment(1);
                            let _ = changes.send(change);
                        }
                        None => tracing::warn!(channel = n.channel(), "undecodable notification"),
                    },
                    None => {
                        tracing::warn!("notification connection was lost; reconnecting and resyncing subscribers");
                        let _ = changes.send(Change::Resync);
                        break;
                    }
                },
            }
        }
        drop(client);
    }
}
