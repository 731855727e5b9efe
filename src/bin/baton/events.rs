//! `baton events append` and `baton tail`: write to an entity's tape, and follow it.

use crate::conn::{Conn, Outcome, WriteOpts, events, key_value};
use crate::output;
use baton::proto;
use clap::{Args, Subcommand};
use serde_json::json;
use std::process::ExitCode;

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

/// Prints an entity's events as they arrive; exits 0 after `final`.
pub async fn tail(TailArgs { id, after, conn }: TailArgs) -> Outcome {
    let mut stream = conn
        .client()
        .await?
        .stream_events(proto::StreamEventsRequest {
            namespace: conn.ns(),
            entity_id: id,
            after_seq: after,
        })
        .await?
        .into_inner();
    while let Some(msg) = stream.message().await? {
        if let Some(proto::stream_events_response::Item::Event(e)) = msg.item {
            conn.print(output::event(&e), output::event_line(&e));
        }
    }
    Ok(ExitCode::SUCCESS)
}
