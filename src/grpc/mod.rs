//! The tonic service: thin handlers that read parse → service → convert. Requests become
//! domain commands in `parse`, responses are built in `convert`, and errors map to
//! statuses in `status` only.

pub mod convert;
pub mod parse;
mod status;
mod undecodable;

pub use status::DOMAIN;
pub use undecodable::UndecodableLayer;

use crate::auth::{Caller, Role};
use crate::domain::command::{
    AcquireLease, AppendEvents, CreateEntity, DefineMachine, DeleteEntity, ForceReleaseLease, GetEntity, GetLease,
    GetMachine, ListEntities, ListLeases, ListMachines, ReleaseLease, RenewLease, StreamEvents, Transition,
};
use crate::domain::names::Namespace;
use crate::proto::{self, coordinator_server};
use crate::service::{self, Coordinator};
use crate::telemetry::Call;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

type Reply<T> = Result<Response<T>, Status>;

/// What the server knows of the connection a request came on (tonic puts it in the
/// request's extensions): when its streams must end because the connection has aged, and
/// who its client certificate says the client is.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `max_connection_age + max_connection_age_grace` after the accept; `None` when
    /// connections never age.
    pub streams_end: Option<tokio::time::Instant>,
    /// The names of the verified client certificate (mTLS): common names, then DNS and URI
    /// names; empty without one.
    pub peer_names: std::sync::Arc<[String]>,
}

impl Connection {
    /// The connection of `request`, if the server recorded one.
    pub fn of<T>(request: &Request<T>) -> Connection {
        request.extensions().get::<Connection>().cloned().unwrap_or_default()
    }
}

/// The gRPC face of a [`Coordinator`].
#[derive(Clone)]
pub struct CoordinatorService {
    inner: Coordinator,
    /// Every call must carry a [`Caller`] (put there by the auth layer) whose grant covers
    /// its namespace and role.
    auth: bool,
}

impl CoordinatorService {
    /// Wraps a coordinator; open to every caller.
    pub fn new(inner: Coordinator) -> Self {
        Self { inner, auth: false }
    }

    /// Wraps a coordinator whose callers must be authenticated and authorized.
    pub fn authenticated(inner: Coordinator) -> Self {
        Self { inner, auth: true }
    }

    /// May the request's caller make a call that needs `needs` in the namespace it names?
    /// Decided before anything is parsed further or read, so a refusal is the same whether
    /// or not what the call names exists (I12).
    fn authorize<T: Described>(&self, request: &Request<T>, needs: Role) -> Result<(), Status> {
        if !self.auth {
            return Ok(());
        }
        let ns = Namespace::parse("namespace", request.get_ref().namespace().to_string())
            .map_err(|e| Status::from(service::Error::from(e)))?;
        let caller = request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("no authenticated caller"))?;
        caller.authorize(&ns, needs).map_err(status::denied)
    }
}

/// What the request log and the RPC span say of a request besides its method.
trait Described {
    fn namespace(&self) -> &str;
    fn request_id(&self) -> &str {
        ""
    }
}

macro_rules! described {
    ($($request:ty $(, $id:ident)?;)+) => {$(
        impl Described for $request {
            fn namespace(&self) -> &str {
                &self.namespace
            }
            $(fn request_id(&self) -> &str {
                &self.$id
            })?
        }
    )+};
}

described!(
    proto::AcquireLeaseRequest, request_id;
    proto::RenewLeaseRequest, request_id;
    proto::ReleaseLeaseRequest, request_id;
    proto::GetLeaseRequest;
    proto::DefineMachineRequest;
    proto::GetMachineRequest;
    proto::CreateEntityRequest, request_id;
    proto::GetEntityRequest;
    proto::ListEntitiesRequest;
    proto::TransitionRequest, request_id;
    proto::AppendEventsRequest, request_id;
    proto::StreamEventsRequest;
    proto::ListLeasesRequest;
    proto::ForceReleaseLeaseRequest, request_id;
    proto::ListMachinesRequest;
    proto::DeleteEntityRequest, request_id;
);

/// Starts observing a request: its metrics, span and log line ([`Call`]).
fn observe<T: Described>(method: &'static str, request: &Request<T>) -> Call {
    let body = request.get_ref();
    Call::start(method, request.metadata(), body.namespace(), body.request_id())
}

/// Observes `method`, parses its request into a command (`input` takes what it needs of the
/// request), runs it, converts the outcome; any error becomes a status in the one mapping.
async fn unary<Req, In, Cmd, Out, Resp, F>(
    method: &'static str,
    allowed: Result<(), Status>,
    request: Request<Req>,
    input: impl FnOnce(Request<Req>) -> In,
    run: impl FnOnce(Cmd) -> F,
) -> Reply<Resp>
where
    Req: Described,
    Cmd: TryFrom<In, Error = crate::domain::DomainError>,
    F: Future<Output = Result<Out, service::Error>>,
    Resp: From<Out>,
{
    let call = observe(method, &request);
    let reply = match allowed {
        Err(denied) => Err(denied),
        Ok(()) => {
            let outcome = async { run(Cmd::try_from(input(request))?).await }
                .instrument(call.span().clone())
                .await;
            outcome.map(|o| Response::new(Resp::from(o))).map_err(Status::from)
        }
    };
    call.finish(reply.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
    reply
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn acquire_lease(&self, req: Request<proto::AcquireLeaseRequest>) -> Reply<proto::AcquireLeaseResponse> {
        let input = |req: Request<proto::AcquireLeaseRequest>| {
            let deadline = req
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse::grpc_timeout);
            parse::AcquireRequest(req.into_inner(), deadline)
        };
        unary(
            "AcquireLease",
            self.authorize(&req, Role::Write),
            req,
            input,
            |cmd: AcquireLease| self.inner.acquire_lease(cmd),
        )
        .await
    }

    async fn renew_lease(&self, req: Request<proto::RenewLeaseRequest>) -> Reply<proto::RenewLeaseResponse> {
        unary(
            "RenewLease",
            self.authorize(&req, Role::Write),
            req,
            Request::into_inner,
            |cmd: RenewLease| async {
                let lease = self.inner.renew_lease(cmd).await?;
                Ok(proto::RenewLeaseResponse {
                    lease: Some(convert::lease(lease)),
                })
            },
        )
        .await
    }

    async fn release_lease(&self, req: Request<proto::ReleaseLeaseRequest>) -> Reply<proto::ReleaseLeaseResponse> {
        unary(
            "ReleaseLease",
            self.authorize(&req, Role::Write),
            req,
            Request::into_inner,
            |cmd: ReleaseLease| async {
                let released = self.inner.release_lease(cmd).await?;
                Ok(proto::ReleaseLeaseResponse { released })
            },
        )
        .await
    }

    async fn get_lease(&self, req: Request<proto::GetLeaseRequest>) -> Reply<proto::GetLeaseResponse> {
        unary(
            "GetLease",
            self.authorize(&req, Role::Read),
            req,
            Request::into_inner,
            |cmd: GetLease| self.inner.get_lease(cmd),
        )
        .await
    }

    async fn define_machine(&self, req: Request<proto::DefineMachineRequest>) -> Reply<proto::DefineMachineResponse> {
        unary(
            "DefineMachine",
            self.authorize(&req, Role::Admin),
            req,
            Request::into_inner,
            |cmd: DefineMachine| self.inner.define_machine(cmd),
        )
        .await
    }

    async fn get_machine(&self, req: Request<proto::GetMachineRequest>) -> Reply<proto::GetMachineResponse> {
        unary(
            "GetMachine",
            self.authorize(&req, Role::Read),
            req,
            Request::into_inner,
            |cmd: GetMachine| async {
                let m = self.inner.get_machine(cmd).await?;
                Ok(proto::GetMachineResponse {
                    machine: Some(convert::machine(&m)),
                })
            },
        )
        .await
    }

    async fn create_entity(&self, req: Request<proto::CreateEntityRequest>) -> Reply<proto::CreateEntityResponse> {
        unary(
            "CreateEntity",
            self.authorize(&req, Role::Write),
            req,
            Request::into_inner,
            |cmd: CreateEntity| self.inner.create_entity(cmd),
        )
        .await
    }

    async fn get_entity(&self, req: Request<proto::GetEntityRequest>) -> Reply<proto::GetEntityResponse> {
        unary(
            "GetEntity",
            self.authorize(&req, Role::Read),
            req,
            Request::into_inner,
            |cmd: GetEntity| async {
                let e = self.inner.get_entity(cmd).await?;
                Ok(proto::GetEntityResponse {
                    entity: Some(convert::entity(e)),
                })
            },
        )
        .await
    }

    async fn list_entities(&self, req: Request<proto::ListEntitiesRequest>) -> Reply<proto::ListEntitiesResponse> {
        unary(
            "ListEntities",
            self.authorize(&req, Role::Read),
            req,
            Request::into_inner,
            |cmd: ListEntities| async { Ok(convert::page(self.inner.list_entities(cmd).await?)) },
        )
        .await
    }

    async fn transition(&self, req: Request<proto::TransitionRequest>) -> Reply<proto::TransitionResponse> {
        unary(
            "Transition",
            self.authorize(&req, Role::Write),
            req,
            Request::into_inner,
            |cmd: Transition| self.inner.transition(cmd),
        )
        .await
    }

    async fn append_events(&self, req: Request<proto::AppendEventsRequest>) -> Reply<proto::AppendEventsResponse> {
        unary(
            "AppendEvents",
            self.authorize(&req, Role::Write),
            req,
            Request::into_inner,
            |cmd: AppendEvents| self.inner.append_events(cmd),
        )
        .await
    }

    type StreamEventsStream = Pin<Box<dyn Stream<Item = Result<proto::StreamEventsResponse, Status>> + Send>>;

    /// The stream is observed until it ends: its code is the one it ends with (OK after
    /// `final`, UNAVAILABLE on drain or an aged connection), CANCELLED when the client left.
    async fn stream_events(&self, req: Request<proto::StreamEventsRequest>) -> Reply<Self::StreamEventsStream> {
        let call = observe("StreamEvents", &req);
        if let Err(denied) = self.authorize(&req, Role::Read) {
            call.finish(denied.code());
            return Err(denied);
        }
        let ends = Connection::of(&req).streams_end;
        let opened = async {
            let cmd = StreamEvents::try_from(req.into_inner())?;
            self.inner.stream_events_until(cmd, ends).await
        }
        .instrument(call.span().clone())
        .await;
        match opened {
            Ok(rx) => Ok(Response::new(Box::pin(Observed {
                items: Served::from(rx).0,
                call: Some(call),
            }))),
            Err(e) => {
                let status = Status::from(e);
                call.finish(status.code());
                Err(status)
            }
        }
    }

    async fn list_leases(&self, req: Request<proto::ListLeasesRequest>) -> Reply<proto::ListLeasesResponse> {
        unary(
            "ListLeases",
            self.authorize(&req, Role::Admin),
            req,
            Request::into_inner,
            |cmd: ListLeases| async { Ok(convert::lease_page(self.inner.list_leases(cmd).await?)) },
        )
        .await
    }

    async fn force_release_lease(
        &self,
        req: Request<proto::ForceReleaseLeaseRequest>,
    ) -> Reply<proto::ForceReleaseLeaseResponse> {
        let allowed = self.authorize(&req, Role::Admin);
        unary(
            "ForceReleaseLease",
            allowed,
            req,
            Request::into_inner,
            |cmd: ForceReleaseLease| async {
                let ended = self.inner.force_release_lease(cmd).await?;
                Ok(proto::ForceReleaseLeaseResponse {
                    released: ended.is_some(),
                    lease: ended.map(convert::lease),
                })
            },
        )
        .await
    }

    async fn list_machines(&self, req: Request<proto::ListMachinesRequest>) -> Reply<proto::ListMachinesResponse> {
        unary(
            "ListMachines",
            self.authorize(&req, Role::Admin),
            req,
            Request::into_inner,
            |cmd: ListMachines| async { Ok(convert::machine_page(self.inner.list_machines(cmd).await?)) },
        )
        .await
    }

    async fn delete_entity(&self, req: Request<proto::DeleteEntityRequest>) -> Reply<proto::DeleteEntityResponse> {
        unary(
            "DeleteEntity",
            self.authorize(&req, Role::Admin),
            req,
            Request::into_inner,
            |cmd: DeleteEntity| async {
                let deleted = self.inner.delete_entity(cmd).await?;
                Ok(proto::DeleteEntityResponse { deleted })
            },
        )
        .await
    }
}

/// An open event stream as tonic serves it: each item converted, each error mapped once.
struct Served(<CoordinatorService as coordinator_server::Coordinator>::StreamEventsStream);

impl From<service::EventStream> for Served {
    fn from(events: service::EventStream) -> Self {
        let items = tokio_stream::StreamExt::map(events, |item| {
            item.map(proto::StreamEventsResponse::from).map_err(Status::from)
        });
        Served(Box::pin(items))
    }
}

/// A served stream that finishes its [`Call`] with the code it ends with.
struct Observed {
    items: <CoordinatorService as coordinator_server::Coordinator>::StreamEventsStream,
    call: Option<Call>,
}

impl Stream for Observed {
    type Item = Result<proto::StreamEventsResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.items.as_mut().poll_next(cx);
        let end = match &polled {
            std::task::Poll::Ready(None) => Some(tonic::Code::Ok),
            std::task::Poll::Ready(Some(Err(status))) => Some(status.code()),
            _ => None,
        };
        if let Some(code) = end
            && let Some(call) = self.call.take()
        {
            call.finish(code);
        }
        polled
    }
}
