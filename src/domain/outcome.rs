//! What each mutating call answers. An outcome is also what a request id replays (I10): it
//! is stored as JSON with the call's fingerprint, in the same transaction as the change.

use super::entity::Entity;
use super::lease::Lease;
use super::tape::Seq;
use super::time::Timestamp;

/// AcquireLease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcquireOutcome {
    /// True when the caller holds the lease.
    pub acquired: bool,
    /// The current lease (the caller's or the other holder's).
    pub lease: Lease,
    /// Store time of the decision (to time a wait for the holder's expiry).
    pub now: Timestamp,
}

/// CreateEntity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreateOutcome {
    /// True for the call that created it.
    pub created: bool,
    /// The entity.
    pub entity: Entity,
}

/// Transition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransitionOutcome {
    /// False in a declared no-op state.
    pub applied: bool,
    /// The entity after.
    pub entity: Entity,
    /// Seqs appended.
    pub seqs: Vec<Seq>,
}

/// AppendEvents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppendOutcome {
    /// Seqs assigned.
    pub seqs: Vec<Seq>,
    /// True when dropped on a sealed tape.
    pub dropped: bool,
    /// Seq of `final` when sealed.
    pub final_seq: Option<Seq>,
}

/// What the server did with an entity whose due time came.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DueOutcome {
    /// Nothing was due (the entity moved first, or is gone).
    Nothing,
    /// Not due yet: it will be looked at again then.
    Later(Timestamp),
    /// Its state timed out: this transition applied.
    Fired {
        /// The timeout's transition.
        transition: String,
        /// The state it timed out in.
        from: String,
        /// The seqs appended.
        seqs: Vec<Seq>,
    },
    /// Finished past its retention: it and its tape were deleted.
    Purged,
    /// Its timeout's transition was refused (a bug: a valid machine never refuses it); it
    /// is tried again at `retry_at`.
    Refused {
        /// The refusal.
        why: String,
        /// When it is looked at again.
        retry_at: Timestamp,
    },
}

/// GetLease's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The live lease, if any.
    pub lease: Option<Lease>,
    /// Highest token ever granted (0 when never leased).
    pub last_token: u64,
}

/// The outcome of any command of a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// AcquireLease.
    Acquire(AcquireOutcome),
    /// RenewLease: the lease, renewed.
    Renew(Lease),
    /// ReleaseLease: true when this call ended the live lease.
    Release(bool),
    /// CreateEntity.
    Create(CreateOutcome),
    /// Transition.
    Transition(TransitionOutcome),
    /// AppendEvents.
    Append(AppendOutcome),
    /// A due entity looked at (the housekeeper's).
    Due(DueOutcome),
    /// DeleteEntity: true when this call deleted it.
    Delete(bool),
    /// ForceReleaseLease: the live lease it ended, if there was one.
    ForceRelease(Option<Lease>),
}

impl Outcome {
    /// The outcome as a request id stores it.
    pub fn to_json(&self) -> String {
        let json = match self {
            Outcome::Acquire(o) => serde_json::to_string(o),
            Outcome::Renew(o) => serde_json::to_string(o),
            Outcome::Release(o) => serde_json::to_string(o),
            Outcome::Create(o) => serde_json::to_string(o),
            Outcome::Transition(o) => serde_json::to_string(o),
            Outcome::Append(o) => serde_json::to_string(o),
            Outcome::Due(o) => serde_json::to_string(o),
            Outcome::Delete(o) => serde_json::to_string(o),
            Outcome::ForceRelease(o) => serde_json::to_string(o),
        };
        // Plain data: it always serializes.
        json.unwrap_or_default()
    }
}
