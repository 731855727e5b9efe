//! `baton machine …`: define machines from a file, show one.

use crate::conn::{Conn, Outcome, failed};
use crate::machine_file;
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

/// Runs a machine command.
pub async fn run(cmd: MachineCmd) -> Outcome {
    match cmd {
        MachineCmd::Apply { file, conn } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let specs = machine_file::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut c = conn.client().await?;
            let mut applied = Vec::new();
            for spec in specs {
                let kind = spec.kind.clone();
                let r = c
                    .define_machine(proto::DefineMachineRequest {
                        namespace: conn.ns(),
                        spec: Some(convert::spec_to_proto(&spec)),
                    })
                    .await
                    .map_err(|s| format!("machine {kind}: {}", failed(s)))?
                    .into_inner();
                let version = r.machine.map_or(0, |m| m.version);
                if !conn.json {
                    let unchanged = if r.changed { "" } else { " (unchanged)" };
                    println!("{kind}: version {version}{unchanged}");
                }
                applied.push(json!({ "kind": kind, "version": version, "changed": r.changed }));
            }
            if conn.json {
                println!("{}", json!({ "machines": applied }));
            }
            Ok(ExitCode::SUCCESS)
        }
        MachineCmd::Get { kind, conn } => {
            let r = conn
                .send(proto::GetMachineRequest {
                    namespace: conn.ns(),
                    kind,
                })
                .await?;
            let m = r.machine.unwrap_or_default();
            let spec = parse::spec_from_proto(m.spec.unwrap_or_default()).map_err(|e| e.to_string())?;
            let json = json!({ "version": m.version, "spec": spec });
            conn.print(json, format!("# version {}\n{}", m.version, machine_file::render(spec)));
            Ok(ExitCode::SUCCESS)
        }
    }
}
