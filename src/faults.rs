//! Deliberate faults, for the fault-injection suite and its canary only. Every field is off
//! unless code sets it through [`crate::app::Application::build_with`]: no flag, config file
//! or environment variable reaches them, so a production server cannot be started with one.

use std::time::Duration;

/// The faults a test may inject into an in-process server.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Pause this long after a transaction committed, before its announcement and its
    /// caller's answer (a slow path back): a caller whose deadline falls inside goes away.
    pub pause_after_commit: Option<Duration>,
    /// Canary: every fence passes unchecked (breaks I3). The fault suite must report it.
    pub skip_fence_check: bool,
}
