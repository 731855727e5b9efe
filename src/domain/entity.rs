//! Entities and their string fields.

use super::DomainError;
use super::names::{DedupKey, EntityId, Name};
use super::tape::{Seq, StoredEvent};
use super::time::Timestamp;
use std::collections::{BTreeMap, HashMap};

/// An entity's version: 1 at creation, +1 per applied transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Version(u64);

impl Version {
    /// A new entity's version.
    pub const FIRST: Version = Version(1);

    /// Parses a version (versions start at 1 and are stored as signed 64-bit integers).
    pub fn parse(field: &str, v: u64) -> Result<Self, DomainError> {
        if v == 0 || v > i64::MAX as u64 {
            return Err(DomainError::invalid(field, "versions start at 1"));
        }
        Ok(Self(v))
    }

    /// The version after an applied transition.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

counter!(Version, "version");

/// Most fields an entity may hold.
pub const MAX_FIELDS: usize = 64;
/// Longest field value, in bytes.
pub const MAX_FIELD_VALUE: usize = 4096;

/// An entity's fields, ordered by name.
pub type Fields = BTreeMap<String, String>;

/// Parses a field map from a request; `field` is the request field (`fields`, `set_fields`).
pub fn parse_fields(field: &str, m: HashMap<String, String>) -> Result<Fields, DomainError> {
    if m.len() > MAX_FIELDS {
        return Err(DomainError::invalid(
            field,
            format!("at most {MAX_FIELDS} fields, got {}", m.len()),
        ));
    }
    let mut out = Fields::new();
    for (k, v) in m {
        let name = Name::parse(&format!("{field}.key"), k)?;
        if v.len() > MAX_FIELD_VALUE {
            return Err(DomainError::invalid(
                format!("{field}[{name}]"),
                format!("value must be at most {MAX_FIELD_VALUE} bytes"),
            ));
        }
        // Every stored string is free of NUL, on both backends: Postgres text cannot hold
        // one, and a `\u0000` in the fields' JSON broke every filtered list of the kind.
        if v.contains('\0') {
            return Err(DomainError::invalid(
                format!("{field}[{name}]"),
                "value must not contain NUL",
            ));
        }
        out.insert(name.as_str().to_string(), v);
    }
    Ok(out)
}

/// Parses a list of field names (`clear_fields`, `has_fields` ...).
pub fn parse_field_names(field: &str, names: Vec<String>) -> Result<Vec<Name>, DomainError> {
    if names.len() > MAX_FIELDS {
        return Err(DomainError::invalid(field, format!("at most {MAX_FIELDS} names")));
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| Name::parse(&format!("{field}[{i}]"), n))
        .collect()
}

/// An entity as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entity {
    /// Id, unique in its namespace.
    pub id: EntityId,
    /// Kind (its machine).
    pub kind: Name,
    /// Current state.
    pub state: String,
    /// 1 at creation, +1 per applied transition.
    pub version: Version,
    /// String fields.
    pub fields: Fields,
    /// Dedup key, if created with one.
    pub dedup_key: Option<DedupKey>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last applied transition (or creation).
    pub updated_at: Timestamp,
    /// Last transition or append: what staleness guards measure.
    pub last_activity_at: Timestamp,
    /// Head of the tape (0 when empty).
    pub last_seq: Seq,
    /// Seq of `final` once sealed.
    pub final_seq: Option<Seq>,
    /// When the server next looks at it: a state timeout, or its purge once finished
    /// (see `Machine::due_at`). Internal: not part of the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
}

/// What a write does to one entity, as the domain decided it: the entity after, and the
/// events to append to its tape (numbered after the old head, gapless).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityChange {
    /// The entity after the write.
    pub entity: Entity,
    /// The new events, in seq order.
    pub events: Vec<StoredEvent>,
}

impl EntityChange {
    /// The seqs appended.
    pub fn seqs(&self) -> Vec<Seq> {
        self.events.iter().map(|e| e.seq).collect()
    }
}
