//! `baton lease …`: acquire, renew, release and show leases with fencing tokens.

use crate::conn::{Conn, Outcome, duration};
use crate::output;
use baton::proto;
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of `lease acquire` when someone else holds the lease.
const BUSY: u8 = 3;

/// `baton lease …`
#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Acquire KEY (prints the lease and its fencing token; exits 3 when it is held).
    Acquire {
        /// The lease key.
        key: String,
        /// Who holds it (a worker id).
        #[arg(long)]
        holder: String,
        /// How long the lease lives unless renewed (1s to 1h).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Wait up to this long for a held lease.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// Idempotency key: a retry with the same id returns the first outcome.
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Renew KEY held with TOKEN.
    Renew {
        /// The lease key.
        key: String,
        /// The fencing token you hold.
        #[arg(long)]
        token: u64,
        /// The new time to live, from now.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        conn: Conn,
    },
    /// Release KEY held with TOKEN.
    Release {
        /// The lease key.
        key: String,
        /// The fencing token you hold.
        #[arg(long)]
        token: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show KEY's live lease.
    Get {
        /// The lease key.
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
}

impl LeaseCmd {
    /// Where and how the command calls.
    pub fn conn(&self) -> &Conn {
        match self {
            LeaseCmd::Acquire { conn, .. }
            | LeaseCmd::Renew { conn, .. }
            | LeaseCmd::Release { conn, .. }
            | LeaseCmd::Get { conn, .. } => conn,
        }
    }
}

/// Runs a lease command.
pub async fn run(cmd: LeaseCmd) -> Outcome {
    match cmd {
        LeaseCmd::Acquire {
            key,
            holder,
            ttl,
            wait,
            request_id,
            conn,
        } => {
            let r = conn
                .send(proto::AcquireLeaseRequest {
                    namespace: conn.ns(),
                    key,
                    holder,
                    ttl: duration(ttl),
                    wait: duration(wait),
                    request_id,
                })
                .await?;
            let lease = r.lease.unwrap_or_default();
            let verdict = if r.acquired { "acquired" } else { "busy" };
            conn.print(
                json!({ "acquired": r.acquired, "lease": output::lease(&lease) }),
                format!("{verdict} {}", output::lease_line(&lease)),
            );
            Ok(if r.acquired {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(BUSY)
            })
        }
        LeaseCmd::Renew { key, token, ttl, conn } => {
            let r = conn
                .send(proto::RenewLeaseRequest {
                    namespace: conn.ns(),
                    key,
                    token,
                    ttl: duration(ttl),
                    request_id: String::new(),
                })
                .await?;
            let lease = r.lease.unwrap_or_default();
            conn.print(
                json!({ "lease": output::lease(&lease) }),
                format!("renewed {}", output::lease_line(&lease)),
            );
            Ok(ExitCode::SUCCESS)
        }
        LeaseCmd::Release { key, token, conn } => {
            let r = conn
                .send(proto::ReleaseLeaseRequest {
                    namespace: conn.ns(),
                    key,
                    token,
                    request_id: String::new(),
                })
                .await?;
            let human = if r.released {
                "released"
            } else {
                "not released: token is not the live lease"
            };
            conn.print(json!({ "released": r.released }), human);
            Ok(ExitCode::SUCCESS)
        }
        LeaseCmd::Get { key, conn } => {
            let r = conn
                .send(proto::GetLeaseRequest {
                    namespace: conn.ns(),
                    key: key.clone(),
                })
                .await?;
            let human = match &r.lease {
                Some(l) => output::lease_line(l),
                None => format!("key={key} is free (last token {})", r.last_token),
            };
            conn.print(
                json!({ "lease": r.lease.as_ref().map(output::lease), "last_token": r.last_token }),
                human,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
