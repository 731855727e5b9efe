//! AppendEvents and StreamEvents (I6, I7, I8). A subscriber registers with the hub first,
//! replays the table from its cursor, then tails signals; whenever it may have missed
//! something (a gap, a lagging channel, a lost notification connection) it re-reads the
//! table by seq. It ends right after `final`.

use super::buffer::{self, EventStream, Feed};
use super::hub::TapeSignal;
use super::{Coordinator, Error, Result};
use crate::domain::DomainError;
use crate::domain::batch::Command;
use crate::domain::command::{AppendEvents, StreamEvents};
use crate::domain::names::{EntityId, Namespace};
use crate::domain::outcome::{AppendOutcome, Outcome};
use crate::domain::tape::{MAX_PAYLOAD, Seq, StoredEvent};
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Most events read from the table per query while catching up (and at most a quarter of
/// the stream's buffer in bytes, so a subscriber waiting for its client holds little).
const PAGE: u32 = 256;

/// One message of an event stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// The next event.
    Event(Arc<StoredEvent>),
    /// Idle; up to date at this seq.
    Heartbeat(Seq),
}

impl Coordinator {
    /// AppendEvents: gapless seqs after the head; nothing after `final`, ever (I7).
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, id = %cmd.entity_id, n = cmd.events.len()))]
    pub async fn append_events(&self, cmd: AppendEvents) -> Result<AppendOutcome> {
        match self.pipeline.submit(Command::Append(cmd)).await? {
            Outcome::Append(out) => Ok(out),
            _ => Err(Error::Internal("AppendEvents answered with another outcome".into())),
        }
    }

    /// StreamEvents: checks the entity exists, then feeds a bounded queue (see `buffer`)
    /// from a spawned subscriber. The stream ends after `final` (OK), or with one error last.
    pub async fn stream_events(&self, cmd: StreamEvents) -> Result<EventStream> {
        self.stream_events_until(cmd, None).await
    }

    /// [`Coordinator::stream_events`] on a connection whose streams must end at `ends` (it
    /// has aged): then the stream ends with [`Error::ConnectionAged`] and its last seq, so
    /// the client resumes on a fresh connection, perhaps another replica's.
    pub async fn stream_events_until(&self, cmd: StreamEvents, ends: Option<Instant>) -> Result<EventStream> {
        let StreamEvents {
            ns,
            entity_id: id,
            after: after_seq,
        } = cmd;
        // Subscribe before the first read: nothing committed after it can be missed.
        let sub = self.hub.subscribe_tape(&ns, &id);
        let entity = crate::telemetry::db_read("entity", self.store.entity(&ns, &id))
            .await?
            .ok_or_else(|| DomainError::NotFound {
                what: "entity".into(),
                name: id.to_string(),
            })?;
        if after_seq > entity.last_seq {
            // Seqs are read from committed rows, so a cursor past the head was never
            // delivered by any replica of this database: a client bug, not a wait.
            return Err(DomainError::invalid(
                "after_seq",
                format!("{after_seq} is past the tape's head {}", entity.last_seq),
            )
            .into());
        }
        let (tx, rx) = buffer::channel(
            &self.streams,
            self.config.stream_buffer,
            format!("{ns}/{id}"),
            after_seq,
        );
        let this = self.clone();
        tokio::spawn(async move {
            let mut sub = sub;
            let mut cursor = after_seq;
            let done = if entity.final_seq.is_some_and(|f| cursor >= f) {
                Ok(())
            } else {
                this.follow(&ns, &id, &mut cursor, &mut sub.rx, &tx, ends).await
            };
            if let Err(e) = done {
                tx.fail(e);
            }
        });
        Ok(rx)
    }

    async fn follow(
        &self,
        ns: &Namespace,
        id: &EntityId,
        cursor: &mut Seq,
        signals: &mut broadcast::Receiver<TapeSignal>,
        out: &Feed,
        ends: Option<Instant>,
    ) -> Result<()> {
        let mut shutdown = self.shutdown.clone();
        // A connection that never ages: a deadline that never comes.
        let aged = async move {
            match ends {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(aged);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.heartbeat,
            self.config.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Send one event; Ok(true) once `final` went out (the stream is complete); Err once
        // the stream takes no more (its client left, or it was cut off with its error queued).
        let send = |ev: Arc<StoredEvent>, cursor: &mut Seq| {
            let seq = ev.seq;
            let is_final = ev.is_final();
            *cursor = seq;
            async move { out.send(StreamItem::Event(ev)).await.map(|()| is_final).map_err(drop) }
        };
        let page_bytes = (self.config.stream_buffer / 4).max(1);
        let mut first = true;
        'catch_up: loop {
            if !std::mem::take(&mut first) {
                metrics::counter!(crate::telemetry::names::STREAM_CATCHUPS).increment(1);
            }
            // Replay from the table until we hold everything stored.
            loop {
                let page =
                    crate::telemetry::db_read("events", self.store.events(ns, id, *cursor, PAGE, page_bytes)).await?;
                // The store stops by count, or before an event that would pass the byte bound:
                // only a page that close to the bound may have left one behind.
                let bytes: usize = page.iter().map(|e| e.payload.len()).sum();
                let full = page.len() == PAGE as usize || bytes + MAX_PAYLOAD > page_bytes;
                for ev in page {
                    match send(Arc::new(ev), cursor).await {
                        Ok(true) | Err(()) => return Ok(()),
                        Ok(false) => heartbeat.reset(),
                    }
                }
                if !full {
                    break;
                }
            }
            // Tail live signals.
            loop {
                tokio::select! {
                    _ = super::raised(&mut shutdown) => return Err(Error::ShuttingDown { last_seq: Some(*cursor) }),
                    _ = &mut aged => return Err(Error::ConnectionAged { last_seq: *cursor }),
                    _ = out.closed() => return Ok(()),
                    _ = heartbeat.tick() => {
                        // (A missed wake-up is made up by the hub's sweep, once per entity.)
                        if out.send(StreamItem::Heartbeat(*cursor)).await.is_err() {
                            return Ok(());
                        }
                    }
                    signal = signals.recv() => match signal {
                        Ok(TapeSignal::Events(events)) => {
                            for ev in events.events() {
                                if ev.seq <= *cursor {
                                    continue;
                                }
                                if ev.seq != cursor.next() {
                                    continue 'catch_up; // a gap: the table has what we missed
                                }
                                match send(ev.clone(), cursor).await {
                                    Ok(true) | Err(()) => return Ok(()),
                                    Ok(false) => heartbeat.reset(),
                                }
                            }
                        }
                        Ok(TapeSignal::Head(head)) if head > *cursor => continue 'catch_up,
                        Ok(TapeSignal::Head(_)) => {}
                        Ok(TapeSignal::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                        Ok(TapeSignal::Gone) => return Err(DomainError::NotFound {
                            what: "entity".into(),
                            name: id.to_string(),
                        }.into()),
                        Err(broadcast::error::RecvError::Closed) => return Err(Error::ShuttingDown { last_seq: Some(*cursor) }),
                    },
                }
            }
        }
    }
}
