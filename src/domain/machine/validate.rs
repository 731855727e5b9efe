//! Validation of specs: [`Machine::parse`] turns a [`MachineSpec`] into a [`Machine`], or
//! names the rule it breaks (`spec.transitions[2].from[0]`).

use super::spec::{MachineSpec, TransitionSpec};
use crate::domain::DomainError;
use crate::domain::entity::{Fields, MAX_FIELDS};
use crate::domain::names::Name;
use std::collections::BTreeSet;
use std::time::Duration;

/// Shortest accepted `stale_after`.
pub const MIN_STALE_AFTER: Duration = Duration::from_secs(1);
/// Longest accepted `stale_after`.
pub const MAX_STALE_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);
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
        Ok(Self { spec, kind })
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
