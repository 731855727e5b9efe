//! Validation of specs: [`Machine::parse`] turns a [`MachineSpec`] into a [`Machine`], or
//! names the rule it breaks (`spec.transitions[2].from[0]`).

use super::spec::{DedupPolicy, MachineSpec, TimeoutSpec, TransitionSpec};
use crate::domain::DomainError;
use crate::domain::entity::{Entity, Fields, MAX_FIELDS};
use crate::domain::error::quote;
use crate::domain::names::Name;
use crate::domain::time::Timestamp;
use std::collections::BTreeSet;
use std::time::Duration;

/// Shortest accepted `stale_after`.
pub const MIN_STALE_AFTER: Duration = Duration::from_secs(1);
/// Longest accepted `stale_after`.
pub const MAX_STALE_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);
/// Shortest state timeout and retention.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest state timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest `retain_after_final`.
pub const MAX_RETAIN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Most states (and most transitions) in a machine.
pub const MAX_STATES: usize = 64;

/// A validated machine. Only [`Machine::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    spec: MachineSpec,
    kind: Name,
}

impl Machine {
    /// Validates a spec; errors name the offending field as `spec.transitions[2].from[0]`.
    pub fn parse(spec: MachineSpec) -> Result<Self, DomainError> {
        let kind = Name::parse("spec.kind", spec.kind.clone())?;
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
                    format!("state {} is listed twice", quote(s)),
                ));
            }
        }
        let known = |field: String, s: &str| -> Result<(), DomainError> {
            if states.contains(s) {
                Ok(())
            } else {
                Err(DomainError::invalid(field, format!("unknown state {}", quote(s))))
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
                format!(
                    "{} is terminal: an entity would start sealed",
                    quote(&spec.initial_state)
                ),
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
                    format!("transition {} is declared twice", quote(&t.name)),
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
                            format!("state {} is listed twice", quote(s)),
                        ));
                    }
                    if label != "noop_from" && terminal.contains(s.as_str()) {
                        return Err(DomainError::invalid(
                            format!("{at}.{label}[{j}]"),
                            format!(
                                "{} is terminal: a sealed entity cannot move (list it in noop_from to make the transition a no-op there)",
                                quote(s)
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
                        format!("{} is also in from", quote(s)),
                    ));
                }
            }
            for s in &t.noop_from {
                if t.from.contains(s) || t.stale_from.contains(s) {
                    return Err(DomainError::invalid(
                        format!("{at}.noop_from"),
                        format!("{} is also in from or stale_from", quote(s)),
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
                    format!("field {} has two rules", quote(&r.field)),
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
        let mut timed = BTreeSet::new();
        for (i, t) in spec.timeouts.iter().enumerate() {
            let at = format!("spec.timeouts[{i}]");
            known(format!("{at}.state"), &t.state)?;
            if terminal.contains(t.state.as_str()) {
                return Err(DomainError::invalid(
                    format!("{at}.state"),
                    format!(
                        "{} is terminal: a finished entity does not time out (see retain_after_final)",
                        quote(&t.state)
                    ),
                ));
            }
            if !timed.insert(t.state.as_str()) {
                return Err(DomainError::invalid(
                    format!("{at}.state"),
                    format!("state {} has two timeouts", quote(&t.state)),
                ));
            }
            if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&t.after) {
                return Err(DomainError::invalid(
                    format!("{at}.after"),
                    "must be between 1s and 365 days",
                ));
            }
            let Some(fires) = spec.transitions.iter().find(|x| x.name == t.transition) else {
                return Err(DomainError::invalid(
                    format!("{at}.transition"),
                    format!("no transition is named {}", quote(&t.transition)),
                ));
            };
            if !timeout_allowed(t, fires) {
                return Err(DomainError::invalid(
                    format!("{at}.transition"),
                    format!(
                        "transition {} is not allowed from state {}{}",
                        quote(&t.transition),
                        quote(&t.state),
                        if fires.stale_from.contains(&t.state) {
                            " (it is in stale_from: the timeout must be idle and at least stale_after)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        if let Some(r) = spec.retain_after_final
            && !(MIN_TIMEOUT..=MAX_RETAIN).contains(&r)
        {
            return Err(DomainError::invalid(
                "spec.retain_after_final",
                "must be between 1s and 3650 days",
            ));
        }
        Ok(Self { spec, kind })
    }

    /// The timeout `state` declares, if any.
    pub fn timeout(&self, state: &str) -> Option<&TimeoutSpec> {
        self.spec.timeouts.iter().find(|t| t.state == state)
    }

    /// The dedup key policy.
    pub fn dedup(&self) -> DedupPolicy {
        self.spec.dedup
    }

    /// What each state schedules: `(state, after, idle)` for every state timeout, and
    /// `(terminal state, retain_after_final, false)` for each terminal state when finished
    /// entities are purged. An entity's due time is its state's `after` past when it entered
    /// the state (`updated_at`), or with `idle` past its last activity.
    pub fn schedules(&self) -> Vec<(&str, Duration, bool)> {
        let timeouts = self.spec.timeouts.iter().map(|t| (t.state.as_str(), t.after, t.idle));
        let purges = self
            .spec
            .retain_after_final
            .into_iter()
            .flat_map(|r| self.spec.terminal_states.iter().map(move |s| (s.as_str(), r, false)));
        timeouts.chain(purges).collect()
    }

    /// When the server must next look at `entity`: its state's timeout, or once finished
    /// its purge; `None` when never. For an idle timeout this is a lower bound (an append
    /// since moves it later; the server then looks again).
    pub fn due_at(&self, entity: &Entity) -> Option<Timestamp> {
        if entity.final_seq.is_some() {
            return self.spec.retain_after_final.map(|r| entity.updated_at.plus(r));
        }
        let t = self.timeout(&entity.state)?;
        let since = if t.idle {
            entity.last_activity_at
        } else {
            entity.updated_at
        };
        Some(since.plus(t.after))
    }

    /// The transition called `name`.
    pub fn transition(&self, name: &Name) -> Option<&TransitionSpec> {
        self.spec.transitions.iter().find(|t| t.name == name.as_str())
    }

    /// The validated spec.
    pub fn spec(&self) -> &MachineSpec {
        &self.spec
    }

    /// The kind.
    pub fn kind(&self) -> &Name {
        &self.kind
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

    pub(super) fn check_fields_allowed(&self, fields: &Fields, state: &str) -> Result<(), DomainError> {
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

/// True when a timeout's transition may fire from its state: listed in `from`, or in
/// `stale_from` with an idle timeout at least as long as the staleness guard.
fn timeout_allowed(t: &TimeoutSpec, fires: &TransitionSpec) -> bool {
    fires.from.contains(&t.state)
        || (fires.stale_from.contains(&t.state) && t.idle && fires.stale_after.is_some_and(|s| t.after >= s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::machine::plan::tests::run_machine;

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
            (
                Box::new(|s| s.timeouts.push(timeout("pending", "1h", "stop"))),
                "spec.timeouts[0].transition",
            ),
            (
                Box::new(|s| s.timeouts.push(timeout("running", "1h", "resume"))),
                "spec.timeouts[0].transition",
            ),
            (
                Box::new(|s| s.timeouts.push(timeout("completed", "1h", "cancel"))),
                "spec.timeouts[0].state",
            ),
            (
                Box::new(|s| s.timeouts.push(timeout("pending", "0s", "cancel"))),
                "spec.timeouts[0].after",
            ),
            (
                Box::new(|s| s.timeouts.push(timeout("pending", "1h", "nope"))),
                "spec.timeouts[0].transition",
            ),
            (
                Box::new(|s| {
                    s.timeouts.push(timeout("pending", "1h", "cancel"));
                    s.timeouts.push(timeout("pending", "2h", "cancel"));
                }),
                "spec.timeouts[1].state",
            ),
            (
                Box::new(|s| s.retain_after_final = Some(Duration::ZERO)),
                "spec.retain_after_final",
            ),
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

    fn timeout(state: &str, after: &str, transition: &str) -> TimeoutSpec {
        TimeoutSpec {
            state: state.into(),
            after: humantime::parse_duration(after).unwrap(),
            idle: false,
            transition: transition.into(),
        }
    }

    #[test]
    fn timeouts_are_allowed_from_or_idle_stale_from_their_state() {
        let mut spec = run_machine().spec().clone();
        spec.timeouts.push(timeout("pending", "10m", "cancel"));
        // `resume` is allowed from running only when idle for 72h: an idle timeout of 72h
        // or more may fire it.
        spec.timeouts.push(TimeoutSpec {
            idle: true,
            ..timeout("running", "3days", "resume")
        });
        spec.retain_after_final = Some(Duration::from_secs(3600));
        let m = Machine::parse(spec).unwrap();
        assert_eq!(m.timeout("pending").unwrap().transition, "cancel");
        assert!(m.timeout("paused").is_none());
        let mut schedules = m.schedules();
        schedules.sort();
        assert_eq!(
            schedules,
            vec![
                ("cancelled", Duration::from_secs(3600), false),
                ("completed", Duration::from_secs(3600), false),
                ("pending", Duration::from_secs(600), false),
                ("running", Duration::from_secs(3 * 24 * 3600), true),
            ]
        );
    }
}
