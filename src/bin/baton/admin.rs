//! `baton admin …`: the operator's levers — list live leases and machines, end a stuck
//! holder's lease, delete an entity.

use crate::conn::{Conn, Outcome, Page};
use crate::output;
use baton::proto;
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;

/// `baton admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// List live leases (holder, token, expiry), by key.
    Leases {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        conn: Conn,
    },
    /// End KEY's live lease whoever holds it: writes fenced with its token fail from now on,
    /// and the next grant gets a higher token.
    ForceRelease {
        /// The lease key.
        key: String,
        /// Who is doing this (your name or a ticket), written to the server's log.
        #[arg(long)]
        by: String,
        /// Idempotency key: a retry with the same id returns the first outcome.
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the namespace's machines, by kind.
    Machines {
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete entity ID and its tape (only a finished one, unless --force).
    Delete {
        /// The entity id.
        id: String,
        /// Delete it even when it is not in a terminal state (its open streams end NOT_FOUND).
        #[arg(long)]
        force: bool,
        /// Idempotency key: a retry with the same id returns the first outcome.
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

impl AdminCmd {
    /// Where and how the command calls.
    pub fn conn(&self) -> &Conn {
        match self {
            AdminCmd::Leases { conn, .. }
            | AdminCmd::ForceRelease { conn, .. }
            | AdminCmd::Machines { conn, .. }
            | AdminCmd::Delete { conn, .. } => conn,
        }
    }
}

/// Runs an admin command.
pub async fn run(cmd: AdminCmd) -> Outcome {
    match cmd {
        AdminCmd::Leases { prefix, page, conn } => {
            let r = conn
                .send(proto::ListLeasesRequest {
                    namespace: conn.ns(),
                    key_prefix: prefix,
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?;
            let rows: Vec<[String; 4]> = r
                .leases
                .iter()
                .map(|l| {
                    [
                        l.key.clone(),
                        l.holder.clone(),
                        l.token.to_string(),
                        output::time(&l.expires_at).as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            let leases: Vec<_> = r.leases.iter().map(output::lease).collect();
            conn.print(
                json!({ "leases": leases, "next_page_token": r.next_page_token }),
                output::paged(
                    output::table(["KEY", "HOLDER", "TOKEN", "EXPIRES_AT"], &rows),
                    &r.next_page_token,
                ),
            );
        }
        AdminCmd::ForceRelease {
            key,
            by,
            request_id,
            conn,
        } => {
            let r = conn
                .send(proto::ForceReleaseLeaseRequest {
                    namespace: conn.ns(),
                    key: key.clone(),
                    by,
                    request_id,
                })
                .await?;
            let human = match &r.lease {
                Some(l) => format!(
                    "force-released {} (token {} is fenced out)",
                    output::lease_line(l),
                    l.token
                ),
                None => format!("key={key} had no live lease"),
            };
            conn.print(
                json!({ "released": r.released, "lease": r.lease.as_ref().map(output::lease) }),
                human,
            );
        }
        AdminCmd::Machines { page, conn } => {
            let r = conn
                .send(proto::ListMachinesRequest {
                    namespace: conn.ns(),
                    page_size: page.page_size,
                    page_token: page.page_token,
                })
                .await?;
            let rows: Vec<[String; 5]> = r
                .machines
                .iter()
                .map(|m| {
                    let spec = m.spec.clone().unwrap_or_default();
                    [
                        spec.kind,
                        m.version.to_string(),
                        spec.states.len().to_string(),
                        spec.timeouts.len().to_string(),
                        output::time(&m.defined_at).as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            let machines: Vec<_> = r
                .machines
                .iter()
                .map(|m| {
                    json!({
                        "kind": m.spec.as_ref().map(|s| s.kind.clone()),
                        "version": m.version,
                        "defined_at": output::time(&m.defined_at),
                    })
                })
                .collect();
            conn.print(
                json!({ "machines": machines, "next_page_token": r.next_page_token }),
                output::paged(
                    output::table(["KIND", "VERSION", "STATES", "TIMEOUTS", "DEFINED_AT"], &rows),
                    &r.next_page_token,
                ),
            );
        }
        AdminCmd::Delete {
            id,
            force,
            request_id,
            conn,
        } => {
            let r = conn
                .send(proto::DeleteEntityRequest {
                    namespace: conn.ns(),
                    entity_id: id.clone(),
                    force,
                    request_id,
                })
                .await?;
            conn.print(json!({ "deleted": r.deleted }), format!("deleted {id} and its tape"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
