//! Proto → domain: one `TryFrom<proto::…Request>` per RPC, into the command the service
//! runs. This is the boundary where requests are parsed; a failure is `INVALID_ARGUMENT`
//! naming the field (`events[3].type`, `fence.token`). Nothing past here re-validates.

use crate::domain::DomainError;
use crate::domain::command::{
    AcquireLease, AppendEvents, CreateEntity, DefineMachine, DeleteEntity, ForceReleaseLease, GetEntity, GetLease,
    GetMachine, ListEntities, ListLeases, ListMachines, PageToken, ReleaseLease, RenewLease, StreamEvents, Transition,
};
use crate::domain::entity::{Version, parse_field_names, parse_fields};
use crate::domain::lease::{Fence, FencingToken, MAX_WAIT, Ttl};
use crate::domain::machine::{
    DedupPolicy, FieldRule, FinalEvent, Machine, MachineSpec, TimeoutSpec, TransitionAsk, TransitionSpec,
};
use crate::domain::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::{self, IfSealed, Seq};
use crate::proto;
use std::time::Duration;

type Parsed<T> = Result<T, DomainError>;

fn ns(s: String) -> Parsed<Namespace> {
    Namespace::parse("namespace", s)
}

fn rid(s: String) -> Parsed<Option<RequestId>> {
    RequestId::parse_optional("request_id", s)
}

/// Proto duration to std; negative or malformed is INVALID_ARGUMENT.
pub fn duration(field: &str, d: Option<prost_types::Duration>) -> Parsed<Option<Duration>> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(DomainError::invalid(field, "must be a non-negative duration"));
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

/// An optional fence.
fn fence(field: &str, f: Option<proto::Fence>) -> Parsed<Option<Fence>> {
    f.map(|f| {
        Ok(Fence {
            key: LeaseKey::parse(&format!("{field}.key"), f.key)?,
            token: FencingToken::parse(&format!("{field}.token"), f.token)?,
        })
    })
    .transpose()
}

fn events(field: &str, events: Vec<proto::EventInput>, min: usize) -> Parsed<Vec<tape::EventInput>> {
    let raw = events
        .into_iter()
        .map(|e| (e.r#type, e.payload, e.content_type))
        .collect();
    tape::parse_batch(field, raw, min)
}

fn ttl(d: Option<prost_types::Duration>) -> Parsed<Ttl> {
    Ttl::parse("ttl", duration("ttl", d)?)
}

/// An AcquireLease and the caller's deadline (`grpc-timeout`), which bounds the wait too.
pub struct AcquireRequest(pub proto::AcquireLeaseRequest, pub Option<Duration>);

impl TryFrom<AcquireRequest> for AcquireLease {
    type Error = DomainError;

    fn try_from(AcquireRequest(r, deadline): AcquireRequest) -> Parsed<Self> {
        let wait = duration("wait", r.wait)?.unwrap_or_default();
        if wait > MAX_WAIT {
            return Err(DomainError::invalid("wait", "must be at most 5m"));
        }
        // Leave a tenth of the deadline to answer in time.
        let wait = match deadline {
            Some(d) => wait.min(d.saturating_sub(d / 10)),
            None => wait,
        };
        Ok(Self {
            ns: ns(r.namespace)?,
            key: LeaseKey::parse("key", r.key)?,
            holder: Holder::parse("holder", r.holder)?,
            ttl: ttl(r.ttl)?,
            wait,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::RenewLeaseRequest> for RenewLease {
    type Error = DomainError;

    fn try_from(r: proto::RenewLeaseRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            key: LeaseKey::parse("key", r.key)?,
            token: FencingToken::parse("token", r.token)?,
            ttl: ttl(r.ttl)?,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::ReleaseLeaseRequest> for ReleaseLease {
    type Error = DomainError;

    fn try_from(r: proto::ReleaseLeaseRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            key: LeaseKey::parse("key", r.key)?,
            token: FencingToken::parse("token", r.token)?,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::GetLeaseRequest> for GetLease {
    type Error = DomainError;

    fn try_from(r: proto::GetLeaseRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            key: LeaseKey::parse("key", r.key)?,
        })
    }
}

impl TryFrom<proto::DefineMachineRequest> for DefineMachine {
    type Error = DomainError;

    fn try_from(r: proto::DefineMachineRequest) -> Parsed<Self> {
        let spec = r.spec.ok_or_else(|| DomainError::invalid("spec", "is required"))?;
        Ok(Self {
            ns: ns(r.namespace)?,
            machine: Machine::parse(spec_from_proto(spec)?)?,
        })
    }
}

impl TryFrom<proto::GetMachineRequest> for GetMachine {
    type Error = DomainError;

    fn try_from(r: proto::GetMachineRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            kind: Name::parse("kind", r.kind)?,
        })
    }
}

impl TryFrom<proto::CreateEntityRequest> for CreateEntity {
    type Error = DomainError;

    fn try_from(r: proto::CreateEntityRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            kind: Name::parse("kind", r.kind)?,
            id: (!r.id.is_empty()).then(|| EntityId::parse("id", r.id)).transpose()?,
            dedup_key: (!r.dedup_key.is_empty())
                .then(|| DedupKey::parse("dedup_key", r.dedup_key))
                .transpose()?,
            fields: parse_fields("fields", r.fields)?,
            fence: fence("fence", r.fence)?,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::GetEntityRequest> for GetEntity {
    type Error = DomainError;

    fn try_from(r: proto::GetEntityRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            id: EntityId::parse("id", r.id)?,
        })
    }
}

impl TryFrom<proto::ListEntitiesRequest> for ListEntities {
    type Error = DomainError;

    fn try_from(r: proto::ListEntitiesRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            kind: Name::parse("kind", r.kind)?,
            states: parse_field_names("states", r.states)?,
            has_fields: parse_field_names("has_fields", r.has_fields)?,
            missing_fields: parse_field_names("missing_fields", r.missing_fields)?,
            limit: ListEntities::parse_limit("page_size", r.page_size)?,
            after: page_token(&r.page_token)?,
        })
    }
}

fn page_token(s: &str) -> Parsed<Option<PageToken>> {
    (!s.is_empty()).then(|| PageToken::parse("page_token", s)).transpose()
}

impl TryFrom<proto::ListLeasesRequest> for ListLeases {
    type Error = DomainError;

    fn try_from(r: proto::ListLeasesRequest) -> Parsed<Self> {
        // A prefix is any start of a key: checked as a key when it is not empty.
        let prefix = if r.key_prefix.is_empty() {
            String::new()
        } else {
            LeaseKey::parse("key_prefix", r.key_prefix)?.as_str().to_string()
        };
        Ok(Self {
            ns: ns(r.namespace)?,
            prefix,
            limit: ListEntities::parse_limit("page_size", r.page_size)?,
            after: page_token(&r.page_token)?,
        })
    }
}

impl TryFrom<proto::ListMachinesRequest> for ListMachines {
    type Error = DomainError;

    fn try_from(r: proto::ListMachinesRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            limit: ListEntities::parse_limit("page_size", r.page_size)?,
            after: page_token(&r.page_token)?,
        })
    }
}

impl TryFrom<proto::ForceReleaseLeaseRequest> for ForceReleaseLease {
    type Error = DomainError;

    fn try_from(r: proto::ForceReleaseLeaseRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            key: LeaseKey::parse("key", r.key)?,
            by: Holder::parse("by", r.by)?,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::DeleteEntityRequest> for DeleteEntity {
    type Error = DomainError;

    fn try_from(r: proto::DeleteEntityRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            id: EntityId::parse("entity_id", r.entity_id)?,
            force: r.force,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::TransitionRequest> for Transition {
    type Error = DomainError;

    fn try_from(r: proto::TransitionRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            entity_id: EntityId::parse("entity_id", r.entity_id)?,
            ask: TransitionAsk {
                name: Name::parse("transition", r.transition)?,
                expect_version: r
                    .expect_version
                    .map(|v| Version::parse("expect_version", v))
                    .transpose()?,
                set_fields: parse_fields("set_fields", r.set_fields)?,
                clear_fields: parse_field_names("clear_fields", r.clear_fields)?,
                events: events("events", r.events, 0)?,
                final_event: FinalEvent::parse(r.final_payload, r.final_content_type)?,
            },
            fence: fence("fence", r.fence)?,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::AppendEventsRequest> for AppendEvents {
    type Error = DomainError;

    fn try_from(r: proto::AppendEventsRequest) -> Parsed<Self> {
        let if_sealed = match proto::IfSealed::try_from(r.if_sealed) {
            Ok(proto::IfSealed::Unspecified | proto::IfSealed::Reject) => IfSealed::Reject,
            Ok(proto::IfSealed::Drop) => IfSealed::Drop,
            Err(_) => {
                return Err(DomainError::invalid(
                    "if_sealed",
                    format!("unknown value {}", r.if_sealed),
                ));
            }
        };
        Ok(Self {
            ns: ns(r.namespace)?,
            entity_id: EntityId::parse("entity_id", r.entity_id)?,
            events: events("events", r.events, 1)?,
            fence: fence("fence", r.fence)?,
            if_sealed,
            request_id: rid(r.request_id)?,
        })
    }
}

impl TryFrom<proto::StreamEventsRequest> for StreamEvents {
    type Error = DomainError;

    fn try_from(r: proto::StreamEventsRequest) -> Parsed<Self> {
        Ok(Self {
            ns: ns(r.namespace)?,
            entity_id: EntityId::parse("entity_id", r.entity_id)?,
            after: Seq::parse("after_seq", r.after_seq)?,
        })
    }
}

/// A proto machine spec as a domain spec (validated by `Machine::parse`).
pub fn spec_from_proto(s: proto::MachineSpec) -> Parsed<MachineSpec> {
    let transitions = s
        .transitions
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            Ok(TransitionSpec {
                name: t.name,
                from: t.from,
                to: t.to,
                stale_from: t.stale_from,
                stale_after: duration(&format!("spec.transitions[{i}].stale_after"), t.stale_after)?,
                noop_from: t.noop_from,
            })
        })
        .collect::<Parsed<_>>()?;
    let timeouts = s
        .timeouts
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let field = format!("spec.timeouts[{i}].after");
            Ok(TimeoutSpec {
                state: t.state,
                after: duration(&field, t.after)?.ok_or_else(|| DomainError::invalid(field, "is required"))?,
                idle: t.idle,
                transition: t.transition,
            })
        })
        .collect::<Parsed<_>>()?;
    let dedup = match proto::DedupPolicy::try_from(s.dedup) {
        Ok(proto::DedupPolicy::Unspecified | proto::DedupPolicy::Forever) => DedupPolicy::Forever,
        Ok(proto::DedupPolicy::WhileActive) => DedupPolicy::WhileActive,
        Err(_) => {
            return Err(DomainError::invalid(
                "spec.dedup",
                format!("unknown policy {}", s.dedup),
            ));
        }
    };
    Ok(MachineSpec {
        kind: s.kind,
        states: s.states,
        initial_state: s.initial_state,
        terminal_states: s.terminal_states,
        transitions,
        field_rules: s
            .field_rules
            .into_iter()
            .map(|r| FieldRule {
                field: r.field,
                allowed_in: r.allowed_in,
            })
            .collect(),
        timeouts,
        retain_after_final: duration("spec.retain_after_final", s.retain_after_final)?,
        dedup,
    })
}

/// Parses a `grpc-timeout` header value ("100m", "5S" ...).
pub fn grpc_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_field() {
        let bad_fence = proto::TransitionRequest {
            namespace: "n".into(),
            entity_id: "e".into(),
            transition: "t".into(),
            fence: Some(proto::Fence {
                key: "k".into(),
                token: 0,
            }),
            ..Default::default()
        };
        let err = Transition::try_from(bad_fence).unwrap_err();
        assert!(matches!(err, DomainError::InvalidArgument { ref field, .. } if field == "fence.token"));
        let zero_version = proto::TransitionRequest {
            namespace: "n".into(),
            entity_id: "e".into(),
            transition: "t".into(),
            expect_version: Some(0),
            ..Default::default()
        };
        let err = Transition::try_from(zero_version).unwrap_err();
        assert!(matches!(err, DomainError::InvalidArgument { ref field, .. } if field == "expect_version"));
    }

    #[test]
    fn the_wait_is_bounded_by_the_deadline() {
        let r = proto::AcquireLeaseRequest {
            namespace: "n".into(),
            key: "k".into(),
            holder: "h".into(),
            ttl: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            wait: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            request_id: String::new(),
        };
        let cmd = AcquireLease::try_from(AcquireRequest(r, Some(Duration::from_secs(10)))).unwrap();
        assert_eq!(cmd.wait, Duration::from_secs(9));
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("99999999999999999H"), None);
        assert_eq!(grpc_timeout(""), None);
    }
}
