//! What every client command shares: where to call (`--addr`, `--namespace`), how to print
//! (`--json`), and how a failed call reads (one line with the code, reason and metadata).

use baton::proto::{self, coordinator_client::CoordinatorClient};
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// A client command's result: its exit code, or one line for stderr (exit 1).
pub type Outcome = Result<ExitCode, String>;

/// Where and how to call.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Server address.
    #[arg(long, env = "BATON_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Namespace to work in.
    #[arg(long, short = 'n', env = "BATON_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Print JSON instead of human lines.
    #[arg(long)]
    pub json: bool,
}

/// The flags every write shares: a fence and a request id.
#[derive(Debug, Clone, Args)]
pub struct WriteOpts {
    /// Fence KEY:TOKEN: commit only while that lease is live.
    #[arg(long, value_parser = fence)]
    pub fence: Option<proto::Fence>,
    /// Idempotency key: a retry with the same id returns the first outcome.
    #[arg(long, default_value = "")]
    pub request_id: String,
}

/// A request the CLI sends, and the RPC that carries it.
pub trait Rpc {
    /// The response message.
    type Reply;
    /// Calls the RPC.
    async fn call(self, c: &mut CoordinatorClient<Channel>) -> Result<tonic::Response<Self::Reply>, tonic::Status>;
}

macro_rules! rpcs {
    ($($request:ident => $method:ident -> $reply:ident),* $(,)?) => {$(
        impl Rpc for proto::$request {
            type Reply = proto::$reply;
            async fn call(
                self,
                c: &mut CoordinatorClient<Channel>,
            ) -> Result<tonic::Response<proto::$reply>, tonic::Status> {
                c.$method(self).await
            }
        }
    )*};
}

rpcs!(
    AcquireLeaseRequest => acquire_lease -> AcquireLeaseResponse,
    RenewLeaseRequest => renew_lease -> RenewLeaseResponse,
    ReleaseLeaseRequest => release_lease -> ReleaseLeaseResponse,
    GetLeaseRequest => get_lease -> GetLeaseResponse,
    DefineMachineRequest => define_machine -> DefineMachineResponse,
    GetMachineRequest => get_machine -> GetMachineResponse,
    CreateEntityRequest => create_entity -> CreateEntityResponse,
    GetEntityRequest => get_entity -> GetEntityResponse,
    ListEntitiesRequest => list_entities -> ListEntitiesResponse,
    TransitionRequest => transition -> TransitionResponse,
    AppendEventsRequest => append_events -> AppendEventsResponse,
);

impl Conn {
    /// Sends one request on a new connection; a failure is one line.
    pub async fn send<R: Rpc>(&self, request: R) -> Result<R::Reply, String> {
        let mut client = self.client().await?;
        request
            .call(&mut client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(failed)
    }

    /// A client on a new connection to `--addr`.
    pub async fn client(&self) -> Result<CoordinatorClient<Channel>, String> {
        let endpoint =
            Channel::from_shared(self.addr.clone()).map_err(|e| format!("bad --addr {:?}: {e}", self.addr))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach baton at {}: {e}", self.addr))?;
        Ok(CoordinatorClient::new(channel))
    }

    /// The namespace, as requests carry it.
    pub fn ns(&self) -> String {
        self.namespace.clone()
    }

    /// Prints one result: `json` with `--json`, else `human`.
    pub fn print(&self, json: Value, human: impl std::fmt::Display) {
        if self.json {
            println!("{json}");
        } else {
            println!("{human}");
        }
    }
}

/// A failed call, as one line with its reason and metadata.
pub fn failed(status: tonic::Status) -> String {
    match status.get_details_error_info() {
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

/// `NAME=VALUE` (fields, events).
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// `KEY:TOKEN` (a fence).
pub fn fence(s: &str) -> Result<proto::Fence, String> {
    let (key, token) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected KEY:TOKEN, got {s:?}"))?;
    Ok(proto::Fence {
        key: key.to_string(),
        token: token.parse().map_err(|_| format!("bad token in {s:?}"))?,
    })
}

/// Events given as `TYPE=PAYLOAD`, with text payloads.
pub fn events(list: Vec<(String, String)>) -> Vec<proto::EventInput> {
    list.into_iter()
        .map(|(t, p)| proto::EventInput {
            r#type: t,
            payload: p.into_bytes(),
            content_type: "text/plain".into(),
        })
        .collect()
}

/// A duration for a request.
pub fn duration(d: std::time::Duration) -> Option<prost_types::Duration> {
    Some(baton::grpc::convert::pduration(d))
}
