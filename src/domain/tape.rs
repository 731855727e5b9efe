//! The event tape (I6, I7): numbering, limits, and what happens on a sealed tape.

use super::DomainError;
use super::entity::{Entity, EntityChange};
use super::error::quote;
use super::time::Timestamp;

/// A position on a tape: events are 1, 2, 3 … with no gaps (I6); 0 is "before the first
/// event" (an empty tape's head, a stream's starting cursor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Seq(u64);

impl Seq {
    /// Before the first event.
    pub const ZERO: Seq = Seq(0);

    /// Parses a seq (stored as a signed 64-bit integer).
    pub fn parse(field: &str, v: u64) -> Result<Self, DomainError> {
        if v > i64::MAX as u64 {
            return Err(DomainError::invalid(field, "is out of range"));
        }
        Ok(Self(v))
    }

    /// The next position.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

counter!(Seq, "seq");

/// Type of the one event that seals a tape.
pub const FINAL: &str = "final";
/// Type of the event every applied transition appends.
pub const TRANSITION: &str = "baton.transition";
/// Largest payload of one event, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest payload of one AppendEvents call, in bytes.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most events in one call.
pub const MAX_EVENTS: usize = 100;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE: usize = 128;

/// An event a client asked to append, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInput {
    /// Type: `[a-z][a-z0-9_.-]{0,63}`, not reserved.
    pub event_type: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Content type, possibly empty.
    pub content_type: String,
}

impl EventInput {
    /// Parses one client event; `field` is e.g. `events[3]`.
    pub fn parse(field: &str, event_type: String, payload: Vec<u8>, content_type: String) -> Result<Self, DomainError> {
        let b = event_type.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'));
        if !ok {
            return Err(DomainError::invalid(
                format!("{field}.type"),
                format!("{} must match [a-z][a-z0-9_.-]{{0,63}}", quote(&event_type)),
            ));
        }
        if event_type == FINAL || event_type.starts_with("baton.") {
            return Err(DomainError::invalid(
                format!("{field}.type"),
                format!("{} is reserved for the server", quote(&event_type)),
            ));
        }
        check_payload(&format!("{field}.payload"), &payload)?;
        check_content_type(&format!("{field}.content_type"), &content_type)?;
        Ok(Self {
            event_type,
            payload,
            content_type,
        })
    }
}

/// Checks a payload's size.
pub fn check_payload(field: &str, payload: &[u8]) -> Result<(), DomainError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_PAYLOAD} bytes, got {}", payload.len()),
        ));
    }
    Ok(())
}

/// Checks a content type.
pub fn check_content_type(field: &str, ct: &str) -> Result<(), DomainError> {
    if ct.len() > MAX_CONTENT_TYPE || ct.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_CONTENT_TYPE} bytes with no control characters"),
        ));
    }
    Ok(())
}

/// Parses a batch of client events: count and total size limits.
pub fn parse_batch(
    field: &str,
    raw: Vec<(String, Vec<u8>, String)>,
    min: usize,
) -> Result<Vec<EventInput>, DomainError> {
    if raw.len() < min || raw.len() > MAX_EVENTS {
        return Err(DomainError::invalid(
            field,
            format!("must hold {min} to {MAX_EVENTS} events, got {}", raw.len()),
        ));
    }
    let total: usize = raw.iter().map(|(_, p, _)| p.len()).sum();
    if total > MAX_BATCH_BYTES {
        return Err(DomainError::invalid(
            field,
            format!("payloads must total at most {MAX_BATCH_BYTES} bytes, got {total}"),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, (t, p, c))| EventInput::parse(&format!("{field}[{i}]"), t, p, c))
        .collect()
}

/// What AppendEvents does on a sealed tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IfSealed {
    /// `TAPE_SEALED`.
    #[default]
    Reject,
    /// OK, nothing stored.
    Drop,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredEvent {
    /// Position, 1-based and gapless.
    pub seq: Seq,
    /// Type.
    pub event_type: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Content type.
    pub content_type: String,
    /// State after the event, for `baton.transition` and `final`.
    pub state: Option<String>,
    /// Commit time.
    pub created_at: Timestamp,
}

impl StoredEvent {
    /// True for the sealing event.
    pub fn is_final(&self) -> bool {
        self.event_type == FINAL
    }
}

/// What AppendEvents does, as the domain decided it.
// Made and consumed once per command: boxing the common variant would cost more than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendPlan {
    /// Store these events and move the head (and `last_activity_at`).
    Append(EntityChange),
    /// The tape is sealed and the caller asked to drop: nothing is stored.
    Dropped {
        /// Seq of the tape's `final`.
        final_seq: Seq,
    },
}

/// Decides an append onto `entity`'s tape: numbered events after the head, or the sealed
/// outcome (I7: nothing is ever stored after `final`).
pub fn plan_append(
    entity: &Entity,
    inputs: &[EventInput],
    if_sealed: IfSealed,
    now: Timestamp,
) -> Result<AppendPlan, DomainError> {
    if let Some(final_seq) = entity.final_seq {
        return match if_sealed {
            IfSealed::Reject => Err(DomainError::TapeSealed { final_seq }),
            IfSealed::Drop => Ok(AppendPlan::Dropped { final_seq }),
        };
    }
    let events = number(
        entity.last_seq,
        inputs.iter().map(|e| NewEvent {
            event_type: e.event_type.clone(),
            payload: e.payload.clone(),
            content_type: e.content_type.clone(),
            state: None,
        }),
        now,
    );
    let entity = Entity {
        last_seq: events.last().map_or(entity.last_seq, |e| e.seq),
        last_activity_at: now,
        ..entity.clone()
    };
    Ok(AppendPlan::Append(EntityChange { entity, events }))
}

/// An event about to be numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    pub event_type: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub state: Option<String>,
}

/// Numbers events after `last_seq` (I6: gapless).
pub(crate) fn number(last_seq: Seq, events: impl IntoIterator<Item = NewEvent>, now: Timestamp) -> Vec<StoredEvent> {
    let mut seq = last_seq;
    events
        .into_iter()
        .map(|e| {
            seq = seq.next();
            StoredEvent {
                seq,
                event_type: e.event_type,
                payload: e.payload,
                content_type: e.content_type,
                state: e.state,
                created_at: now,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::entity::{Fields, Version};
    use crate::domain::names::{EntityId, Name};

    fn entity(last_seq: u64, final_seq: Option<u64>) -> Entity {
        Entity {
            id: EntityId::parse("id", "e".into()).unwrap(),
            kind: Name::parse("kind", "task".into()).unwrap(),
            state: "running".into(),
            version: Version::FIRST,
            fields: Fields::new(),
            dedup_key: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            last_activity_at: Timestamp(0),
            last_seq: Seq(last_seq),
            final_seq: final_seq.map(Seq),
            due_at: None,
        }
    }

    #[test]
    fn i7_sealed_tape_rejects_or_drops() {
        let ev = vec![EventInput::parse("e", "progress".into(), vec![1], String::new()).unwrap()];
        let sealed = entity(5, Some(5));
        assert_eq!(
            plan_append(&sealed, &ev, IfSealed::Reject, Timestamp(0)),
            Err(DomainError::TapeSealed { final_seq: Seq(5) })
        );
        assert_eq!(
            plan_append(&sealed, &ev, IfSealed::Drop, Timestamp(0)),
            Ok(AppendPlan::Dropped { final_seq: Seq(5) })
        );
        let Ok(AppendPlan::Append(change)) = plan_append(&entity(5, None), &ev, IfSealed::Reject, Timestamp(9)) else {
            panic!("an open tape takes the events")
        };
        assert_eq!(change.seqs(), [Seq(6)]);
        assert_eq!(
            (change.entity.last_seq, change.entity.last_activity_at),
            (Seq(6), Timestamp(9))
        );
    }

    #[test]
    fn reserved_and_oversized_events_are_refused() {
        assert!(EventInput::parse("events[0]", "final".into(), vec![], String::new()).is_err());
        assert!(EventInput::parse("events[0]", "baton.x".into(), vec![], String::new()).is_err());
        let err = EventInput::parse("events[0]", "p".into(), vec![0; MAX_PAYLOAD + 1], String::new()).unwrap_err();
        assert!(err.to_string().starts_with("events[0].payload"));
        assert!(parse_batch("events", vec![], 1).is_err());
    }
}
