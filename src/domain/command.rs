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

/// Longest page token accepted (base64 of the last id, key or kind of a page).
const MAX_PAGE_TOKEN: usize = 2048;

/// An opaque list cursor: the last id (key, kind) of the previous page, which the next
/// page starts strictly after. Only ever bound as a query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken(String);

impl PageToken {
    /// The token of a page that ended at `last`.
    pub fn after(last: &str) -> Self {
        Self(last.to_string())
    }

    /// Parses a token from a previous response.
    pub fn parse(field: &str, s: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::invalid(field, "is not a token from a previous response");
        if s.len() > MAX_PAGE_TOKEN {
            return Err(bad());
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let last = String::from_utf8(raw).map_err(|_| bad())?;
        if last.is_empty() || last.contains('\0') {
            return Err(bad());
        }
        Ok(Self(last))
    }

    /// The token as sent to clients.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// What the previous page ended at: the next starts strictly after it.
    pub fn last(&self) -> &str {
        &self.0
    }
}

/// DeleteEntity: an operator removes an entity and its tape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteEntity {
    /// Namespace.
    pub ns: Namespace,
    /// Entity.
    pub id: EntityId,
    /// Delete even when it is not in a terminal state.
    pub force: bool,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// ForceReleaseLease: an operator ends a live lease; its token is fenced out from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceReleaseLease {
    /// Namespace.
    pub ns: Namespace,
    /// Key.
    pub key: LeaseKey,
    /// Who did it (recorded in the server's log).
    pub by: Holder,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// ListLeases: one page of live leases, ordered by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListLeases {
    /// Namespace.
    pub ns: Namespace,
    /// Keys starting with this (all when empty).
    pub prefix: String,
    /// Page size, 1 to [`MAX_PAGE`].
    pub limit: u32,
    /// Where the previous page ended.
    pub after: Option<PageToken>,
}

/// ListMachines: one page of a namespace's machines, ordered by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListMachines {
    /// Namespace.
    pub ns: Namespace,
    /// Page size, 1 to [`MAX_PAGE`].
    pub limit: u32,
    /// Where the previous page ended.
    pub after: Option<PageToken>,
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
        let token = PageToken::after("run:42");
        assert_eq!(
            PageToken::parse("page_token", &token.encode()).unwrap().last(),
            "run:42"
        );
        let long = "A".repeat(4096);
        for bad in ["%%%", "bm90IGFuIGlk/w", "_w", "", long.as_str()] {
            let err = PageToken::parse("page_token", bad).unwrap_err();
            assert!(err.to_string().starts_with("page_token:"), "{bad}: {err}");
        }
        assert_eq!(ListEntities::parse_limit("page_size", 0), Ok(DEFAULT_PAGE));
        assert!(ListEntities::parse_limit("page_size", MAX_PAGE + 1).is_err());
    }
}
