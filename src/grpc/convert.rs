//! Proto ↔ domain. Requests are parsed into domain values here (failures name the field);
//! responses are built from domain values.

use crate::domain::DomainError;
use crate::domain::entity::Entity;
use crate::domain::lease::{Fence, FencingToken, Lease};
use crate::domain::machine::{FieldRule, MachineSpec, TransitionSpec};
use crate::domain::names::LeaseKey;
use crate::domain::tape::StoredEvent;
use crate::domain::time::Timestamp;
use crate::proto;
use crate::storage::StoredMachine;
use std::time::Duration;

/// Domain time to proto.
pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1_000_000),
        nanos: (t.0.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Proto duration to std; negative or malformed is INVALID_ARGUMENT.
pub fn duration(field: &str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, DomainError> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(DomainError::invalid(field, "must be a non-negative duration"));
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

/// Std duration to proto.
pub fn pduration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Optional fence.
pub fn fence(field: &str, f: Option<proto::Fence>) -> Result<Option<Fence>, DomainError> {
    f.map(|f| {
        Ok(Fence {
            key: LeaseKey::parse(&format!("{field}.key"), f.key)?,
            token: FencingToken::parse(&format!("{field}.token"), f.token)?,
        })
    })
    .transpose()
}

/// Lease to proto.
pub fn lease(l: Lease) -> proto::Lease {
    proto::Lease {
        key: l.key.to_string(),
        holder: l.holder.to_string(),
        token: l.token.0,
        acquired_at: Some(ts(l.acquired_at)),
        expires_at: Some(ts(l.expires_at)),
    }
}

/// Entity to proto.
pub fn entity(e: Entity) -> proto::Entity {
    proto::Entity {
        id: e.id.to_string(),
        kind: e.kind.to_string(),
        state: e.state,
        version: e.version,
        fields: e.fields.into_iter().collect(),
        dedup_key: e.dedup_key.map(|d| d.to_string()).unwrap_or_default(),
        created_at: Some(ts(e.created_at)),
        updated_at: Some(ts(e.updated_at)),
        last_activity_at: Some(ts(e.last_activity_at)),
        last_seq: e.last_seq,
        sealed: e.final_seq.is_some(),
    }
}

/// Event to proto.
pub fn event(e: &StoredEvent) -> proto::Event {
    proto::Event {
        seq: e.seq,
        r#type: e.event_type.clone(),
        payload: e.payload.clone(),
        content_type: e.content_type.clone(),
        state: e.state.clone().unwrap_or_default(),
        created_at: Some(ts(e.created_at)),
    }
}

/// Proto machine spec to domain (validated later by `Machine::parse`).
pub fn spec_from_proto(s: proto::MachineSpec) -> Result<MachineSpec, DomainError> {
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
        .collect::<Result<_, DomainError>>()?;
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
    })
}

/// Domain machine spec to proto.
pub fn spec_to_proto(s: &MachineSpec) -> proto::MachineSpec {
    proto::MachineSpec {
        kind: s.kind.clone(),
        states: s.states.clone(),
        initial_state: s.initial_state.clone(),
        terminal_states: s.terminal_states.clone(),
        transitions: s
            .transitions
            .iter()
            .map(|t| proto::TransitionSpec {
                name: t.name.clone(),
                from: t.from.clone(),
                to: t.to.clone(),
                stale_from: t.stale_from.clone(),
                stale_after: t.stale_after.map(pduration),
                noop_from: t.noop_from.clone(),
            })
            .collect(),
        field_rules: s
            .field_rules
            .iter()
            .map(|r| proto::FieldRule {
                field: r.field.clone(),
                allowed_in: r.allowed_in.clone(),
            })
            .collect(),
    }
}

/// Stored machine to proto.
pub fn machine(m: &StoredMachine) -> proto::Machine {
    proto::Machine {
        spec: Some(spec_to_proto(m.machine.spec())),
        version: m.version,
        defined_at: Some(ts(m.defined_at)),
    }
}
