//! State machines: the spec as written ([`spec`]), its validation into a [`Machine`]
//! ([`validate`]), and the decisions a write makes with one ([`plan`]).

pub mod plan;
pub mod spec;
pub mod validate;

pub use plan::{DuePlan, FinalEvent, TransitionAsk, TransitionPlan, plan_create, plan_due, plan_transition};
pub use spec::{DedupPolicy, FieldRule, MachineSpec, TimeoutSpec, TransitionSpec};
pub use validate::{MAX_STALE_AFTER, MAX_STATES, MIN_STALE_AFTER, Machine};

use super::time::Timestamp;
use std::sync::Arc;

/// A machine as stored: the validated rules and which definition of the kind they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMachine {
    /// The validated rules.
    pub machine: Arc<Machine>,
    /// 1, 2, 3 ... per redefinition.
    pub version: u64,
    /// When this version was stored.
    pub defined_at: Timestamp,
}
