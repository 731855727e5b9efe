//! `baton machine …`: define machines from a file, show one.

use crate::conn::{Conn, Outcome};
use crate::failure::Failure;
use crate::machine_file;
use crate::output::{self, yes_no};
use baton::grpc::{convert, parse};
use baton::proto;
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;

/// `baton machine …`
#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Define every machine in a TOML file (see examples/machines.toml).
    Apply {
        /// The machines file.
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a kind's machine (as a machines file).
    Get {
        /// The kind.
        kind: String,
        #[command(flatten)]
        conn: Conn,
    },
}

impl MachineCmd {
    /// Where and how the command calls.
    pub fn conn(&self) -> &Conn {
        match self {
            MachineCmd::Apply { conn, .. } | MachineCmd::Get { conn, .. } => conn,
        }
    }
}

/// Runs a machine command.
pub async fn run(cmd: MachineCmd) -> Outcome {
    match cmd {
        MachineCmd::Apply { file, conn } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::other(format!("cannot read {}: {e}", file.display())))?;
            let specs = machine_file::parse(&text).map_err(|e| Failure::other(format!("{}: {e}", file.display())))?;
            let mut c = conn.client().await?;
            let (mut applied, mut rows, mut failure) = (Vec::new(), Vec::new(), None);
            for spec in specs {
                let kind = spec.kind.clone();
                let request = proto::DefineMachineRequest {
                    namespace: conn.ns(),
                    spec: Some(convert::spec_to_proto(&spec)),
                };
                let r = match c.define_machine(request).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => {
                        failure = Some(Failure::from(s).context(format!("machine {kind}")));
                        break;
                    }
                };
                let version = r.machine.map_or(0, |m| m.version);
                applied.push(json!({ "kind": kind, "version": version, "changed": r.changed }));
                rows.push([kind, version.to_string(), yes_no(r.changed)]);
            }
            // The machines applied before a failure stay applied: say which.
            if failure.is_none() || !rows.is_empty() {
                conn.print(
                    json!({ "machines": applied }),
                    output::table(["KIND", "VERSION", "CHANGED"], &rows),
                );
            }
            failure.map_or(Ok(ExitCode::SUCCESS), Err)
        }
        MachineCmd::Get { kind, conn } => {
            let r = conn
                .send(proto::GetMachineRequest {
                    namespace: conn.ns(),
                    kind: kind.clone(),
                })
                .await?;
            let m = r.machine.unwrap_or_default();
            let spec = parse::spec_from_proto(m.spec.unwrap_or_default())
                .map_err(|e| Failure::other(format!("machine {kind}: a spec this CLI cannot read: {e}")))?;
            let json = json!({ "version": m.version, "spec": spec });
            conn.print(json, format!("# version {}\n{}", m.version, machine_file::render(spec)));
            Ok(ExitCode::SUCCESS)
        }
    }
}
