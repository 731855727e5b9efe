//! `baton events append` and `baton tail`: write to an entity's tape, and follow it.

use crate::conn::{Conn, Outcome, WriteOpts, events, key_value};
use crate::failure::Failure;
use crate::output::{self, Output};
use baton::domain::tape::FINAL;
use baton::proto::{self, stream_events_response::Item};
use clap::{Args, Subcommand};
use serde_json::json;
use std::hash::{BuildHasher, RandomState};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `baton events …`
#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Append events TYPE=PAYLOAD to entity ID.
    Append {
        /// The entity id.
        id: String,
        /// An event TYPE=PAYLOAD (repeatable; at least one).
        #[arg(long = "event", value_parser = key_value, required = true)]
        events: Vec<(String, String)>,
        /// Drop (instead of reject) the events when the tape is sealed.
        #[arg(long)]
        drop_if_sealed: bool,
        #[command(flatten)]
        write: WriteOpts,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `baton tail ID`
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The entity id.
    id: String,
    /// Start after this seq (0: the whole tape).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Exit 1 when the stream breaks, instead of resuming on a new connection.
    #[arg(long)]
    no_resume: bool,
    /// Stop resuming (exit 1) after this long with neither an event nor a heartbeat.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    give_up_after: Duration,
    #[command(flatten)]
    conn: Conn,
}

impl EventsCmd {
    /// Where and how the command calls.
    pub fn conn(&self) -> &Conn {
        match self {
            EventsCmd::Append { conn, .. } => conn,
        }
    }
}

impl TailArgs {
    /// Where and how the command calls.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs an events command.
pub async fn run(cmd: EventsCmd) -> Outcome {
    let EventsCmd::Append {
        id,
        events: evs,
        drop_if_sealed,
        write,
        conn,
    } = cmd;
    let if_sealed = if drop_if_sealed {
        proto::IfSealed::Drop
    } else {
        proto::IfSealed::Reject
    };
    let r = conn
        .send(proto::AppendEventsRequest {
            namespace: conn.ns(),
            entity_id: id,
            events: events(evs),
            fence: write.fence,
            if_sealed: if_sealed as i32,
            request_id: write.request_id,
        })
        .await?;
    let human = if r.dropped {
        format!("dropped: tape sealed at final seq {}", r.final_seq)
    } else {
        format!("appended seqs={:?}", r.seqs)
    };
    conn.print(
        json!({ "seqs": r.seqs, "dropped": r.dropped, "final_seq": r.final_seq }),
        human,
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints an entity's events as they arrive, each once, and exits 0 right after `final`.
/// A stream that breaks — the transport, a draining replica (`SHUTTING_DOWN`), anything
/// that is not a baton answer — is resumed on a new connection (the replica behind the
/// address may have changed) after the last seq printed, with backoff, until
/// `--give-up-after` passes without progress. A baton answer (`ENTITY_NOT_FOUND`, …) is not
/// retried: asking again would get the same answer.
pub async fn tail(args: TailArgs) -> Outcome {
    let TailArgs {
        id,
        after,
        no_resume,
        give_up_after,
        conn,
    } = args;
    let mut cursor = after;
    let mut backoff = Backoff::default();
    // When the stream first broke since it last made progress.
    let mut stalled_since: Option<Instant> = None;
    loop {
        let mut progressed = false;
        let failure = match follow(&conn, &id, &mut cursor, &mut progressed).await {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(f) => f,
        };
        if no_resume || !failure.resumable() {
            return Err(failure);
        }
        if progressed {
            stalled_since = None;
            backoff = Backoff::default();
        }
        let since = *stalled_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= give_up_after {
            let waited = humantime::format_duration(give_up_after);
            return Err(failure.context(format!("tail {id}: gave up resuming after {waited} without progress")));
        }
        match conn.output() {
            Output::Json => eprintln!(
                "{}",
                json!({ "resuming": { "after_seq": cursor, "cause": failure.json() } })
            ),
            Output::Table => eprintln!("tail {id}: resuming after seq {cursor}: {failure}"),
        }
        tokio::time::sleep(backoff.pause()).await;
    }
}

/// Follows one stream on a new connection, printing the events after `cursor` and moving
/// it. Ok once `final` is printed, or when the server ends the stream without one (it does
/// so only when the cursor is already at `final`: nothing follows it). `progressed` is set
/// by any event or heartbeat: the stream was working.
async fn follow(conn: &Conn, id: &str, cursor: &mut u64, progressed: &mut bool) -> Result<(), Failure> {
    let request = proto::StreamEventsRequest {
        namespace: conn.ns(),
        entity_id: id.to_string(),
        after_seq: *cursor,
    };
    let mut stream = conn.client().await?.stream_events(request).await?.into_inner();
    while let Some(msg) = stream.message().await? {
        match msg.item {
            Some(Item::Event(e)) => {
                *progressed = true;
                // Never print an event twice, whatever a replica sends.
                if e.seq <= *cursor {
                    continue;
                }
                *cursor = e.seq;
                conn.print(output::event(&e), output::event_line(&e));
                if e.r#type == FINAL {
                    return Ok(());
                }
            }
            Some(Item::Heartbeat(_)) => *progressed = true,
            None => {}
        }
    }
    Ok(())
}

/// Pauses between resumes: 50 ms doubling to 2 s, each drawn between half and all of that
/// so the tails of one drained replica do not all reconnect at the same instant.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    fn pause(&mut self) -> Duration {
        let full = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // A random fraction in [0.5, 1), from the standard library's per-process hash keys.
        let random = RandomState::new().hash_one(Instant::now());
        full.mul_f64(0.5 + (random >> 11) as f64 / (1u64 << 53) as f64 / 2.0)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| b.pause()).collect();
        let mut full = Backoff::FIRST;
        for p in pauses {
            assert!(full / 2 <= p && p < full, "{p:?} of {full:?}");
            full = (full * 2).min(Backoff::MAX);
        }
        assert_eq!(full, Backoff::MAX);
    }
}
