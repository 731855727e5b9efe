//! The tonic service: thin handlers that read parse → service → convert. Requests become
//! domain commands in `parse`, responses are built in `convert`, and errors map to
//! statuses in `status` only.

pub mod convert;
pub mod parse;
mod status;

pub use status::DOMAIN;

use crate::domain::command::{
    AcquireLease, AppendEvents, CreateEntity, DefineMachine, GetEntity, GetLease, GetMachine, ListEntities,
    ReleaseLease, RenewLease, StreamEvents, Transition,
};
use crate::proto::{self, coordinator_server};
use crate::service::{self, Coordinator};
use crate::telemetry::Call;
use std::pin::Pin;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

type Reply<T> = Result<Response<T>, Status>;

/// What the server knows of the connection a request came on (tonic puts it in the
/// request's extensions): when its streams must end because the connection has aged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection {
    /// `max_connection_age + max_connection_age_grace` after the accept; `None` when
    /// connections never age.
    pub streams_end: Option<tokio::time::Instant>,
}

impl Connection {
    /// The connection of `request`, if the server recorded one.
    pub fn of<T>(request: &Request<T>) -> Connection {
        request.extensions().get::<Connection>().copied().unwrap_or_default()
    }
}

/// The gRPC face of a [`Coordinator`].
#[derive(Clone)]
pub struct CoordinatorService {
    inner: Coordinator,
}

impl CoordinatorService {
    /// Wraps a coordinator.
    pub fn new(inner: Coordinator) -> Self {
        Self { inner }
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
    let outcome = async { run(Cmd::try_from(input(request))?).await }
        .instrument(call.span().clone())
        .await;
    let reply = outcome.map(|o| Response::new(Resp::from(o))).map_err(Status::from);
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
        unary("AcquireLease", req, input, |cmd: AcquireLease| {
            self.inner.acquire_lease(cmd)
        })
        .await
    }

    async fn renew_lease(&self, req: Request<proto::RenewLeaseRequest>) -> Reply<proto::RenewLeaseResponse> {
        unary("RenewLease", req, Request::into_inner, |cmd: RenewLease| async {
            let lease = self.inner.renew_lease(cmd).await?;
            Ok(proto::RenewLeaseResponse {
                lease: Some(convert::lease(lease)),
            })
        })
        .await
    }

    async fn release_lease(&self, req: Request<proto::ReleaseLeaseRequest>) -> Reply<proto::ReleaseLeaseResponse> {
        unary("ReleaseLease", req, Request::into_inner, |cmd: ReleaseLease| async {
            let released = self.inner.release_lease(cmd).await?;
            Ok(proto::ReleaseLeaseResponse { released })
        })
        .await
    }

    async fn get_lease(&self, req: Request<proto::GetLeaseRequest>) -> Reply<proto::GetLeaseResponse> {
        unary("GetLease", req, Request::into_inner, |cmd: GetLease| {
            self.inner.get_lease(cmd)
        })
        .await
    }

    async fn define_machine(&self, req: Request<proto::DefineMachineRequest>) -> Reply<proto::DefineMachineResponse> {
        unary("DefineMachine", req, Request::into_inner, |cmd: DefineMachine| {
            self.inner.define_machine(cmd)
        })
        .await
    }

    async fn get_machine(&self, req: Request<proto::GetMachineRequest>) -> Reply<proto::GetMachineResponse> {
        unary("GetMachine", req, Request::into_inner, |cmd: GetMachine| async {
            let m = self.inner.get_machine(cmd).await?;
            Ok(proto::GetMachineResponse {
                machine: Some(convert::machine(&m)),
            })
        })
        .await
    }

    async fn create_entity(&self, req: Request<proto::CreateEntityRequest>) -> Reply<proto::CreateEntityResponse> {
        unary("CreateEntity", req, Request::into_inner, |cmd: CreateEntity| {
            self.inner.create_entity(cmd)
        })
        .await
    }

    async fn get_entity(&self, req: Request<proto::GetEntityRequest>) -> Reply<proto::GetEntityResponse> {
        unary("GetEntity", req, Request::into_inner, |cmd: GetEntity| async {
            let e = self.inner.get_entity(cmd).await?;
            Ok(proto::GetEntityResponse {
                entity: Some(convert::entity(e)),
            })
        })
        .await
    }

    async fn list_entities(&self, req: Request<proto::ListEntitiesRequest>) -> Reply<proto::ListEntitiesResponse> {
        unary("ListEntities", req, Request::into_inner, |cmd: ListEntities| async {
            Ok(convert::page(self.inner.list_entities(cmd).await?))
        })
        .await
    }

    async fn transition(&self, req: Request<proto::TransitionRequest>) -> Reply<proto::TransitionResponse> {
        unary("Transition", req, Request::into_inner, |cmd: Transition| {
            self.inner.transition(cmd)
        })
        .await
    }

    async fn append_events(&self, req: Request<proto::AppendEventsRequest>) -> Reply<proto::AppendEventsResponse> {
        unary("AppendEvents", req, Request::into_inner, |cmd: AppendEvents| {
            self.inner.append_events(cmd)
        })
        .await
    }

    type StreamEventsStream = Pin<Box<dyn Stream<Item = Result<proto::StreamEventsResponse, Status>> + Send>>;

    /// The stream is observed until it ends: its code is the one it ends with (OK after
    /// `final`, UNAVAILABLE on drain or an aged connection), CANCELLED when the client left.
    async fn stream_events(&self, req: Request<proto::StreamEventsRequest>) -> Reply<Self::StreamEventsStream> {
        let call = observe("StreamEvents", &req);
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
}

type Items = tokio::sync::mpsc::Receiver<service::Result<service::StreamItem>>;

/// An open event stream as tonic serves it: each item converted, each error mapped once.
struct Served(<CoordinatorService as coordinator_server::Coordinator>::StreamEventsStream);

impl From<Items> for Served {
    fn from(rx: Items) -> Self {
        let items = tokio_stream::StreamExt::map(ReceiverStream::new(rx), |item| {
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
