//! The tonic service: thin handlers that parse requests into domain values, call the
//! service layer, and build responses. Errors map to statuses in `status.rs` only.

pub mod convert;
mod status;

pub use status::DOMAIN;

use crate::domain::DomainError;
use crate::domain::entity::{parse_field_names, parse_fields};
use crate::domain::lease::{FencingToken, MAX_WAIT, Ttl};
use crate::domain::machine::{Machine, TransitionAsk};
use crate::domain::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::{self, IfSealed};
use crate::proto::{self, coordinator_server};
use crate::service::{self, AcquireCmd, AppendCmd, Coordinator, CreateCmd, StreamItem, TransitionCmd};
use crate::storage::ListQuery;
use base64::Engine;
use std::pin::Pin;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// Default ListEntities page size.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest ListEntities page size.
pub const MAX_PAGE: u32 = 1000;

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

fn ns(s: String) -> Result<Namespace, DomainError> {
    Namespace::parse("namespace", s)
}

fn rid(s: String) -> Result<Option<RequestId>, DomainError> {
    RequestId::parse_optional("request_id", s)
}

fn raw_events(events: Vec<proto::EventInput>) -> Vec<(String, Vec<u8>, String)> {
    events
        .into_iter()
        .map(|e| (e.r#type, e.payload, e.content_type))
        .collect()
}

/// Runs a handler body, turning any error into a status.
async fn answer<T, F>(f: F) -> Reply<T>
where
    F: Future<Output = Result<T, service::Error>>,
{
    f.await.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl coordinator_server::Coordinator for CoordinatorService {
    async fn acquire_lease(&self, req: Request<proto::AcquireLeaseRequest>) -> Reply<proto::AcquireLeaseResponse> {
        // The wait is bounded by the caller's deadline too (grpc-timeout), minus a margin
        // to answer in time.
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let r = req.into_inner();
        answer(async {
            let wait = convert::duration("wait", r.wait)?.unwrap_or_default();
            if wait > MAX_WAIT {
                return Err(DomainError::invalid("wait", "must be at most 5m").into());
            }
            let wait = match deadline {
                Some(d) => wait.min(d.saturating_sub(d / 10)),
                None => wait,
            };
            let cmd = AcquireCmd {
                ns: ns(r.namespace)?,
                key: LeaseKey::parse("key", r.key)?,
                holder: Holder::parse("holder", r.holder)?,
                ttl: Ttl::parse("ttl", convert::duration("ttl", r.ttl)?)?,
                wait,
                request_id: rid(r.request_id)?,
            };
            let out = self.inner.acquire_lease(cmd).await?;
            Ok(proto::AcquireLeaseResponse {
                acquired: out.acquired,
                lease: Some(convert::lease(out.lease)),
            })
        })
        .await
    }

    async fn renew_lease(&self, req: Request<proto::RenewLeaseRequest>) -> Reply<proto::RenewLeaseResponse> {
        let r = req.into_inner();
        answer(async {
            let lease = self
                .inner
                .renew_lease(
                    ns(r.namespace)?,
                    LeaseKey::parse("key", r.key)?,
                    FencingToken::parse("token", r.token)?,
                    Ttl::parse("ttl", convert::duration("ttl", r.ttl)?)?,
                    rid(r.request_id)?,
                )
                .await?;
            Ok(proto::RenewLeaseResponse {
                lease: Some(convert::lease(lease)),
            })
        })
        .await
    }

    async fn release_lease(&self, req: Request<proto::ReleaseLeaseRequest>) -> Reply<proto::ReleaseLeaseResponse> {
        let r = req.into_inner();
        answer(async {
            let released = self
                .inner
                .release_lease(
                    ns(r.namespace)?,
                    LeaseKey::parse("key", r.key)?,
                    FencingToken::parse("token", r.token)?,
                    rid(r.request_id)?,
                )
                .await?;
            Ok(proto::ReleaseLeaseResponse { released })
        })
        .await
    }

    async fn get_lease(&self, req: Request<proto::GetLeaseRequest>) -> Reply<proto::GetLeaseResponse> {
        let r = req.into_inner();
        answer(async {
            let view = self
                .inner
                .get_lease(ns(r.namespace)?, LeaseKey::parse("key", r.key)?)
                .await?;
            Ok(proto::GetLeaseResponse {
                lease: view.lease.map(convert::lease),
                last_token: view.last_token,
            })
        })
        .await
    }

    async fn define_machine(&self, req: Request<proto::DefineMachineRequest>) -> Reply<proto::DefineMachineResponse> {
        let r = req.into_inner();
        answer(async {
            let spec = r.spec.ok_or_else(|| DomainError::invalid("spec", "is required"))?;
            let machine = Machine::parse(convert::spec_from_proto(spec)?)?;
            let out = self.inner.define_machine(ns(r.namespace)?, machine).await?;
            Ok(proto::DefineMachineResponse {
                machine: Some(convert::machine(&out.machine)),
                changed: out.changed,
            })
        })
        .await
    }

    async fn get_machine(&self, req: Request<proto::GetMachineRequest>) -> Reply<proto::GetMachineResponse> {
        let r = req.into_inner();
        answer(async {
            let m = self
                .inner
                .get_machine(ns(r.namespace)?, Name::parse("kind", r.kind)?)
                .await?;
            Ok(proto::GetMachineResponse {
                machine: Some(convert::machine(&m)),
            })
        })
        .await
    }

    async fn create_entity(&self, req: Request<proto::CreateEntityRequest>) -> Reply<proto::CreateEntityResponse> {
        let r = req.into_inner();
        answer(async {
            let cmd = CreateCmd {
                ns: ns(r.namespace)?,
                kind: Name::parse("kind", r.kind)?,
                id: (!r.id.is_empty()).then(|| EntityId::parse("id", r.id)).transpose()?,
                dedup_key: (!r.dedup_key.is_empty())
                    .then(|| DedupKey::parse("dedup_key", r.dedup_key))
                    .transpose()?,
                fields: parse_fields("fields", r.fields)?,
                fence: convert::fence("fence", r.fence)?,
                request_id: rid(r.request_id)?,
            };
            let out = self.inner.create_entity(cmd).await?;
            Ok(proto::CreateEntityResponse {
                created: out.created,
                entity: Some(convert::entity(out.entity)),
            })
        })
        .await
    }

    async fn get_entity(&self, req: Request<proto::GetEntityRequest>) -> Reply<proto::GetEntityResponse> {
        let r = req.into_inner();
        answer(async {
            let e = self
                .inner
                .get_entity(ns(r.namespace)?, EntityId::parse("id", r.id)?)
                .await?;
            Ok(proto::GetEntityResponse {
                entity: Some(convert::entity(e)),
            })
        })
        .await
    }

    async fn list_entities(&self, req: Request<proto::ListEntitiesRequest>) -> Reply<proto::ListEntitiesResponse> {
        let r = req.into_inner();
        answer(async {
            let limit = match r.page_size {
                0 => DEFAULT_PAGE,
                n if n > MAX_PAGE => {
                    return Err(DomainError::invalid("page_size", format!("must be at most {MAX_PAGE}")).into());
                }
                n => n,
            };
            let after_id = if r.page_token.is_empty() {
                None
            } else {
                let bad = || DomainError::invalid("page_token", "is not a token from a previous ListEntities response");
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&r.page_token)
                    .map_err(|_| bad())?;
                Some(EntityId::parse("page_token", String::from_utf8(raw).map_err(|_| bad())?).map_err(|_| bad())?)
            };
            let q = ListQuery {
                ns: ns(r.namespace)?,
                kind: Name::parse("kind", r.kind)?,
                states: parse_field_names("states", r.states)?,
                has_fields: parse_field_names("has_fields", r.has_fields)?,
                missing_fields: parse_field_names("missing_fields", r.missing_fields)?,
                limit,
                after_id,
            };
            let (page, more) = self.inner.list_entities(q).await?;
            let next_page_token = match (more, page.last()) {
                (true, Some(last)) => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.id.as_str()),
                _ => String::new(),
            };
            Ok(proto::ListEntitiesResponse {
                entities: page.into_iter().map(convert::entity).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn transition(&self, req: Request<proto::TransitionRequest>) -> Reply<proto::TransitionResponse> {
        let r = req.into_inner();
        answer(async {
            if r.expect_version == Some(0) {
                return Err(DomainError::invalid("expect_version", "versions start at 1").into());
            }
            tape::check_payload("final_payload", &r.final_payload)?;
            tape::check_content_type("final_content_type", &r.final_content_type)?;
            let cmd = TransitionCmd {
                ns: ns(r.namespace)?,
                entity_id: EntityId::parse("entity_id", r.entity_id)?,
                ask: TransitionAsk {
                    name: Name::parse("transition", r.transition)?,
                    expect_version: r.expect_version,
                    set_fields: parse_fields("set_fields", r.set_fields)?,
                    clear_fields: parse_field_names("clear_fields", r.clear_fields)?,
                },
                fence: convert::fence("fence", r.fence)?,
                events: tape::parse_batch("events", raw_events(r.events), 0)?,
                final_payload: r.final_payload,
                final_content_type: r.final_content_type,
                request_id: rid(r.request_id)?,
            };
            let out = self.inner.transition(cmd).await?;
            Ok(proto::TransitionResponse {
                applied: out.applied,
                entity: Some(convert::entity(out.entity)),
                seqs: out.seqs,
            })
        })
        .await
    }

    async fn append_events(&self, req: Request<proto::AppendEventsRequest>) -> Reply<proto::AppendEventsResponse> {
        let r = req.into_inner();
        answer(async {
            let if_sealed = match proto::IfSealed::try_from(r.if_sealed) {
                Ok(proto::IfSealed::Unspecified | proto::IfSealed::Reject) => IfSealed::Reject,
                Ok(proto::IfSealed::Drop) => IfSealed::Drop,
                Err(_) => {
                    return Err(DomainError::invalid("if_sealed", format!("unknown value {}", r.if_sealed)).into());
                }
            };
            let cmd = AppendCmd {
                ns: ns(r.namespace)?,
                entity_id: EntityId::parse("entity_id", r.entity_id)?,
                events: tape::parse_batch("events", raw_events(r.events), 1)?,
                fence: convert::fence("fence", r.fence)?,
                if_sealed,
                request_id: rid(r.request_id)?,
            };
            let out = self.inner.append_events(cmd).await?;
            Ok(proto::AppendEventsResponse {
                seqs: out.seqs,
                dropped: out.dropped,
                final_seq: out.final_seq.unwrap_or(0),
            })
        })
        .await
    }

    type StreamEventsStream = Pin<Box<dyn Stream<Item = Result<proto::StreamEventsResponse, Status>> + Send>>;

    async fn stream_events(&self, req: Request<proto::StreamEventsRequest>) -> Reply<Self::StreamEventsStream> {
        let r = req.into_inner();
        let rx = answer(async {
            let id = EntityId::parse("entity_id", r.entity_id)?;
            self.inner.stream_events(ns(r.namespace)?, id, r.after_seq).await
        })
        .await?
        .into_inner();
        let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), |item| {
            item.map(|i| proto::StreamEventsResponse {
                item: Some(match i {
                    StreamItem::Event(e) => proto::stream_events_response::Item::Event(convert::event(&e)),
                    StreamItem::Heartbeat(seq) => {
                        proto::stream_events_response::Item::Heartbeat(proto::Heartbeat { latest_seq: seq })
                    }
                }),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Parses a `grpc-timeout` header value ("100m", "5S" ...).
fn parse_grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
