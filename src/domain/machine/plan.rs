//! The one function that decides a transition (I4, I5) — and so the one "may this run be
//! resumed?" predicate — and the one that makes a new entity. Both backends call these
//! inside their write transaction; what they return is everything the write stores.

use super::validate::{MAX_STALE_AFTER, Machine};
use crate::domain::DomainError;
use crate::domain::entity::{Entity, EntityChange, Fields, MAX_FIELDS, Version};
use crate::domain::names::{DedupKey, EntityId, Name};
use crate::domain::tape::{self, EventInput, NewEvent, Seq};
use crate::domain::time::Timestamp;
use std::time::Duration;

/// The payload of the `final` event a transition into a terminal state appends, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalEvent {
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Content type, possibly empty.
    pub content_type: String,
}

impl FinalEvent {
    /// Parses the final payload and content type (`final_payload`, `final_content_type`).
    pub fn parse(payload: Vec<u8>, content_type: String) -> Result<Self, DomainError> {
        tape::check_payload("final_payload", &payload)?;
        tape::check_content_type("final_content_type", &content_type)?;
        Ok(Self { payload, content_type })
    }
}

/// What the caller asks of a transition, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionAsk {
    /// Transition name.
    pub name: Name,
    /// CAS precondition.
    pub expect_version: Option<Version>,
    /// Fields to set.
    pub set_fields: Fields,
    /// Fields to remove.
    pub clear_fields: Vec<Name>,
    /// The caller's events, appended after the state change.
    pub events: Vec<EventInput>,
    /// The `final` event's payload, when the target state is terminal.
    pub final_event: FinalEvent,
}

/// The decision.
// Made and consumed once per command: boxing the common variant would cost more than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionPlan {
    /// A declared no-op state: nothing changes, nothing is written.
    Noop,
    /// The entity after and the events to append: `baton.transition`, the caller's events,
    /// then `final` when the target is terminal (which seals the tape in the same write).
    Apply(EntityChange),
}

/// Decides a transition (I4, I5, I7). Order: unknown name, no-op state, version,
/// allowed-from (with staleness guard), field rules.
pub fn plan_transition(
    machine: &Machine,
    entity: &Entity,
    ask: &TransitionAsk,
    now: Timestamp,
) -> Result<TransitionPlan, DomainError> {
    let t = machine.transition(&ask.name).ok_or_else(|| {
        DomainError::invalid(
            "transition",
            format!(
                "kind {:?} declares no transition {:?}",
                machine.kind().as_str(),
                ask.name.as_str()
            ),
        )
    })?;
    if t.noop_from.contains(&entity.state) {
        return Ok(TransitionPlan::Noop);
    }
    if let Some(expected) = ask.expect_version
        && expected != entity.version
    {
        return Err(DomainError::VersionMismatch {
            expected,
            version: entity.version,
            current_state: entity.state.clone(),
        });
    }
    let allowed_from = || t.from.iter().chain(&t.stale_from).cloned().collect::<Vec<_>>();
    let invalid = |detail: String| DomainError::InvalidTransition {
        transition: t.name.clone(),
        current_state: entity.state.clone(),
        version: entity.version,
        allowed_from: allowed_from(),
        detail,
    };
    if !t.from.contains(&entity.state) {
        if !t.stale_from.contains(&entity.state) {
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
    if let Some(final_seq) = entity.final_seq {
        // Unreachable with a valid machine (terminal states have no exits); I7 anyway.
        return Err(DomainError::TapeSealed { final_seq });
    }
    let mut fields = entity.fields.clone();
    for name in &ask.clear_fields {
        fields.remove(name.as_str());
    }
    machine.check_fields_allowed(&ask.set_fields, &t.to)?;
    fields.extend(ask.set_fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    // I5: whatever the target state forbids is cleared by this very write.
    fields.retain(|name, _| machine.field_allowed(name, &t.to));
    if fields.len() > MAX_FIELDS {
        return Err(DomainError::invalid(
            "set_fields",
            format!("an entity holds at most {MAX_FIELDS} fields"),
        ));
    }
    let terminal = machine.is_terminal(&t.to);
    let change = serde_json::json!({ "transition": t.name, "from": entity.state, "to": t.to });
    let mut new = vec![NewEvent {
        event_type: tape::TRANSITION.to_string(),
        payload: change.to_string().into_bytes(),
        content_type: "application/json".to_string(),
        state: Some(t.to.clone()),
    }];
    new.extend(ask.events.iter().map(|e| NewEvent {
        event_type: e.event_type.clone(),
        payload: e.payload.clone(),
        content_type: e.content_type.clone(),
        state: None,
    }));
    if terminal {
        new.push(NewEvent {
            event_type: tape::FINAL.to_string(),
            payload: ask.final_event.payload.clone(),
            content_type: ask.final_event.content_type.clone(),
            state: Some(t.to.clone()),
        });
    }
    let events = tape::number(entity.last_seq, new, now);
    let head = events.last().map_or(entity.last_seq, |e| e.seq);
    let mut entity = Entity {
        state: t.to.clone(),
        version: entity.version.next(),
        fields,
        updated_at: now,
        last_activity_at: now,
        last_seq: head,
        final_seq: terminal.then_some(head),
        ..entity.clone()
    };
    entity.due_at = machine.due_at(&entity);
    Ok(TransitionPlan::Apply(EntityChange { entity, events }))
}

/// A new entity of `machine`'s kind in its initial state, with fields the initial state
/// allows (I5 from the start).
pub fn plan_create(
    machine: &Machine,
    id: EntityId,
    dedup_key: Option<DedupKey>,
    fields: Fields,
    now: Timestamp,
) -> Result<Entity, DomainError> {
    machine.check_initial_fields(&fields)?;
    let mut entity = Entity {
        id,
        kind: machine.kind().clone(),
        state: machine.initial_state().to_string(),
        version: Version::FIRST,
        fields,
        dedup_key,
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        last_seq: Seq::ZERO,
        final_seq: None,
        due_at: None,
    };
    entity.due_at = machine.due_at(&entity);
    Ok(entity)
}

/// What the server does with an entity whose due time came (state timeouts, retention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuePlan {
    /// Nothing is due now or later (the machine was redefined without it): forget it.
    Clear,
    /// Not yet (activity moved an idle timeout, or a redefinition moved it): look again then.
    Later(Timestamp),
    /// Its state timed out: run this transition, with the machine's rules.
    Fire(TransitionAsk),
    /// Finished longer ago than the machine retains: delete it and its tape.
    Purge,
}

/// Event type of the event a timeout's transition appends, saying why it ran.
pub const TIMEOUT_EVENT: &str = "baton.timeout";

/// Decides what is due for `entity` at `now`, by the machine as it is now (I4 still holds:
/// the timeout's transition is planned like any other, and only when it is allowed).
pub fn plan_due(machine: &Machine, entity: &Entity, now: Timestamp) -> DuePlan {
    let Some(due) = machine.due_at(entity) else {
        return DuePlan::Clear;
    };
    if due > now {
        return DuePlan::Later(due);
    }
    if entity.final_seq.is_some() {
        return DuePlan::Purge;
    }
    let Some(t) = machine.timeout(&entity.state) else {
        return DuePlan::Clear;
    };
    let Ok(name) = Name::parse("transition", t.transition.clone()) else {
        return DuePlan::Clear;
    };
    let why = serde_json::json!({
        "state": entity.state,
        "after": humantime::format_duration(t.after).to_string(),
        "idle": t.idle,
        "transition": t.transition,
    })
    .to_string()
    .into_bytes();
    DuePlan::Fire(TransitionAsk {
        name,
        expect_version: Some(entity.version),
        set_fields: Fields::new(),
        clear_fields: vec![],
        events: vec![EventInput {
            event_type: TIMEOUT_EVENT.to_string(),
            payload: why.clone(),
            content_type: "application/json".to_string(),
        }],
        final_event: FinalEvent {
            payload: why,
            content_type: "application/json".to_string(),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::machine::MachineSpec;

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

    pub(crate) fn ask(name: &str) -> TransitionAsk {
        TransitionAsk {
            name: Name::parse("t", name.into()).unwrap(),
            expect_version: None,
            set_fields: Fields::new(),
            clear_fields: vec![],
            events: vec![],
            final_event: FinalEvent::default(),
        }
    }

    /// An entity at version 3 in `state`, idle for `idle`; and "now".
    fn entity(state: &str, fields: &Fields, idle: Duration) -> (Entity, Timestamp) {
        let now = Timestamp(1_000_000_000_000);
        let mut e = plan_create(
            &run_machine(),
            EntityId::parse("id", "r".into()).unwrap(),
            None,
            Fields::new(),
            Timestamp(0),
        )
        .unwrap();
        e.state = state.into();
        e.version = Version::parse("v", 3).unwrap();
        e.fields = fields.clone();
        e.last_activity_at = Timestamp(now.0 - idle.as_micros() as i64);
        e.last_seq = Seq::parse("s", 4).unwrap();
        (e, now)
    }

    #[test]
    fn resume_is_one_rule_with_a_staleness_guard() {
        let m = run_machine();
        let f = Fields::new();
        for state in ["failed", "paused"] {
            let (e, now) = entity(state, &f, Duration::ZERO);
            assert!(
                matches!(
                    plan_transition(&m, &e, &ask("resume"), now),
                    Ok(TransitionPlan::Apply(_))
                ),
                "{state}"
            );
        }
        let (fresh, now) = entity("running", &f, Duration::from_secs(60));
        let err = plan_transition(&m, &fresh, &ask("resume"), now).unwrap_err();
        assert!(
            matches!(err, DomainError::InvalidTransition { ref current_state, version, .. } if current_state == "running" && version.get() == 3)
        );
        let (stale, now) = entity("running", &f, Duration::from_secs(73 * 3600));
        assert!(matches!(
            plan_transition(&m, &stale, &ask("resume"), now),
            Ok(TransitionPlan::Apply(_))
        ));
        let (done, now) = entity("completed", &f, Duration::ZERO);
        assert!(matches!(
            plan_transition(&m, &done, &ask("resume"), now),
            Err(DomainError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn cancel_on_finished_is_noop_even_with_stale_version() {
        let m = run_machine();
        let f = Fields::new();
        let (e, now) = entity("completed", &f, Duration::ZERO);
        let a = TransitionAsk {
            expect_version: Some(Version::parse("v", 99).unwrap()),
            ..ask("cancel")
        };
        assert_eq!(plan_transition(&m, &e, &a, now), Ok(TransitionPlan::Noop));
    }

    #[test]
    fn i5_restricted_fields_are_cleared_and_refused() {
        let m = run_machine();
        let mut f = Fields::new();
        f.insert("worker".into(), "w1".into());
        f.insert("note".into(), "kept".into());
        let (e, now) = entity("running", &f, Duration::ZERO);
        let Ok(TransitionPlan::Apply(change)) = plan_transition(&m, &e, &ask("stop"), now) else {
            panic!()
        };
        assert_eq!(change.entity.fields.keys().collect::<Vec<_>>(), ["note"]);
        let mut a = ask("stop");
        a.set_fields.insert("worker".into(), "w2".into());
        assert!(matches!(
            plan_transition(&m, &e, &a, now),
            Err(DomainError::FieldNotAllowed { .. })
        ));
    }

    #[test]
    fn version_mismatch_reports_current_state() {
        let m = run_machine();
        let f = Fields::new();
        let (e, now) = entity("pending", &f, Duration::ZERO);
        let a = TransitionAsk {
            expect_version: Some(Version::parse("v", 2).unwrap()),
            ..ask("start")
        };
        assert_eq!(
            plan_transition(&m, &e, &a, now),
            Err(DomainError::VersionMismatch {
                expected: Version::parse("v", 2).unwrap(),
                version: Version::parse("v", 3).unwrap(),
                current_state: "pending".into()
            })
        );
    }

    /// The plan is the whole write: the entity after, and the tape's new events in order —
    /// the state change, the caller's events, then `final` when the target is terminal.
    #[test]
    fn a_terminal_transition_writes_change_events_and_final() {
        let m = run_machine();
        let (e, now) = entity("running", &Fields::new(), Duration::ZERO);
        let a = TransitionAsk {
            events: vec![EventInput::parse("e", "note".into(), b"bye".to_vec(), String::new()).unwrap()],
            final_event: FinalEvent::parse(b"cancelled by user".to_vec(), "text/plain".into()).unwrap(),
            ..ask("cancel")
        };
        let Ok(TransitionPlan::Apply(change)) = plan_transition(&m, &e, &a, now) else {
            panic!("cancel applies from running")
        };
        let kinds: Vec<_> = change.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(kinds, ["baton.transition", "note", "final"]);
        assert_eq!(change.seqs().iter().map(|s| s.get()).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(change.events[2].payload, b"cancelled by user");
        assert_eq!(change.events[2].state.as_deref(), Some("cancelled"));
        let after = &change.entity;
        assert_eq!((after.state.as_str(), after.version.get()), ("cancelled", 4));
        assert_eq!((after.last_seq.get(), after.final_seq.map(Seq::get)), (7, Some(7)));
        assert_eq!((after.updated_at, after.last_activity_at), (now, now));
        // A non-terminal transition appends no `final` and leaves the tape open.
        let (p, now) = entity("pending", &Fields::new(), Duration::ZERO);
        let Ok(TransitionPlan::Apply(start)) = plan_transition(&m, &p, &ask("start"), now) else {
            panic!("start applies from pending")
        };
        assert_eq!(start.events.len(), 1);
        assert_eq!(start.entity.final_seq, None);
    }
}

#[cfg(test)]
mod properties {
    //! Random machines, random transition sequences: field rules always hold (I5) and the
    //! version always equals applied transitions + 1.
    use super::*;
    use crate::domain::machine::{FieldRule, MachineSpec, TransitionSpec};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

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
                    ..MachineSpec::default()
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
            let mut entity = plan_create(&m, EntityId::parse("id", "e".into()).unwrap(), None, Fields::new(), Timestamp(0)).unwrap();
            let mut applied = 0u64;
            let n_trans = m.spec().transitions.len();
            for (t, set) in steps {
                let name = format!("t{}", t % n_trans);
                let ask = TransitionAsk {
                    name: Name::parse("t", name).unwrap(),
                    expect_version: None,
                    set_fields: set.iter().map(|i| (format!("f{i}"), "v".to_string())).collect(),
                    clear_fields: vec![],
                    events: vec![],
                    final_event: FinalEvent::default(),
                };
                if let Ok(TransitionPlan::Apply(change)) = plan_transition(&m, &entity, &ask, Timestamp(0)) {
                    prop_assert_eq!(change.events[0].seq, entity.last_seq.next(), "gapless after the head");
                    entity = change.entity;
                    applied += 1;
                }
                for name in entity.fields.keys() {
                    prop_assert!(m.field_allowed(name, &entity.state), "{} present in {}", name, entity.state);
                }
                prop_assert_eq!(entity.version.get(), applied + 1);
            }
        }
    }
}
