//! What each RPC asks for, parsed: the inputs of the service layer. Every field is a
//! validated domain value, so a command that exists is well-formed; the gRPC layer builds
//! them from protobuf (`grpc::parse`), tests and embedders from domain values.

use super::DomainError;
use super::entity::Fields;
use super::lease::{Fence, FencingToken, Ttl};
use super::machine::{Machine, TransitionAsk};
use super::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace, RequestId};
use super::tape::{EventInput, IfSealed, Seq};
use base64::Engine;
use std::time::Duration;

/// AcquireLease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireLease {
    /// Namespace.
    pub ns: Namespace,
    /// Key.
    pub key: LeaseKey,
    /// Holder.
    pub holder: Holder,
    /// TTL.
    pub ttl: Ttl,
    /// How long to wait for a held key (already bounded by the caller's deadline).
    pub wait: Duration,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// RenewLease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewLease {
    /// Namespace.
    pub ns: Namespace,
    /// Key.
    pub key: LeaseKey,
    /// The token held.
    pub token: FencingToken,
    /// The new TTL, from now.
    pub ttl: Ttl,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// ReleaseLease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseLease {
    /// Namespace.
    pub ns: Namespace,
    /// Key.
    pub key: LeaseKey,
    /// The token held.
    pub token: FencingToken,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// GetLease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetLease {
    /// Namespace.
    pub ns: Namespace,
    /// Key.
    pub key: LeaseKey,
}

/// DefineMachine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefineMachine {
    /// Namespace.
    pub ns: Namespace,
    /// The validated machine.
    pub machine: Machine,
}

/// GetMachine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetMachine {
    /// Namespace.
    pub ns: Namespace,
    /// Kind.
    pub kind: Name,
}

/// CreateEntity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEntity {
    /// Namespace.
    pub ns: Namespace,
    /// Kind.
    pub kind: Name,
    /// Caller-chosen id (server-generated when absent).
    pub id: Option<EntityId>,
    /// Dedup key: at most one entity per (namespace, kind, dedup key) (I9).
    pub dedup_key: Option<DedupKey>,
    /// Initial fields.
    pub fields: Fields,
    /// Fence.
    pub fence: Option<Fence>,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// GetEntity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetEntity {
    /// Namespace.
    pub ns: Namespace,
    /// Entity.
    pub id: EntityId,
}

/// Default ListEntities page size.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest ListEntities page size.
pub const MAX_PAGE: u32 = 1000;

/// ListEntities: one page of a kind's entities, ordered by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntities {
    /// Namespace.
    pub ns: Namespace,
    /// Kind.
    pub kind: Name,
    /// Any of these states (all when empty).
    pub states: Vec<Name>,
    /// Fields that must be present.
    pub has_fields: Vec<Name>,
    /// Fields that must be absent.
    pub missing_fields: Vec<Name>,
    /// Page size, 1 to [`MAX_PAGE`].
    pub limit: u32,
    /// Where the previous page ended.
    pub after: Option<PageToken>,
}

impl ListEntities {
    /// Parses a page size (0 means the default).
    pub fn parse_limit(field: &str, n: u32) -> Result<u32, DomainError> {
        match n {
            0 => Ok(DEFAULT_PAGE),
            n if n > MAX_PAGE => Err(DomainError::invalid(field, format!("must be at most {MAX_PAGE}"))),
            n => Ok(n),
        }
    }
}

/// An opaque ListEntities cursor: the last id of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken(EntityId);

impl PageToken {
    /// The token of a page that ended at `last`.
    pub fn after(last: &EntityId) -> Self {
        Self(last.clone())
    }

    /// Parses a token from a previous response.
    pub fn parse(field: &str, s: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::invalid(field, "is not a token from a previous ListEntities response");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let id = String::from_utf8(raw).map_err(|_| bad())?;
        EntityId::parse(field, id).map(Self).map_err(|_| bad())
    }

    /// The token as sent to clients.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_str())
    }

    /// Entities strictly after this id come next.
    pub fn last_id(&self) -> &EntityId {
        &self.0
    }
}

/// Transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Namespace.
    pub ns: Namespace,
    /// Entity.
    pub entity_id: EntityId,
    /// Name, expected version, fields, events.
    pub ask: TransitionAsk,
    /// Fence.
    pub fence: Option<Fence>,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// AppendEvents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendEvents {
    /// Namespace.
    pub ns: Namespace,
    /// Entity.
    pub entity_id: EntityId,
    /// Events, 1 to [`crate::domain::tape::MAX_EVENTS`].
    pub events: Vec<EventInput>,
    /// Fence.
    pub fence: Option<Fence>,
    /// Sealed-tape policy.
    pub if_sealed: IfSealed,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// StreamEvents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvents {
    /// Namespace.
    pub ns: Namespace,
    /// Entity.
    pub entity_id: EntityId,
    /// Deliver events after this seq.
    pub after: Seq,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        let id = EntityId::parse("id", "run:42".into()).unwrap();
        let token = PageToken::after(&id);
        assert_eq!(PageToken::parse("page_token", &token.encode()).unwrap().last_id(), &id);
        for bad in ["%%%", "bm90IGFuIGlk/w", "YS9i"] {
            let err = PageToken::parse("page_token", bad).unwrap_err();
            assert!(err.to_string().starts_with("page_token:"), "{bad}: {err}");
        }
        assert_eq!(ListEntities::parse_limit("page_size", 0), Ok(DEFAULT_PAGE));
        assert!(ListEntities::parse_limit("page_size", MAX_PAGE + 1).is_err());
    }
}
