//! What every client command shares: where to call (`--addr`, `--namespace`), how to print
//! (`--output`, `--json`), and how a failed call reads ([`Failure`]).

use crate::addr::Addr;
use crate::failure::Failure;
use crate::output::Output;
use baton::proto::{self, coordinator_client::CoordinatorClient};
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The client every command uses: a channel that sends the bearer token, if any.
pub type Client = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// Puts `authorization: Bearer …` on every call when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A client command's result: its exit code, or why it failed.
pub type Outcome = Result<ExitCode, Failure>;

/// Where and how to call.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Server address: HOST:PORT, [IPV6]:PORT, http://HOST:PORT, or https://HOST:PORT for
    /// TLS (checked against the system's CAs, or --ca-file).
    #[arg(long, env = "BATON_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token for a server with authentication (sent as `authorization: Bearer …`;
    /// `baton token create` makes one).
    #[arg(long, env = "BATON_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// CA certificates (PEM) to check an https:// server against, instead of the system's.
    #[arg(long, env = "BATON_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present (mTLS), with --key-file.
    #[arg(long, env = "BATON_CERT_FILE", requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "BATON_KEY_FILE", requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
    /// Namespace to work in.
    #[arg(long, short = 'n', env = "BATON_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// How to print results: table (human lines, lists in columns) or json.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Print JSON: the same as --output json.
    #[arg(long, conflicts_with = "output")]
    json: bool,
}

/// TCP connect timeout of every connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings while a call is open, so a long `tail` notices a peer that vanished
/// without closing its connection (a partition, a frozen replica).
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Paging of a list command.
#[derive(Debug, Clone, Args)]
pub struct Page {
    /// Items per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Continue after a previous page (its `--page-token` line).
    #[arg(long, default_value = "")]
    pub page_token: String,
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
    async fn call(self, c: &mut Client) -> Result<tonic::Response<Self::Reply>, tonic::Status>;
}

macro_rules! rpcs {
    ($($request:ident => $method:ident -> $reply:ident),* $(,)?) => {$(
        impl Rpc for proto::$request {
            type Reply = proto::$reply;
            async fn call(
                self,
                c: &mut Client,
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
    ListLeasesRequest => list_leases -> ListLeasesResponse,
    ForceReleaseLeaseRequest => force_release_lease -> ForceReleaseLeaseResponse,
    ListMachinesRequest => list_machines -> ListMachinesResponse,
    DeleteEntityRequest => delete_entity -> DeleteEntityResponse,
);

impl Conn {
    /// Sends one request on a new connection.
    pub async fn send<R: Rpc>(&self, request: R) -> Result<R::Reply, Failure> {
        let mut client = self.client().await?;
        Ok(request.call(&mut client).await?.into_inner())
    }

    /// A client on a new connection to `--addr`.
    pub async fn client(&self) -> Result<Client, Failure> {
        let addr = Addr::parse(&self.addr).map_err(Failure::usage)?;
        let mut endpoint =
            Endpoint::from_shared(addr.uri()).map_err(|e| Failure::usage(format!("--addr {addr}: {e}")))?;
        if addr.tls {
            endpoint = endpoint
                .tls_config(self.tls(&addr).map_err(Failure::usage)?)
                .map_err(|e| Failure::usage(format!("TLS: {}", causes(&e))))?;
        } else if self.ca_file.is_some() || self.cert_file.is_some() {
            return Err(Failure::usage(format!(
                "--ca-file and --cert-file need an https:// address, not {}",
                addr.uri()
            )));
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            // Also between calls: hyper schedules its first ping only when polled, which on
            // a connection that went quiet after a stream opened may never happen.
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| Failure::unreachable(format!("cannot reach baton at {}: {}", addr.uri(), causes(&e))))?;
        let token = match &self.auth_token {
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| Failure::usage("--auth-token: not a valid header value".into()))?,
            ),
            None => None,
        };
        Ok(CoordinatorClient::with_interceptor(channel, Bearer(token)))
    }

    /// TLS settings for an https:// address: the CA file or the system's CAs, and the
    /// client certificate when given.
    fn tls(&self, addr: &Addr) -> Result<ClientTlsConfig, String> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
        };
        let mut tls = ClientTlsConfig::new().domain_name(addr.host());
        tls = match &self.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--ca-file", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(Identity::from_pem(read("--cert-file", cert)?, read("--key-file", key)?));
        }
        Ok(tls)
    }

    /// The namespace, as requests carry it.
    pub fn ns(&self) -> String {
        self.namespace.clone()
    }

    /// How results are printed: `--output`, or JSON with `--json`.
    pub fn output(&self) -> Output {
        if self.json { Output::Json } else { self.output }
    }

    /// Prints one result: `json` for JSON output, else `human`.
    pub fn print(&self, json: Value, human: impl std::fmt::Display) {
        match self.output() {
            Output::Json => emit(json),
            Output::Table => emit(human),
        }
    }
}

/// Writes one result line to stdout. A reader that went away (`baton tail … | head`) ends
/// the command quietly, as it ends `cat`, instead of a panic.
fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// An error and its sources, `: `-separated (tonic's own message is only "transport
/// error"), each said once (some sources repeat the one before).
fn causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !line.ends_with(&said) {
            line = format!("{line}: {said}");
        }
        source = s.source();
    }
    line
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
