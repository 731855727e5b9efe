//! A machine spec as written: the declared rules of a kind, before validation. The same
//! shape travels over the API, sits in the CLI's machine files and is stored (as JSON).

use std::time::Duration;

/// The declared rules of a kind, as written in a TOML file, sent over the API, and stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
