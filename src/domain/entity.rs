//! Entities and their string fields.

use super::DomainError;
use super::names::{DedupKey, EntityId, Name};
use super::time::Timestamp;
use std::collections::{BTreeMap, HashMap};

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
    pub version: u64,
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
    pub last_seq: u64,
    /// Seq of `final` once sealed.
    pub final_seq: Option<u64>,
}
