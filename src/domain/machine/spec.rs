//! A machine spec as written: the declared rules of a kind, before validation. The same
//! shape travels over the API, sits in the CLI's machine files and is stored (as JSON).

use std::time::Duration;

/// The declared rules of a kind, as written in a TOML file, sent over the API, and stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// Kind governed.
    pub kind: String,
    /// Every state.
    pub states: Vec<String>,
    /// State new entities start in.
    pub initial_state: String,
    /// States that end an entity's life and seal its tape.
    pub terminal_states: Vec<String>,
    /// Named transitions.
    #[serde(default, rename = "transition")]
    pub transitions: Vec<TransitionSpec>,
    /// Field rules.
    #[serde(default, rename = "field_rule")]
    pub field_rules: Vec<FieldRule>,
    /// State timeouts: the transition the server runs when an entity has been in a state
    /// (or idle in it) too long.
    #[serde(default, rename = "timeout", skip_serializing_if = "Vec::is_empty")]
    pub timeouts: Vec<TimeoutSpec>,
    /// How long a finished entity (and its tape) is kept after `final`; forever when unset.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub retain_after_final: Option<Duration>,
    /// Whether a dedup key stays taken after its entity finished.
    #[serde(default, skip_serializing_if = "DedupPolicy::is_forever")]
    pub dedup: DedupPolicy,
}

/// A state timeout: an entity in `state` for `after` (measured from when it entered the
/// state, or with `idle` from its last activity) is moved by `transition`, once, by the
/// server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    /// The state that times out (not terminal).
    pub state: String,
    /// How long, e.g. "1h", "3days".
    #[serde(with = "duration")]
    pub after: Duration,
    /// Measure from the last activity (transition or append) instead of entering the state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
    /// The transition that fires; it must be allowed from `state`.
    pub transition: String,
}

/// When a dedup key is free again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupPolicy {
    /// Never: one entity per (kind, dedup key), ever ("one review per commit").
    #[default]
    Forever,
    /// Once its entity is in a terminal state, the next create makes a new entity and the
    /// finished one gives the key up.
    WhileActive,
}

impl DedupPolicy {
    fn is_forever(&self) -> bool {
        *self == DedupPolicy::Forever
    }
}

/// One named transition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionSpec {
    /// Name, unique in the machine.
    pub name: String,
    /// States it is allowed from.
    #[serde(default)]
    pub from: Vec<String>,
    /// Target state.
    pub to: String,
    /// States it is allowed from only when stale for `stale_after`.
    #[serde(default)]
    pub stale_from: Vec<String>,
    /// Staleness threshold, e.g. "72h".
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Duration>,
    /// States where it is an idempotent no-op.
    #[serde(default)]
    pub noop_from: Vec<String>,
}

/// A field restricted to some states.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// Field name.
    pub field: String,
    /// The states it may be present in.
    pub allowed_in: Vec<String>,
}

/// A required duration as a human string.
mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Durations as human strings ("72h", "3days 2h") in TOML and stored JSON.
mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
