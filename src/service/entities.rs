//! CreateEntity (with dedup, I9), GetEntity, ListEntities and Transition (I4, I5): each
//! write is one transaction that checks the machine, the version and the fence together.

use super::idempotency::{call_id, remember, replay};
use super::leases::check_fence;
use super::{Coordinator, Result};
use crate::domain::DomainError;
use crate::domain::entity::{Entity, Fields};
use crate::domain::lease::Fence;
use crate::domain::machine::{Plan, Snapshot, TransitionAsk, plan_transition};
use crate::domain::names::{DedupKey, EntityId, Name, Namespace, RequestId, lock_key, lock_space};
use crate::domain::tape::{self, EventInput, StoredEvent};
use crate::storage::{Change, First, ListQuery, WriteTx};
use std::sync::Arc;

/// A validated CreateEntity.
#[derive(Debug, Clone)]
pub struct CreateCmd {
    /// Namespace.
    pub ns: Namespace,
    /// Kind.
    pub kind: Name,
    /// Caller-chosen id.
    pub id: Option<EntityId>,
    /// Dedup key.
    pub dedup_key: Option<DedupKey>,
    /// Initial fields.
    pub fields: Fields,
    /// Fence.
    pub fence: Option<Fence>,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// Outcome of CreateEntity.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreateOutcome {
    /// True for the call that created it.
    pub created: bool,
    /// The entity.
    pub entity: Entity,
}

/// A validated Transition.
#[derive(Debug, Clone)]
pub struct TransitionCmd {
    /// Namespace.
    pub ns: Namespace,
    /// Entity.
    pub entity_id: EntityId,
    /// Name, expected version, fields.
    pub ask: TransitionAsk,
    /// Fence.
    pub fence: Option<Fence>,
    /// Events appended after the state change.
    pub events: Vec<EventInput>,
    /// Payload of `final` when the target is terminal.
    pub final_payload: Vec<u8>,
    /// Its content type.
    pub final_content_type: String,
    /// Idempotency key.
    pub request_id: Option<RequestId>,
}

/// Outcome of Transition.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TransitionOutcome {
    /// False on a declared no-op state.
    pub applied: bool,
    /// The entity after.
    pub entity: Entity,
    /// Seqs appended.
    pub seqs: Vec<u64>,
}

fn not_found(id: &EntityId) -> DomainError {
    DomainError::NotFound {
        what: "entity",
        name: id.to_string(),
    }
}

/// The lock a write to an entity takes.
pub(super) fn entity_lock(ns: &Namespace, id: &EntityId) -> i64 {
    lock_key(ns, lock_space::ENTITY, id.as_str())
}

impl Coordinator {
    /// CreateEntity. Concurrent creators of one dedup key serialize on its lock and all get
    /// the one entity; the unique index is the guarantee behind the lock (I9).
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, kind = %cmd.kind))]
    pub async fn create_entity(&self, cmd: CreateCmd) -> Result<CreateOutcome> {
        let id = cmd.id.clone().unwrap_or_else(EntityId::generate);
        // Whatever makes two calls "the same" is what they must serialize on.
        let lock = match (&cmd.dedup_key, &cmd.id, &cmd.request_id) {
            (Some(d), _, _) => lock_key(&cmd.ns, lock_space::DEDUP, &format!("{}\0{}", cmd.kind, d)),
            (None, Some(id), _) => entity_lock(&cmd.ns, id),
            (None, None, Some(rid)) => lock_key(&cmd.ns, lock_space::REQUEST, rid.as_str()),
            (None, None, None) => entity_lock(&cmd.ns, &id),
        };
        let call = call_id(
            "CreateEntity",
            cmd.kind.as_str(),
            &(&cmd.id, &cmd.dedup_key, &cmd.fields, &cmd.fence),
        );
        let _turn = self.queue.turn(lock).await;
        self.retrying(|| self.create_once(&cmd, &id, lock, &call)).await
    }

    async fn create_once(&self, cmd: &CreateCmd, id: &EntityId, lock: i64, call: &str) -> Result<CreateOutcome> {
        let mut tx = self.store.begin(lock).await?;
        if let Some(out) = replay(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), call).await? {
            return Ok(out);
        }
        let planned = self.machine_for_write(&mut *tx, &cmd.ns, &cmd.kind).await?;
        if let Err(refusal) = planned.stored.machine.check_initial_fields(&cmd.fields) {
            self.confirm_refusal(&mut *tx, &cmd.ns, &cmd.kind, &planned).await?;
            return Err(refusal.into());
        }
        check_fence(&mut *tx, &cmd.ns, cmd.fence.as_ref()).await?;
        if let Some(dedup) = &cmd.dedup_key
            && let Some(existing) = tx.entity_by_dedup(&cmd.ns, &cmd.kind, dedup).await?
        {
            return Ok(CreateOutcome {
                created: false,
                entity: existing,
            });
        }
        let now = tx.now();
        let entity = Entity {
            id: id.clone(),
            kind: cmd.kind.clone(),
            state: planned.stored.machine.initial_state().to_string(),
            version: 1,
            fields: cmd.fields.clone(),
            dedup_key: cmd.dedup_key.clone(),
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            last_seq: 0,
            final_seq: None,
        };
        tx.insert_entity(&cmd.ns, &entity).await?;
        let out = CreateOutcome { created: true, entity };
        remember(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), call, &out).await?;
        tx.commit()
            .await
            .map_err(|e| self.on_conflict(&cmd.ns, &cmd.kind, e.into()))?;
        Ok(out)
    }

    /// GetEntity.
    pub async fn get_entity(&self, ns: Namespace, id: EntityId) -> Result<Entity> {
        self.store.entity(&ns, &id).await?.ok_or_else(|| not_found(&id).into())
    }

    /// ListEntities: one page, and whether more may follow.
    pub async fn list_entities(&self, q: ListQuery) -> Result<(Vec<Entity>, bool)> {
        let limit = q.limit;
        let mut page = self.store.list_entities(&ListQuery { limit: limit + 1, ..q }).await?;
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        Ok((page, more))
    }

    /// Transition: one compare-and-swap. Of N concurrent identical transitions exactly one
    /// applies; the others learn the current state from their error (I4).
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, id = %cmd.entity_id, transition = %cmd.ask.name))]
    pub async fn transition(&self, cmd: TransitionCmd) -> Result<TransitionOutcome> {
        let call = call_id(
            "Transition",
            cmd.entity_id.as_str(),
            &(
                &cmd.ask,
                &cmd.fence,
                &cmd.events,
                &cmd.final_payload,
                &cmd.final_content_type,
            ),
        );
        let lock = entity_lock(&cmd.ns, &cmd.entity_id);
        let _turn = self.queue.turn(lock).await;
        self.retrying(|| self.transition_once(&cmd, lock, &call)).await
    }

    async fn transition_once(&self, cmd: &TransitionCmd, lock: i64, call: &str) -> Result<TransitionOutcome> {
        let mut tx = self
            .store
            .begin_at(lock, First::Entity(&cmd.ns, &cmd.entity_id))
            .await?;
        if let Some(out) = replay(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), call).await? {
            return Ok(out);
        }
        let entity = tx
            .entity(&cmd.ns, &cmd.entity_id)
            .await?
            .ok_or_else(|| not_found(&cmd.entity_id))?;
        let planned = self.machine_for_write(&mut *tx, &cmd.ns, &entity.kind).await?;
        check_fence(&mut *tx, &cmd.ns, cmd.fence.as_ref()).await?;
        let now = tx.now();
        let snapshot = Snapshot {
            state: &entity.state,
            version: entity.version,
            fields: &entity.fields,
            last_activity_at: entity.last_activity_at,
        };
        let (from, to, fields, terminal) = match plan_transition(&planned.stored.machine, &snapshot, &cmd.ask, now) {
            Ok(Plan::Apply {
                from,
                to,
                fields,
                terminal,
            }) => (from, to, fields, terminal),
            Ok(Plan::Noop) => {
                self.confirm_refusal(&mut *tx, &cmd.ns, &entity.kind, &planned).await?;
                return Ok(TransitionOutcome {
                    applied: false,
                    entity,
                    seqs: vec![],
                });
            }
            Err(refusal) => {
                self.confirm_refusal(&mut *tx, &cmd.ns, &entity.kind, &planned).await?;
                return Err(refusal.into());
            }
        };
        if let Some(final_seq) = entity.final_seq {
            // Unreachable with a valid machine (terminal states have no exits); I7 anyway.
            return Err(DomainError::TapeSealed { final_seq }.into());
        }
        let change = serde_json::json!({ "transition": cmd.ask.name.as_str(), "from": from, "to": to }).to_string();
        let mut raw = vec![(
            tape::TRANSITION.to_string(),
            change.into_bytes(),
            "application/json".to_string(),
            Some(to.clone()),
        )];
        raw.extend(
            cmd.events
                .iter()
                .map(|e| (e.event_type.clone(), e.payload.clone(), e.content_type.clone(), None)),
        );
        if terminal {
            raw.push((
                tape::FINAL.to_string(),
                cmd.final_payload.clone(),
                cmd.final_content_type.clone(),
                Some(to.clone()),
            ));
        }
        let events = tape::number(entity.last_seq, raw, now);
        let head = events.last().map_or(entity.last_seq, |e| e.seq);
        let after = Entity {
            state: to,
            version: entity.version + 1,
            fields,
            updated_at: now,
            last_activity_at: now,
            last_seq: head,
            final_seq: terminal.then_some(head),
            ..entity
        };
        tx.update_entity(&cmd.ns, &after).await?;
        tx.insert_events(&cmd.ns, &after.id, &events).await?;
        let out = TransitionOutcome {
            applied: true,
            seqs: events.iter().map(|e| e.seq).collect(),
            entity: after,
        };
        publish_tape(&mut *tx, &cmd.ns, &out.entity.id, events).await?;
        remember(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), call, &out).await?;
        tx.commit()
            .await
            .map_err(|e| self.on_conflict(&cmd.ns, &out.entity.kind, e.into()))?;
        Ok(out)
    }
}

/// Announces appended events (delivered to subscribers after commit).
pub(super) async fn publish_tape(
    tx: &mut dyn WriteTx,
    ns: &Namespace,
    id: &EntityId,
    events: Vec<StoredEvent>,
) -> Result<()> {
    let head = events.last().map_or(0, |e| e.seq);
    let events = events.into_iter().map(Arc::new).collect();
    Ok(tx
        .publish(Change::Tape {
            ns: ns.clone(),
            entity_id: id.clone(),
            head,
            events,
        })
        .await?)
}
