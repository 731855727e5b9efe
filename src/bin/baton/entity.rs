//! `baton entity …`: create, show, list and transition entities.

use crate::conn::{Conn, Outcome, Page, WriteOpts, events, key_value};
use crate::output;
use baton::proto;
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;

/// `baton entity …`
#[derive(Debug, Subcommand)]
pub enum EntityCmd {
    /// Create an entity of KIND in its initial state.
    Create {
        /// The kind (its machine must be defined).
        kind: String,
        /// The id (default: a server-generated UUIDv7).
        #[arg(long, default_value = "")]
        id: String,
        /// At most one entity per (kind, dedup key): a second create gets the first entity.
        #[arg(long, default_value = "")]
        dedup_key: String,
        /// A field, NAME=VALUE (repeatable).
        #[arg(long = "field", value_parser = key_value)]
        fields: Vec<(String, String)>,
        #[command(flatten)]
        write: WriteOpts,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an entity.
    Get {
        /// The entity id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List entities of KIND, ordered by id.
    List {
        /// The kind.
        kind: String,
        /// Only in this state (repeatable).
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only with this field set (repeatable).
        #[arg(long = "has")]
        has_fields: Vec<String>,
        /// Only without this field (repeatable).
        #[arg(long = "missing")]
        missing_fields: Vec<String>,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        conn: Conn,
    },
    /// Apply transition NAME to entity ID.
    Transition {
        /// The entity id.
        id: String,
        /// The transition's name.
        name: String,
        /// Apply only at this version (compare-and-swap).
        #[arg(long)]
        expect_version: Option<u64>,
        /// Set a field, NAME=VALUE (repeatable).
        #[arg(long = "set", value_parser = key_value)]
        set_fields: Vec<(String, String)>,
        /// Clear a field (repeatable).
        #[arg(long = "clear")]
        clear_fields: Vec<String>,
        /// Append an event TYPE=PAYLOAD after the state change (repeatable).
        #[arg(long = "event", value_parser = key_value)]
        events: Vec<(String, String)>,
        /// Payload of the `final` event when the target state is terminal.
        #[arg(long, default_value = "")]
        final_payload: String,
        #[command(flatten)]
        write: WriteOpts,
        #[command(flatten)]
        conn: Conn,
    },
}

impl EntityCmd {
    /// Where and how the command calls.
    pub fn conn(&self) -> &Conn {
        match self {
            EntityCmd::Create { conn, .. }
            | EntityCmd::Get { conn, .. }
            | EntityCmd::List { conn, .. }
            | EntityCmd::Transition { conn, .. } => conn,
        }
    }
}

/// Runs an entity command.
pub async fn run(cmd: EntityCmd) -> Outcome {
    match cmd {
        EntityCmd::Create {
            kind,
            id,
            dedup_key,
            fields,
            write,
            conn,
        } => {
            let r = conn
                .send(proto::CreateEntityRequest {
                    namespace: conn.ns(),
                    kind,
                    id,
                    dedup_key,
                    fields: fields.into_iter().collect(),
                    fence: write.fence,
                    request_id: write.request_id,
                })
                .await?;
            let e = r.entity.unwrap_or_default();
            let verdict = if r.created { "created" } else { "exists" };
            conn.print(
                json!({ "created": r.created, "entity": output::entity(&e) }),
                format!("{verdict} {}", output::entity_line(&e)),
            );
        }
        EntityCmd::Get { id, conn } => {
            let r = conn
                .send(proto::GetEntityRequest {
                    namespace: conn.ns(),
                    id,
                })
                .await?;
            let e = r.entity.unwrap_or_default();
            conn.print(json!({ "entity": output::entity(&e) }), output::entity_line(&e));
        }
        EntityCmd::List {
            kind,
            states,
            has_fields,
            missing_fields,
            page,
            conn,
        } => {
            let r = conn
                .send(proto::ListEntitiesRequest {
                    namespace: conn.ns(),
                    kind,
                    states,
                    has_fields,
                    missing_fields,
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?;
            let rows: Vec<_> = r.entities.iter().map(output::entity_row).collect();
            let human = output::paged(output::table(output::ENTITY_HEADER, &rows), &r.next_page_token);
            let entities: Vec<_> = r.entities.iter().map(output::entity).collect();
            conn.print(
                json!({ "entities": entities, "next_page_token": r.next_page_token }),
                human,
            );
        }
        EntityCmd::Transition {
            id,
            name,
            expect_version,
            set_fields,
            clear_fields,
            events: evs,
            final_payload,
            write,
            conn,
        } => {
            let r = conn
                .send(proto::TransitionRequest {
                    namespace: conn.ns(),
                    entity_id: id,
                    transition: name,
                    expect_version,
                    fence: write.fence,
                    set_fields: set_fields.into_iter().collect(),
                    clear_fields,
                    events: events(evs),
                    final_payload: final_payload.into_bytes(),
                    final_content_type: String::new(),
                    request_id: write.request_id,
                })
                .await?;
            let e = r.entity.unwrap_or_default();
            let verdict = if r.applied { "applied" } else { "no-op" };
            conn.print(
                json!({ "applied": r.applied, "entity": output::entity(&e), "seqs": r.seqs }),
                format!("{verdict} {} seqs={:?}", output::entity_line(&e), r.seqs),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
