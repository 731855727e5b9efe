//! CreateEntity (with dedup, I9), GetEntity, ListEntities and Transition (I4, I5): each
//! write is one transaction that checks the machine, the version and the fence together,
//! then stores what the domain planned.

use super::idempotency::{call_id, remember, replay};
use super::{Coordinator, Result};
use crate::domain::DomainError;
use crate::domain::command::{CreateEntity, GetEntity, ListEntities, Transition};
use crate::domain::entity::{Entity, EntityChange};
use crate::domain::machine::{TransitionPlan, plan_create, plan_transition};
use crate::domain::names::{EntityId, Namespace, lock_key, lock_space};
use crate::domain::tape::Seq;
use crate::storage::{Change, First, WriteTx};
use std::sync::Arc;

/// Outcome of CreateEntity.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreateOutcome {
    /// True for the call that created it.
    pub created: bool,
    /// The entity.
    pub entity: Entity,
}

/// Outcome of Transition.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TransitionOutcome {
    /// False on a declared no-op state.
    pub applied: bool,
    /// The entity after.
    pub entity: Entity,
    /// Seqs appended.
    pub seqs: Vec<Seq>,
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
    pub async fn create_entity(&self, cmd: CreateEntity) -> Result<CreateOutcome> {
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
        self.detached(move |this| async move {
            let _turn = this.queue.turn(lock).await;
            this.retrying(|| this.create_once(&cmd, &id, lock, &call)).await
        })
        .await
    }

    async fn create_once(&self, cmd: &CreateEntity, id: &EntityId, lock: i64, call: &str) -> Result<CreateOutcome> {
        let mut tx = self.store.begin(lock).await?;
        if let Some(out) = replay(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), call).await? {
            return Ok(out);
        }
        let planned = self.machine_for_write(&mut *tx, &cmd.ns, &cmd.kind).await?;
        let entity = match plan_create(
            &planned.stored.machine,
            id.clone(),
            cmd.dedup_key.clone(),
            cmd.fields.clone(),
            tx.now(),
        ) {
            Ok(entity) => entity,
            Err(refusal) => {
                self.confirm_refusal(&mut *tx, &cmd.ns, &cmd.kind, &planned).await?;
                return Err(refusal.into());
            }
        };
        self.check_fence(&mut *tx, &cmd.ns, cmd.fence.as_ref()).await?;
        if let Some(dedup) = &cmd.dedup_key
            && let Some(existing) = tx.entity_by_dedup(&cmd.ns, &cmd.kind, dedup).await?
        {
            return Ok(CreateOutcome {
                created: false,
                entity: existing,
            });
        }
        tx.insert_entity(&cmd.ns, &entity).await?;
        let out = CreateOutcome { created: true, entity };
        remember(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), call, &out).await?;
        tx.commit()
            .await
            .map_err(|e| self.on_conflict(&cmd.ns, &cmd.kind, e.into()))?;
        Ok(out)
    }

    /// GetEntity.
    pub async fn get_entity(&self, cmd: GetEntity) -> Result<Entity> {
        self.store
            .entity(&cmd.ns, &cmd.id)
            .await?
            .ok_or_else(|| not_found(&cmd.id).into())
    }

    /// ListEntities: one page, and whether more may follow.
    pub async fn list_entities(&self, q: ListEntities) -> Result<(Vec<Entity>, bool)> {
        let limit = q.limit;
        let mut page = self
            .store
            .list_entities(&ListEntities { limit: limit + 1, ..q })
            .await?;
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        Ok((page, more))
    }

    /// Transition: one compare-and-swap. Of N concurrent identical transitions exactly one
    /// applies; the others learn the current state from their error (I4).
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, id = %cmd.entity_id, transition = %cmd.ask.name))]
    pub async fn transition(&self, cmd: Transition) -> Result<TransitionOutcome> {
        let call = call_id("Transition", cmd.entity_id.as_str(), &(&cmd.ask, &cmd.fence));
        let lock = entity_lock(&cmd.ns, &cmd.entity_id);
        self.detached(move |this| async move {
            let _turn = this.queue.turn(lock).await;
            this.retrying(|| this.transition_once(&cmd, lock, &call)).await
        })
        .await
    }

    async fn transition_once(&self, cmd: &Transition, lock: i64, call: &str) -> Result<TransitionOutcome> {
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
        self.check_fence(&mut *tx, &cmd.ns, cmd.fence.as_ref()).await?;
        let change = match plan_transition(&planned.stored.machine, &entity, &cmd.ask, tx.now()) {
            Ok(TransitionPlan::Apply(change)) => change,
            Ok(TransitionPlan::Noop) => {
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
        let kind = entity.kind;
        let out = TransitionOutcome {
            applied: true,
            seqs: change.seqs(),
            entity: change.entity.clone(),
        };
        write_change(&mut *tx, &cmd.ns, change).await?;
        remember(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), call, &out).await?;
        tx.commit()
            .await
            .map_err(|e| self.on_conflict(&cmd.ns, &kind, e.into()))?;
        Ok(out)
    }
}

/// Stores what the domain planned for one entity — the entity after and its new events —
/// and announces the events (delivered to subscribers after commit).
pub(super) async fn write_change(tx: &mut dyn WriteTx, ns: &Namespace, change: EntityChange) -> Result<()> {
    let EntityChange { entity, events } = change;
    tx.update_entity(ns, &entity).await?;
    tx.insert_events(ns, &entity.id, &events).await?;
    let head = events.last().map_or(entity.last_seq, |e| e.seq);
    tx.publish(Change::Tape {
        ns: ns.clone(),
        entity_id: entity.id.clone(),
        head,
        events: events.into_iter().map(Arc::new).collect(),
    })
    .await?;
    Ok(())
}
