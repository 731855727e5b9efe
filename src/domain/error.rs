//! Rule violations. Each variant carries the context a client needs to act without
//! re-reading (current state, version, token ...).

use super::entity::Version;
use super::tape::Seq;
use std::borrow::Cow;

/// A request broke a rule of baton's contract. Serializable: a refusal decided for a call
/// with a request id is stored as that call's outcome (I10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum DomainError {
    /// Bad input; `field` names the request field (dotted path) at fault.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },

    /// The transition is not allowed from the entity's current state (or its guard fails).
    #[error("transition {transition:?} is not allowed from state {current_state:?} (version {version}){detail}")]
    InvalidTransition {
        transition: String,
        current_state: String,
        version: Version,
        allowed_from: Vec<String>,
        /// Extra words for humans, e.g. why a staleness guard failed.
        detail: String,
    },

    /// `expect_version` did not match.
    #[error("expected version {expected}, entity is at version {version} (state {current_state:?})")]
    VersionMismatch {
        expected: Version,
        version: Version,
        current_state: String,
    },

    /// A fence did not match the key's current unexpired lease.
    #[error("lease {key:?} token {token} is not the current lease{}", current_desc(.current_token, .current_holder))]
    LeaseLost {
        key: String,
        token: u64,
        current_token: Option<u64>,
        current_holder: Option<String>,
    },

    /// The tape holds `final`; nothing more is stored.
    #[error("tape is sealed at final seq {final_seq}")]
    TapeSealed { final_seq: Seq },

    /// A field is not allowed in the state the entity is or would be in.
    #[error("field {field:?} is not allowed in state {state:?} (allowed in {allowed_in:?})")]
    FieldNotAllowed {
        field: String,
        state: String,
        allowed_in: Vec<String>,
    },

    /// Something named does not exist.
    #[error("{what} {name:?} not found")]
    NotFound { what: Cow<'static, str>, name: String },

    /// An entity id is already taken.
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: Cow<'static, str>, name: String },

    /// The entity is not finished (DeleteEntity without `force`).
    #[error(
        "entity {id:?} is in state {current_state:?} (version {version}), not a terminal state: finish it first, or delete with force"
    )]
    EntityActive {
        id: String,
        current_state: String,
        version: Version,
    },

    /// A machine redefinition would orphan entities in a removed state.
    #[error("state {state:?} of kind {kind:?} is still used by existing entities")]
    StateInUse { kind: String, state: String },

    /// A request id was reused for a different call.
    #[error("request_id {request_id:?} was already used for a different call ({method})")]
    RequestIdReused { request_id: String, method: String },

    /// A tape cursor points before the retained events.
    #[error("after_seq is before the earliest retained event {earliest_seq}")]
    OutOfRange { earliest_seq: Seq },
}

fn current_desc(token: &Option<u64>, holder: &Option<String>) -> String {
    match (token, holder) {
        (Some(t), Some(h)) => format!(" (current token {t} held by {h:?})"),
        (Some(t), None) => format!(" (last token {t}, no live lease)"),
        _ => " (no lease was ever granted)".to_string(),
    }
}

/// Longest prefix of a request value an error quotes, in bytes.
pub const QUOTE_MAX: usize = 64;

/// A request value as an error message quotes it: Debug-quoted, cut (on a character
/// boundary) to at most [`QUOTE_MAX`] bytes and then marked with the value's full length, so
/// a hostile 64 KB value makes a short message and short trailers, never a copy of itself.
pub fn quote(s: &str) -> String {
    if s.len() <= QUOTE_MAX {
        return format!("{s:?}");
    }
    format!("{:?}…({} bytes)", &s[..s.floor_char_boundary(QUOTE_MAX)], s.len())
}

impl DomainError {
    /// Shorthand for [`DomainError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_short_and_cut_on_a_character_boundary() {
        assert_eq!(quote("run-1"), "\"run-1\"");
        let long = format!("{}é{}", "a".repeat(QUOTE_MAX - 1), "b".repeat(65_536));
        let q = quote(&long);
        assert_eq!(q, format!("\"{}\"…({} bytes)", "a".repeat(QUOTE_MAX - 1), long.len()));
        assert!(q.len() < 2 * QUOTE_MAX);
    }
}
