//! State machines: validation of specs, and the one function that decides a transition
//! (I4, I5). Both backends call [`plan_transition`] inside their write transaction, so the
//! "may this run be resumed?" predicate exists exactly once.

use super::DomainError;
use super::entity::{Fields, MAX_FIELDS};
use super::names::Name;
use super::time::Timestamp;
use std::collections::BTreeSet;
use std::time::Duration;

/// Shortest accepted `stale_after`.
pub const MIN_STALE_AFTER: Duration = Duration::from_secs(1);
/// Longest accepted `stale_after`.
pub const MAX_STALE_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);
/// Most states (and most transitions) in a machine.
pub const MAX_STATES: usize = 64;

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

/// A validated machine. Only [`Machine::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    spec: MachineSpec,
}

impl Machine {
    /// Validates a spec; errors name the offending field as `spec.transitions[2].from[0]`.
    pub fn parse(spec: MachineSpec) -> Result<Self, DomainError> {
        Name::parse("spec.kind", spec.kind.clone())?;
        if spec.states.len() < 2 || spec.states.len() > MAX_STATES {
            return Err(DomainError::invalid(
                "spec.states",
                format!("must list 2 to {MAX_STATES} states"),
            ));
        }
        let mut states = BTreeSet::new();
        for (i, s) in spec.states.iter().enumerate() {
            Name::parse(&format!("spec.states[{i}]"), s.clone())?;
            if !states.insert(s.as_str()) {
                return Err(DomainError::invalid(
                    format!("spec.states[{i}]"),
                    format!("state {s:?} is listed twice"),
                ));
            }
        }
        let known = |field: String, s: &str| -> Result<(), DomainError> {
            if states.contains(s) {
                Ok(())
            } else {
                Err(DomainError::invalid(field, format!("unknown state {s:?}")))
            }
        };
        known("spec.initial_state".into(), &spec.initial_state)?;
        if spec.terminal_states.is_empty() {
            return Err(DomainError::invalid(
                "spec.terminal_states",
                "must list at least one terminal state",
            ));
        }
        for (i, s) in spec.terminal_states.iter().enumerate() {
            known(format!("spec.terminal_states[{i}]"), s)?;
        }
        let terminal: BTreeSet<&str> = spec.terminal_states.iter().map(String::as_str).collect();
        if terminal.contains(spec.initial_state.as_str()) {
            return Err(DomainError::invalid(
                "spec.initial_state",
                format!("{:?} is terminal: an entity would start sealed", spec.initial_state),
            ));
        }
        if spec.transitions.is_empty() || spec.transitions.len() > MAX_STATES {
            return Err(DomainError::invalid(
                "spec.transitions",
                format!("must declare 1 to {MAX_STATES} transitions"),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, t) in spec.transitions.iter().enumerate() {
            let at = format!("spec.transitions[{i}]");
            Name::parse(&format!("{at}.name"), t.name.clone())?;
            if !names.insert(t.name.as_str()) {
                return Err(DomainError::invalid(
                    format!("{at}.name"),
                    format!("transition {:?} is declared twice", t.name),
                ));
            }
            known(format!("{at}.to"), &t.to)?;
            for (list, label) in [
                (&t.from, "from"),
                (&t.stale_from, "stale_from"),
                (&t.noop_from, "noop_from"),
            ] {
                let mut seen = BTreeSet::new();
                for (j, s) in list.iter().enumerate() {
                    known(format!("{at}.{label}[{j}]"), s)?;
                    if !seen.insert(s) {
                        return Err(DomainError::invalid(
                            format!("{at}.{label}[{j}]"),
                            format!("state {s:?} is listed twice"),
                        ));
                    }
                    if label != "noop_from" && terminal.contains(s.as_str()) {
                        return Err(DomainError::invalid(
                            format!("{at}.{label}[{j}]"),
                            format!(
                                "{s:?} is terminal: a sealed entity cannot move (list it in noop_from to make the transition a no-op there)"
                            ),
                        ));
                    }
                }
            }
            if t.from.is_empty() && t.stale_from.is_empty() {
                return Err(DomainError::invalid(
                    format!("{at}.from"),
                    "a transition needs at least one state in from or stale_from",
                ));
            }
            for s in &t.stale_from {
                if t.from.contains(s) {
                    return Err(DomainError::invalid(
                        format!("{at}.stale_from"),
                        format!("{s:?} is also in from"),
                    ));
                }
            }
            for s in &t.noop_from {
                if t.from.contains(s) || t.stale_from.contains(s) {
                    return Err(DomainError::invalid(
                        format!("{at}.noop_from"),
                        format!("{s:?} is also in from or stale_from"),
                    ));
                }
            }
            match (t.stale_from.is_empty(), t.stale_after) {
                (true, Some(_)) => {
                    return Err(DomainError::invalid(
                        format!("{at}.stale_after"),
                        "is set but stale_from is empty",
                    ));
                }
                (false, None) => {
                    return Err(DomainError::invalid(
                        format!("{at}.stale_after"),
                        "is required when stale_from is set",
                    ));
                }
                (false, Some(d)) if !(MIN_STALE_AFTER..=MAX_STALE_AFTER).contains(&d) => {
                    return Err(DomainError::invalid(
                        format!("{at}.stale_after"),
                        "must be between 1s and 365 days",
                    ));
                }
                _ => {}
            }
        }
        let mut fields = BTreeSet::new();
        if spec.field_rules.len() > MAX_FIELDS {
            return Err(DomainError::invalid(
                "spec.field_rules",
                format!("at most {MAX_FIELDS} rules"),
            ));
        }
        for (i, r) in spec.field_rules.iter().enumerate() {
            let at = format!("spec.field_rules[{i}]");
            Name::parse(&format!("{at}.field"), r.field.clone())?;
            if !fields.insert(r.field.as_str()) {
                return Err(DomainError::invalid(
                    format!("{at}.field"),
                    format!("field {:?} has two rules", r.field),
                ));
            }
            if r.allowed_in.is_empty() {
                return Err(DomainError::invalid(
                    format!("{at}.allowed_in"),
                    "must list at least one state",
                ));
            }
            for (j, s) in r.allowed_in.iter().enumerate() {
                known(format!("{at}.allowed_in[{j}]"), s)?;
            }
        }
        Ok(Self { spec })
    }

    /// The validated spec.
    pub fn spec(&self) -> &MachineSpec {
        &self.spec
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        &self.spec.kind
    }

    /// The initial state.
    pub fn initial_state(&self) -> &str {
        &self.spec.initial_state
    }

    /// True for terminal states.
    pub fn is_terminal(&self, state: &str) -> bool {
        self.spec.terminal_states.iter().any(|s| s == state)
    }

    /// True when `state` is declared.
    pub fn has_state(&self, state: &str) -> bool {
        self.spec.states.iter().any(|s| s == state)
    }

    /// The states a field may be present in, or `None` when unrestricted.
    pub fn allowed_in(&self, field: &str) -> Option<&[String]> {
        self.spec
            .field_rules
            .iter()
            .find(|r| r.field == field)
            .map(|r| r.allowed_in.as_slice())
    }

    /// True when `field` may be present in `state` (I5).
    pub fn field_allowed(&self, field: &str, state: &str) -> bool {
        self.allowed_in(field)
            .is_none_or(|states| states.iter().any(|s| s == state))
    }

    /// States of `self` that `next` no longer declares.
    pub fn removed_states<'a>(&'a self, next: &Machine) -> Vec<&'a str> {
        self.spec
            .states
            .iter()
            .filter(|s| !next.has_state(s))
            .map(String::as_str)
            .collect()
    }

    /// Checks a new entity's fields against the initial state's field rules.
    pub fn check_initial_fields(&self, fields: &Fields) -> Result<(), DomainError> {
        self.check_fields_allowed(fields, self.initial_state())
    }

    fn check_fields_allowed(&self, fields: &Fields, state: &str) -> Result<(), DomainError> {
        for name in fields.keys() {
            if !self.field_allowed(name, state) {
                return Err(DomainError::FieldNotAllowed {
                    field: name.clone(),
                    state: state.to_string(),
                    allowed_in: self.allowed_in(name).unwrap_or_default().to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// The part of an entity a transition decision reads.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    /// Current state.
    pub state: &'a str,
    /// Current version.
    pub version: u64,
    /// Current fields.
    pub fields: &'a Fields,
    /// Last activity, for staleness guards.
    pub last_activity_at: Timestamp,
}

/// What the caller asks of a transition, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionAsk {
    /// Transition name.
    pub name: Name,
    /// CAS precondition.
    pub expect_version: Option<u64>,
    /// Fields to set.
    pub set_fields: Fields,
    /// Fields to remove.
    pub clear_fields: Vec<Name>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A declared no-op state: nothing changes.
    Noop,
    /// Move to `to` with these fields.
    Apply {
        /// The state left.
        from: String,
        /// The state entered.
        to: String,
        /// Fields after the transition (restricted fields already cleared, I5).
        fields: Fields,
        /// True when `to` is terminal: the tape gets `final` in the same transaction.
        terminal: bool,
    },
}

/// Decides a transition (I4, I5). Order: unknown name, no-op state, version, allowed-from
/// (with staleness guard), field rules.
pub fn plan_transition(
    machine: &Machine,
    entity: &Snapshot<'_>,
    ask: &TransitionAsk,
    now: Timestamp,
) -> Result<Plan, DomainError> {
    let t = machine
        .spec
        .transitions
        .iter()
        .find(|t| t.name == ask.name.as_str())
        .ok_or_else(|| {
            DomainError::invalid(
                "transition",
                format!(
                    "kind {:?} declares no transition {:?}",
                    machine.kind(),
                    ask.name.as_str()
                ),
            )
        })?;
    if t.noop_from.iter().any(|s| s == entity.state) {
        return Ok(Plan::Noop);
    }
    if let Some(expected) = ask.expect_version
        && expected != entity.version
    {
        return Err(DomainError::VersionMismatch {
            expected,
            version: entity.version,
            current_state: entity.state.to_string(),
        });
    }
    let allowed_from = || t.from.iter().chain(&t.stale_from).cloned().collect::<Vec<_>>();
    let invalid = |detail: String| DomainError::InvalidTransition {
        transition: t.name.clone(),
        current_state: entity.state.to_string(),
        version: entity.version,
        allowed_from: allowed_from(),
        detail,
    };
    if !t.from.iter().any(|s| s == entity.state) {
        if !t.stale_from.iter().any(|s| s == entity.state) {
            return Err(invalid(String::new()));
        }
        let stale_after = t.stale_after.unwrap_or(MAX_STALE_AFTER);
        let idle = entity.last_activity_at.until(now);
        if idle < stale_after {
            return Err(invalid(format!(
                ": state {:?} is allowed only when idle for {}, idle for {}",
                entity.state,
                humantime::format_duration(stale_after),
                humantime::format_duration(Duration::from_secs(idle.as_secs()))
            )));
        }
    }
    let mut fields = entity.fields.clone();
    for name in &ask.clear_fields {
        fields.remove(name.as_str());
    }
    machine.check_fields_allowed(&ask.set_fields, &t.to)?;
    fields.extend(ask.set_fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    fields.retain(|name, _| machine.field_allowed(name, &t.to));
    if fields.len() > MAX_FIELDS {
        return Err(DomainError::invalid(
            "set_fields",
            format!("an entity holds at most {MAX_FIELDS} fields"),
        ));
    }
    Ok(Plan::Apply {
        from: entity.state.to_string(),
        to: t.to.clone(),
        fields,
        terminal: machine.is_terminal(&t.to),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn run_machine() -> Machine {
        let spec: MachineSpec = toml::from_str(
            r#"
            kind = "workflow_run"
            states = ["pending", "running", "paused", "failed", "completed", "cancelled"]
            initial_state = "pending"
            terminal_states = ["completed", "cancelled"]
            [[transition]]
            name = "start"
            from = ["pending"]
            to = "running"
            [[transition]]
            name = "resume"
            from = ["failed", "paused"]
            stale_from = ["running"]
            stale_after = "72h"
            to = "running"
            [[transition]]
            name = "cancel"
            from = ["pending", "running", "paused", "failed"]
            noop_from = ["completed", "cancelled"]
            to = "cancelled"
            [[transition]]
            name = "stop"
            from = ["running"]
            to = "paused"
            [[field_rule]]
            field = "worker"
            allowed_in = ["running"]
            "#,
        )
        .unwrap();
        Machine::parse(spec).unwrap()
    }

    fn ask(name: &str) -> TransitionAsk {
        TransitionAsk {
            name: Name::parse("t", name.into()).unwrap(),
            expect_version: None,
            set_fields: Fields::new(),
            clear_fields: vec![],
        }
    }

    fn snap<'a>(state: &'a str, fields: &'a Fields, idle: Duration) -> (Snapshot<'a>, Timestamp) {
        let now = Timestamp(1_000_000_000_000);
        (
            Snapshot {
                state,
                version: 3,
                fields,
                last_activity_at: Timestamp(now.0 - idle.as_micros() as i64),
            },
            now,
        )
    }

    #[test]
    fn resume_is_one_rule_with_a_staleness_guard() {
        let m = run_machine();
        let f = Fields::new();
        for state in ["failed", "paused"] {
            let (s, now) = snap(state, &f, Duration::ZERO);
            assert!(
                matches!(plan_transition(&m, &s, &ask("resume"), now), Ok(Plan::Apply { .. })),
                "{state}"
            );
        }
        let (fresh, now) = snap("running", &f, Duration::from_secs(60));
        let err = plan_transition(&m, &fresh, &ask("resume"), now).unwrap_err();
        assert!(
            matches!(err, DomainError::InvalidTransition { ref current_state, version: 3, .. } if current_state == "running")
        );
        let (stale, now) = snap("running", &f, Duration::from_secs(73 * 3600));
        assert!(matches!(
            plan_transition(&m, &stale, &ask("resume"), now),
            Ok(Plan::Apply { .. })
        ));
        let (done, now) = snap("completed", &f, Duration::ZERO);
        assert!(matches!(
            plan_transition(&m, &done, &ask("resume"), now),
            Err(DomainError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn cancel_on_finished_is_noop_even_with_stale_version() {
        let m = run_machine();
        let f = Fields::new();
        let (s, now) = snap("completed", &f, Duration::ZERO);
        let a = TransitionAsk {
            expect_version: Some(99),
            ..ask("cancel")
        };
        assert_eq!(plan_transition(&m, &s, &a, now), Ok(Plan::Noop));
    }

    #[test]
    fn i5_restricted_fields_are_cleared_and_refused() {
        let m = run_machine();
        let mut f = Fields::new();
        f.insert("worker".into(), "w1".into());
        f.insert("note".into(), "kept".into());
        let (s, now) = snap("running", &f, Duration::ZERO);
        let Ok(Plan::Apply { fields, .. }) = plan_transition(&m, &s, &ask("stop"), now) else {
            panic!()
        };
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["note"]);
        let mut a = ask("stop");
        a.set_fields.insert("worker".into(), "w2".into());
        assert!(matches!(
            plan_transition(&m, &s, &a, now),
            Err(DomainError::FieldNotAllowed { .. })
        ));
    }

    #[test]
    fn version_mismatch_reports_current_state() {
        let m = run_machine();
        let f = Fields::new();
        let (s, now) = snap("pending", &f, Duration::ZERO);
        let a = TransitionAsk {
            expect_version: Some(2),
            ..ask("start")
        };
        assert_eq!(
            plan_transition(&m, &s, &a, now),
            Err(DomainError::VersionMismatch {
                expected: 2,
                version: 3,
                current_state: "pending".into()
            })
        );
    }

    #[test]
    fn invalid_specs_name_the_rule() {
        let base = run_machine().spec().clone();
        type Mutation = Box<dyn Fn(&mut MachineSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.terminal_states.clear()), "spec.terminal_states"),
            (Box::new(|s| s.initial_state = "completed".into()), "spec.initial_state"),
            (
                Box::new(|s| s.transitions[0].from = vec!["nowhere".into()]),
                "spec.transitions[0].from[0]",
            ),
            (
                Box::new(|s| s.transitions[0].to = "nowhere".into()),
                "spec.transitions[0].to",
            ),
            (
                Box::new(|s| s.transitions[1].stale_after = None),
                "spec.transitions[1].stale_after",
            ),
            (
                Box::new(|s| s.transitions[3].from = vec!["completed".into()]),
                "spec.transitions[3].from[0]",
            ),
            (
                Box::new(|s| s.field_rules[0].allowed_in = vec!["x".into()]),
                "spec.field_rules[0].allowed_in[0]",
            ),
            (Box::new(|s| s.states.push("running".into())), "spec.states[6]"),
        ];
        for (mutate, field) in cases {
            let mut spec = base.clone();
            mutate(&mut spec);
            match Machine::parse(spec) {
                Err(DomainError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod properties {
    //! Random machines, random transition sequences: field rules always hold (I5) and the
    //! version always equals applied transitions + 1.
    use super::*;
    use proptest::prelude::*;

    fn machine_strategy() -> impl Strategy<Value = Machine> {
        (3usize..8, 1usize..3)
            .prop_flat_map(|(n, n_term)| {
                let states: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
                let trans = proptest::collection::vec(
                    (
                        proptest::collection::vec(0..n - n_term, 1..4),
                        0..n,
                        proptest::collection::vec(n - n_term..n, 0..2),
                    ),
                    1..8,
                );
                let rules = proptest::collection::vec(proptest::collection::vec(0..n, 1..4), 0..3);
                (Just(states), Just(n_term), trans, rules)
            })
            .prop_map(|(states, n_term, trans, rules)| {
                let n = states.len();
                let dedup = |v: Vec<usize>| -> Vec<String> {
                    let set: BTreeSet<usize> = v.into_iter().collect();
                    set.into_iter().map(|i| format!("s{i}")).collect()
                };
                let spec = MachineSpec {
                    kind: "k".into(),
                    states: states.clone(),
                    initial_state: "s0".into(),
                    terminal_states: (n - n_term..n).map(|i| format!("s{i}")).collect(),
                    transitions: trans
                        .into_iter()
                        .enumerate()
                        .map(|(i, (from, to, noop))| TransitionSpec {
                            name: format!("t{i}"),
                            from: dedup(from),
                            to: format!("s{to}"),
                            stale_from: vec![],
                            stale_after: None,
                            noop_from: dedup(noop),
                        })
                        .collect(),
                    field_rules: rules
                        .into_iter()
                        .enumerate()
                        .map(|(i, allowed)| FieldRule {
                            field: format!("f{i}"),
                            allowed_in: dedup(allowed),
                        })
                        .collect(),
                };
                Machine::parse(spec).expect("generated spec is valid")
            })
    }

    proptest! {
        #[test]
        fn field_rules_hold_and_version_counts_applied(
            m in machine_strategy(),
            steps in proptest::collection::vec((0usize..8, proptest::collection::vec(0usize..3, 0..3)), 1..40),
        ) {
            let mut state = m.initial_state().to_string();
            let mut fields = Fields::new();
            let mut version = 1u64;
            let mut applied = 0u64;
            let n_trans = m.spec().transitions.len();
            for (t, set) in steps {
                let name = format!("t{}", t % n_trans);
                let ask = TransitionAsk {
                    name: Name::parse("t", name).unwrap(),
                    expect_version: None,
                    set_fields: set.iter().map(|i| (format!("f{i}"), "v".to_string())).collect(),
                    clear_fields: vec![],
                };
                let snap = Snapshot { state: &state, version, fields: &fields, last_activity_at: Timestamp(0) };
                if let Ok(Plan::Apply { to, fields: next, .. }) = plan_transition(&m, &snap, &ask, Timestamp(0)) {
                    state = to;
                    fields = next;
                    version += 1;
                    applied += 1;
                }
                for name in fields.keys() {
                    prop_assert!(m.field_allowed(name, &state), "{name} present in {state}");
                }
                prop_assert_eq!(version, applied + 1);
            }
        }
    }
}

/// Parses a machines file: `[[machine]]` tables, each with `[[machine.transition]]` and
/// `[[machine.field_rule]]` (see `examples/machines.toml`). Validation happens server-side.
pub fn parse_machines_toml(text: &str) -> Result<Vec<MachineSpec>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        machine: Vec<MachineSpec>,
    }
    toml::from_str::<File>(text)
        .map(|f| f.machine)
        .map_err(|e| e.to_string())
}
