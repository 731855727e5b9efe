//! The tonic service: thin handlers that read parse → service → convert. Requests become
//! domain commands in `parse`, responses are built in `convert`, and errors map to
//! statuses in `status` only.

pub mod convert;
pub mod parse;
mod status;
mod undecodable;

pub use status::DOMAIN;
pub use undecodable::UndecodableLayer;

use crate::domain::command::{
    AcquireLease, AppendEvents, CreateEntity, DefineMachine, DeleteEntity, ForceReleaseLease, GetEntity, GetLease,
    GetMachine, ListEntities, ListLeases, ListMachines, ReleaseLease, RenewLease, StreamEvents, Transition,
};
use crate::proto::{self, coordinator_server};
use crate::service::{self, Coordinator};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

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

/// Parses `request` into a command, runs it, converts the outcome; any error becomes a
/// status in the one mapping.
async fn unary<Req, Cmd, Out, Resp, F>(request: Req, run: impl FnOnce(Cmd) -> F) -> Reply<Resp>
where
    Cmd: TryFrom<Req, Error = crate::domain::DomainError>,
    F: Future<Output = Result<Out, service::Error>>,
    Resp: From<Out>,
{
    let outcome = async { run(Cmd::try_from(request)?).await }.await;
    outcome.map(|o| Response::new(Resp::from(o))).map_err(Status::from)
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn acquire_lease(&self, req: Request<proto::AcquireLeaseRequest>) -> Reply<proto::AcquireLeaseResponse> {
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse::grpc_timeout);
        let req = parse::AcquireRequest(req.into_inner(), deadline);
        unary(req, |cmd: AcquireLease| self.inner.acquire_lease(cmd)).await
    }

    async fn renew_lease(&self, req: Request<proto::RenewLeaseRequest>) -> Reply<proto::RenewLeaseResponse> {
        unary(req.into_inner(), |cmd: RenewLease| async {
            let lease = self.inner.renew_lease(cmd).await?;
            Ok(proto::RenewLeaseResponse {
                lease: Some(convert::lease(lease)),
            })
        })
        .await
    }

    async fn release_lease(&self, req: Request<proto::ReleaseLeaseRequest>) -> Reply<proto::ReleaseLeaseResponse> {
        unary(req.into_inner(), |cmd: ReleaseLease| async {
            let released = self.inner.release_lease(cmd).await?;
            Ok(proto::ReleaseLeaseResponse { released })
        })
        .await
    }

    async fn get_lease(&self, req: Request<proto::GetLeaseRequest>) -> Reply<proto::GetLeaseResponse> {
        unary(req.into_inner(), |cmd: GetLease| self.inner.get_lease(cmd)).await
    }

    async fn define_machine(&self, req: Request<proto::DefineMachineRequest>) -> Reply<proto::DefineMachineResponse> {
        unary(req.into_inner(), |cmd: DefineMachine| self.inner.define_machine(cmd)).await
    }

    async fn get_machine(&self, req: Request<proto::GetMachineRequest>) -> Reply<proto::GetMachineResponse> {
        unary(req.into_inner(), |cmd: GetMachine| async {
            let m = self.inner.get_machine(cmd).await?;
            Ok(proto::GetMachineResponse {
                machine: Some(convert::machine(&m)),
            })
        })
        .await
    }

    async fn create_entity(&self, req: Request<proto::CreateEntityRequest>) -> Reply<proto::CreateEntityResponse> {
        unary(req.into_inner(), |cmd: CreateEntity| self.inner.create_entity(cmd)).await
    }

    async fn get_entity(&self, req: Request<proto::GetEntityRequest>) -> Reply<proto::GetEntityResponse> {
        unary(req.into_inner(), |cmd: GetEntity| async {
            let e = self.inner.get_entity(cmd).await?;
            Ok(proto::GetEntityResponse {
                entity: Some(convert::entity(e)),
            })
        })
        .await
    }

    async fn list_entities(&self, req: Request<proto::ListEntitiesRequest>) -> Reply<proto::ListEntitiesResponse> {
        unary(req.into_inner(), |cmd: ListEntities| async {
            Ok(convert::page(self.inner.list_entities(cmd).await?))
        })
        .await
    }

    async fn transition(&self, req: Request<proto::TransitionRequest>) -> Reply<proto::TransitionResponse> {
        unary(req.into_inner(), |cmd: Transition| self.inner.transition(cmd)).await
    }

    async fn append_events(&self, req: Request<proto::AppendEventsRequest>) -> Reply<proto::AppendEventsResponse> {
        unary(req.into_inner(), |cmd: AppendEvents| self.inner.append_events(cmd)).await
    }

    type StreamEventsStream = Pin<Box<dyn Stream<Item = Result<proto::StreamEventsResponse, Status>> + Send>>;

    async fn stream_events(&self, req: Request<proto::StreamEventsRequest>) -> Reply<Self::StreamEventsStream> {
        let served: Response<Served> = unary(req.into_inner(), |cmd: StreamEvents| async {
            Ok(Served::from(self.inner.stream_events(cmd).await?))
        })
        .await?;
        Ok(served.map(|s| s.0))
    }

    async fn list_leases(&self, req: Request<proto::ListLeasesRequest>) -> Reply<proto::ListLeasesResponse> {
        unary(req.into_inner(), |cmd: ListLeases| async {
            Ok(convert::lease_page(self.inner.list_leases(cmd).await?))
        })
        .await
    }

    async fn force_release_lease(
        &self,
        req: Request<proto::ForceReleaseLeaseRequest>,
    ) -> Reply<proto::ForceReleaseLeaseResponse> {
        unary(req.into_inner(), |cmd: ForceReleaseLease| async {
            let ended = self.inner.force_release_lease(cmd).await?;
            Ok(proto::ForceReleaseLeaseResponse {
                released: ended.is_some(),
                lease: ended.map(convert::lease),
            })
        })
        .await
    }

    async fn list_machines(&self, req: Request<proto::ListMachinesRequest>) -> Reply<proto::ListMachinesResponse> {
        unary(req.into_inner(), |cmd: ListMachines| async {
            Ok(convert::machine_page(self.inner.list_machines(cmd).await?))
        })
        .await
    }

    async fn delete_entity(&self, req: Request<proto::DeleteEntityRequest>) -> Reply<proto::DeleteEntityResponse> {
        unary(req.into_inner(), |cmd: DeleteEntity| async {
            let deleted = self.inner.delete_entity(cmd).await?;
            Ok(proto::DeleteEntityResponse { deleted })
        })
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
