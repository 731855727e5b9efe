//! Client subcommands: each makes one call (or one stream) to a running server.

use super::output;
use crate::domain::machine::parse_machines_toml;
use crate::grpc::convert;
use crate::proto::{self, coordinator_client::CoordinatorClient};
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Where and how to call.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Server address.
    #[arg(long, env = "BATON_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Namespace.
    #[arg(long, short = 'n', env = "BATON_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Print JSON instead of human lines.
    #[arg(long)]
    json: bool,
}

/// `baton lease …`
#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Acquire KEY (prints the lease and its fencing token).
    Acquire {
        key: String,
        #[arg(long)]
        holder: String,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Wait up to this long for a held lease.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: Duration,
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Renew KEY held with TOKEN.
    Renew {
        key: String,
        #[arg(long)]
        token: u64,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        conn: Conn,
    },
    /// Release KEY held with TOKEN.
    Release {
        key: String,
        #[arg(long)]
        token: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show KEY's live lease.
    Get {
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `baton machine …`
#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Define every machine in a TOML file (see examples/machines.toml).
    Apply {
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a kind's machine.
    Get {
        kind: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `baton entity …`
#[derive(Debug, Subcommand)]
pub enum EntityCmd {
    /// Create an entity of KIND in its initial state.
    Create {
        kind: String,
        #[arg(long, default_value = "")]
        id: String,
        #[arg(long, default_value = "")]
        dedup_key: String,
        /// A field, NAME=VALUE (repeatable).
        #[arg(long = "field", value_parser = key_value)]
        fields: Vec<(String, String)>,
        /// Fence KEY:TOKEN.
        #[arg(long, value_parser = fence)]
        fence: Option<proto::Fence>,
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an entity.
    Get {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List entities of KIND.
    List {
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
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Apply transition NAME to entity ID.
    Transition {
        id: String,
        name: String,
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
        /// Fence KEY:TOKEN.
        #[arg(long, value_parser = fence)]
        fence: Option<proto::Fence>,
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `baton events …`
#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Append events TYPE=PAYLOAD to entity ID.
    Append {
        id: String,
        #[arg(long = "event", value_parser = key_value, required = true)]
        events: Vec<(String, String)>,
        /// Drop (instead of reject) the events when the tape is sealed.
        #[arg(long)]
        drop_if_sealed: bool,
        /// Fence KEY:TOKEN.
        #[arg(long, value_parser = fence)]
        fence: Option<proto::Fence>,
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `baton tail ID`
#[derive(Debug, Args)]
pub struct TailArgs {
    id: String,
    /// Start after this seq (0: the whole tape).
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    conn: Conn,
}

/// Any client command.
pub enum Cmd {
    Lease(LeaseCmd),
    Machine(MachineCmd),
    Entity(EntityCmd),
    Events(EventsCmd),
    Tail(TailArgs),
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn fence(s: &str) -> Result<proto::Fence, String> {
    let (key, token) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected KEY:TOKEN, got {s:?}"))?;
    Ok(proto::Fence {
        key: key.to_string(),
        token: token.parse().map_err(|_| format!("bad token in {s:?}"))?,
    })
}

fn events(list: Vec<(String, String)>) -> Vec<proto::EventInput> {
    list.into_iter()
        .map(|(t, p)| proto::EventInput {
            r#type: t,
            payload: p.into_bytes(),
            content_type: "text/plain".into(),
        })
        .collect()
}

fn pdur(d: Duration) -> Option<prost_types::Duration> {
    Some(convert::pduration(d))
}

/// A failed call, printed as one line with its reason.
fn describe(status: &tonic::Status) -> String {
    let info = status.get_details_error_info();
    match info {
        Some(i) => {
            let mut meta: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            meta.sort();
            format!(
                "{:?} {}: {} [{}]",
                status.code(),
                i.reason,
                status.message(),
                meta.join(" ")
            )
        }
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

async fn connect(conn: &Conn) -> Result<CoordinatorClient<Channel>, String> {
    let endpoint = Channel::from_shared(conn.addr.clone()).map_err(|e| format!("bad --addr {:?}: {e}", conn.addr))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach baton at {}: {e}", conn.addr))?;
    Ok(CoordinatorClient::new(channel))
}

fn print(conn: &Conn, json: serde_json::Value, human: String) {
    if conn.json {
        println!("{json}");
    } else {
        println!("{human}");
    }
}

/// Runs a client command; exit 1 on any error, with one line on stderr.
pub async fn run(cmd: Cmd) -> ExitCode {
    match run_inner(cmd).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(cmd: Cmd) -> Result<ExitCode, String> {
    let st = |s: tonic::Status| describe(&s);
    match cmd {
        Cmd::Lease(LeaseCmd::Acquire {
            key,
            holder,
            ttl,
            wait,
            request_id,
            conn,
        }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .acquire_lease(proto::AcquireLeaseRequest {
                    namespace: conn.namespace.clone(),
                    key,
                    holder,
                    ttl: pdur(ttl),
                    wait: pdur(wait),
                    request_id,
                })
                .await
                .map_err(st)?
                .into_inner();
            let lease = r.lease.unwrap_or_default();
            let verdict = if r.acquired { "acquired" } else { "busy" };
            print(
                &conn,
                json!({ "acquired": r.acquired, "lease": output::lease(&lease) }),
                format!("{verdict} {}", output::lease_line(&lease)),
            );
            Ok(if r.acquired {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Cmd::Lease(LeaseCmd::Renew { key, token, ttl, conn }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .renew_lease(proto::RenewLeaseRequest {
                    namespace: conn.namespace.clone(),
                    key,
                    token,
                    ttl: pdur(ttl),
                    request_id: String::new(),
                })
                .await
                .map_err(st)?
                .into_inner();
            let lease = r.lease.unwrap_or_default();
            print(
                &conn,
                json!({ "lease": output::lease(&lease) }),
                format!("renewed {}", output::lease_line(&lease)),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lease(LeaseCmd::Release { key, token, conn }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .release_lease(proto::ReleaseLeaseRequest {
                    namespace: conn.namespace.clone(),
                    key,
                    token,
                    request_id: String::new(),
                })
                .await
                .map_err(st)?
                .into_inner();
            print(
                &conn,
                json!({ "released": r.released }),
                if r.released {
                    "released".into()
                } else {
                    "not released: token is not the live lease".into()
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lease(LeaseCmd::Get { key, conn }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .get_lease(proto::GetLeaseRequest {
                    namespace: conn.namespace.clone(),
                    key: key.clone(),
                })
                .await
                .map_err(st)?
                .into_inner();
            let human = match &r.lease {
                Some(l) => output::lease_line(l),
                None => format!("key={key} is free (last token {})", r.last_token),
            };
            print(
                &conn,
                json!({ "lease": r.lease.as_ref().map(output::lease), "last_token": r.last_token }),
                human,
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Machine(MachineCmd::Apply { file, conn }) => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let specs = parse_machines_toml(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut c = connect(&conn).await?;
            let mut applied = Vec::new();
            for spec in specs {
                let kind = spec.kind.clone();
                let r = c
                    .define_machine(proto::DefineMachineRequest {
                        namespace: conn.namespace.clone(),
                        spec: Some(convert::spec_to_proto(&spec)),
                    })
                    .await
                    .map_err(|s| format!("machine {kind}: {}", describe(&s)))?
                    .into_inner();
                let version = r.machine.map_or(0, |m| m.version);
                if !conn.json {
                    println!(
                        "{kind}: version {version}{}",
                        if r.changed { "" } else { " (unchanged)" }
                    );
                }
                applied.push(json!({ "kind": kind, "version": version, "changed": r.changed }));
            }
            if conn.json {
                println!("{}", json!({ "machines": applied }));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Machine(MachineCmd::Get { kind, conn }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .get_machine(proto::GetMachineRequest {
                    namespace: conn.namespace.clone(),
                    kind,
                })
                .await
                .map_err(st)?
                .into_inner();
            let m = r.machine.unwrap_or_default();
            let spec = m.spec.unwrap_or_default();
            let domain = convert::spec_from_proto(spec).map_err(|e| e.to_string())?;
            let json = json!({ "version": m.version, "spec": domain });
            let human = toml::to_string(&json!({ "machine": [domain] })).unwrap_or_default();
            print(&conn, json, format!("# version {}\n{human}", m.version));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Entity(EntityCmd::Create {
            kind,
            id,
            dedup_key,
            fields,
            fence,
            request_id,
            conn,
        }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .create_entity(proto::CreateEntityRequest {
                    namespace: conn.namespace.clone(),
                    kind,
                    id,
                    dedup_key,
                    fields: fields.into_iter().collect::<HashMap<_, _>>(),
                    fence,
                    request_id,
                })
                .await
                .map_err(st)?
                .into_inner();
            let e = r.entity.unwrap_or_default();
            let verdict = if r.created { "created" } else { "exists" };
            print(
                &conn,
                json!({ "created": r.created, "entity": output::entity(&e) }),
                format!("{verdict} {}", output::entity_line(&e)),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Entity(EntityCmd::Get { id, conn }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .get_entity(proto::GetEntityRequest {
                    namespace: conn.namespace.clone(),
                    id,
                })
                .await
                .map_err(st)?
                .into_inner();
            let e = r.entity.unwrap_or_default();
            print(&conn, json!({ "entity": output::entity(&e) }), output::entity_line(&e));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Entity(EntityCmd::List {
            kind,
            states,
            has_fields,
            missing_fields,
            page_size,
            page_token,
            conn,
        }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .list_entities(proto::ListEntitiesRequest {
                    namespace: conn.namespace.clone(),
                    kind,
                    states,
                    has_fields,
                    missing_fields,
                    page_size,
                    page_token,
                })
                .await
                .map_err(st)?
                .into_inner();
            let mut human: Vec<String> = r.entities.iter().map(output::entity_line).collect();
            if !r.next_page_token.is_empty() {
                human.push(format!("(more: --page-token {})", r.next_page_token));
            }
            let json = json!({ "entities": r.entities.iter().map(output::entity).collect::<Vec<_>>(), "next_page_token": r.next_page_token });
            print(&conn, json, human.join("\n"));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Entity(EntityCmd::Transition {
            id,
            name,
            expect_version,
            set_fields,
            clear_fields,
            events: evs,
            final_payload,
            fence,
            request_id,
            conn,
        }) => {
            let mut c = connect(&conn).await?;
            let r = c
                .transition(proto::TransitionRequest {
                    namespace: conn.namespace.clone(),
                    entity_id: id,
                    transition: name,
                    expect_version,
                    fence,
                    set_fields: set_fields.into_iter().collect(),
                    clear_fields,
                    events: events(evs),
                    final_payload: final_payload.into_bytes(),
                    final_content_type: String::new(),
                    request_id,
                })
                .await
                .map_err(st)?
                .into_inner();
            let e = r.entity.unwrap_or_default();
            let verdict = if r.applied { "applied" } else { "no-op" };
            print(
                &conn,
                json!({ "applied": r.applied, "entity": output::entity(&e), "seqs": r.seqs }),
                format!("{verdict} {} seqs={:?}", output::entity_line(&e), r.seqs),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Events(EventsCmd::Append {
            id,
            events: evs,
            drop_if_sealed,
            fence,
            request_id,
            conn,
        }) => {
            let mut c = connect(&conn).await?;
            let if_sealed = if drop_if_sealed {
                proto::IfSealed::Drop
            } else {
                proto::IfSealed::Reject
            };
            let r = c
                .append_events(proto::AppendEventsRequest {
                    namespace: conn.namespace.clone(),
                    entity_id: id,
                    events: events(evs),
                    fence,
                    if_sealed: if_sealed as i32,
                    request_id,
                })
                .await
                .map_err(st)?
                .into_inner();
            let human = if r.dropped {
                format!("dropped: tape sealed at final seq {}", r.final_seq)
            } else {
                format!("appended seqs={:?}", r.seqs)
            };
            print(
                &conn,
                json!({ "seqs": r.seqs, "dropped": r.dropped, "final_seq": r.final_seq }),
                human,
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tail(TailArgs { id, after, conn }) => {
            let mut c = connect(&conn).await?;
            let mut stream = c
                .stream_events(proto::StreamEventsRequest {
                    namespace: conn.namespace.clone(),
                    entity_id: id,
                    after_seq: after,
                })
                .await
                .map_err(st)?
                .into_inner();
            while let Some(msg) = stream.message().await.map_err(st)? {
                if let Some(proto::stream_events_response::Item::Event(e)) = msg.item {
                    print(&conn, output::event(&e), output::event_line(&e));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
