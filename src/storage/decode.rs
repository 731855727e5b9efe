//! Row decoding shared by both adapters: a stored row's columns, as either driver reads
//! them, into domain values. A row that breaks a rule is reported as corrupt, never trusted.

use super::{MachineRow, Result, StoreError};
use crate::domain::batch::StoredRequest;
use crate::domain::entity::{Entity, Fields, Version};
use crate::domain::lease::{FencingToken, LeaseRow};
use crate::domain::machine::{Machine, MachineSpec, StoredMachine};
use crate::domain::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::Timestamp;
use std::sync::Arc;

/// A lease row's columns: key, token, holder, acquired_at_us, expires_at_us.
pub type LeaseTuple = (String, i64, Option<String>, i64, i64);
/// An entity row's columns, in `ENTITY_COLUMNS` order.
pub type EntityTuple = (
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);
/// An event row's columns: seq, type, content_type, payload, state, created_at_us.
pub type EventTuple = (i64, String, String, Vec<u8>, Option<String>, i64);
/// A machine row's columns: kind, version, spec, defined_at_us.
pub type MachineTuple = (String, i64, String, i64);

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt {what} row: {e}"))
}

/// A counter (version, seq, token) as stored: the domain keeps them at most `i64::MAX`.
pub fn to_i64(v: impl Into<u64>) -> i64 {
    i64::try_from(v.into()).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub fn lease_row((key, token, holder, acquired, expires): LeaseTuple) -> Result<LeaseRow> {
    Ok(LeaseRow {
        key: LeaseKey::parse("key", key).map_err(|e| corrupt("lease", e))?,
        token: FencingToken::parse("token", to_u64(token)).map_err(|e| corrupt("lease", e))?,
        holder: holder
            .map(|h| Holder::parse("holder", h))
            .transpose()
            .map_err(|e| corrupt("lease", e))?,
        acquired_at: Timestamp(acquired),
        expires_at: Timestamp(expires),
    })
}

pub fn machine_row((kind, version, spec, defined_at): MachineTuple) -> Result<MachineRow> {
    Ok(MachineRow {
        kind: Name::parse("kind", kind).map_err(|e| corrupt("machine", e))?,
        version: to_u64(version),
        spec,
        defined_at: Timestamp(defined_at),
    })
}

/// A machine row parsed and validated.
pub fn machine(row: &MachineRow) -> Result<StoredMachine> {
    let (version, spec, defined_at) = (row.version, &row.spec, row.defined_at);
    let spec: MachineSpec = serde_json::from_str(spec).map_err(|e| corrupt("machine", e))?;
    let machine = Machine::parse(spec).map_err(|e| corrupt("machine", e))?;
    Ok(StoredMachine {
        machine: Arc::new(machine),
        version,
        defined_at,
    })
}

pub fn machine_json(m: &StoredMachine) -> Result<String> {
    serde_json::to_string(m.machine.spec()).map_err(|e| StoreError::Internal(e.to_string()))
}

pub fn entity(t: EntityTuple) -> Result<Entity> {
    let (id, kind, state, version, fields, dedup, created, updated, activity, last_seq, final_seq, due) = t;
    let fields: Fields = serde_json::from_str(&fields).map_err(|e| corrupt("entity", e))?;
    Ok(Entity {
        id: EntityId::parse("id", id).map_err(|e| corrupt("entity", e))?,
        kind: Name::parse("kind", kind).map_err(|e| corrupt("entity", e))?,
        state,
        version: Version::parse("version", to_u64(version)).map_err(|e| corrupt("entity", e))?,
        fields,
        dedup_key: dedup
            .map(|d| DedupKey::parse("dedup_key", d))
            .transpose()
            .map_err(|e| corrupt("entity", e))?,
        created_at: Timestamp(created),
        updated_at: Timestamp(updated),
        last_activity_at: Timestamp(activity),
        last_seq: seq(last_seq).map_err(|e| corrupt("entity", e))?,
        final_seq: final_seq.map(seq).transpose().map_err(|e| corrupt("entity", e))?,
        due_at: due.map(Timestamp),
    })
}

/// A `(namespace, id)` row.
pub fn entity_key((ns, id): (String, String)) -> Result<(Namespace, EntityId)> {
    let bad = |e: crate::domain::DomainError| corrupt("entity", e);
    Ok((
        Namespace::parse("namespace", ns).map_err(bad)?,
        EntityId::parse("id", id).map_err(bad)?,
    ))
}

pub fn fields_json(f: &Fields) -> String {
    // A map of strings always serializes.
    serde_json::to_string(f).unwrap_or_else(|_| "{}".into())
}

/// A `(namespace, id, last_seq)` row of a heads query.
pub fn head((ns, id, last_seq): (String, String, i64)) -> Result<((Namespace, EntityId), Seq)> {
    let bad = |e: crate::domain::DomainError| corrupt("entity", e);
    Ok((
        (
            Namespace::parse("namespace", ns).map_err(bad)?,
            EntityId::parse("id", id).map_err(bad)?,
        ),
        seq(last_seq).map_err(bad)?,
    ))
}

fn seq(v: i64) -> std::result::Result<Seq, crate::domain::DomainError> {
    Seq::parse("seq", to_u64(v))
}

pub fn event((n, event_type, content_type, payload, state, created): EventTuple) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq: seq(n).map_err(|e| corrupt("event", e))?,
        event_type,
        payload,
        content_type,
        state,
        created_at: Timestamp(created),
    })
}

/// A stored request outcome's columns: namespace, request id, method, outcome.
pub fn request(
    (ns, rid, call, outcome): (String, String, String, String),
) -> Result<(Namespace, RequestId, StoredRequest)> {
    let bad = |e| corrupt("request", e);
    Ok((
        Namespace::parse("namespace", ns).map_err(bad)?,
        RequestId::parse("request_id", rid).map_err(bad)?,
        StoredRequest { call, outcome },
    ))
}

/// A namespace column.
pub fn namespace(ns: String) -> Result<Namespace> {
    Namespace::parse("namespace", ns).map_err(|e| corrupt("row", e))
}
