//! CreateEntity (with dedup, I9), GetEntity, ListEntities and Transition (I4, I5). The
//! writes go through the commit pipeline, which checks the machine, the version and the
//! fence together, inside one batch.

use super::{Coordinator, Error, Result};
use crate::domain::DomainError;
use crate::domain::batch::Command;
use crate::domain::command::{CreateEntity, GetEntity, ListEntities, Transition};
use crate::domain::entity::Entity;
use crate::domain::names::EntityId;
use crate::domain::outcome::{CreateOutcome, Outcome, TransitionOutcome};

impl Coordinator {
    /// CreateEntity. Creators of one dedup key serialize on its lock and all get the one
    /// entity; the unique index is the guarantee behind the lock (I9).
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, kind = %cmd.kind))]
    pub async fn create_entity(&self, cmd: CreateEntity) -> Result<CreateOutcome> {
        // The id is decided once, here: a batch run again creates the same entity.
        let id = cmd.id.clone().unwrap_or_else(EntityId::generate);
        match self.pipeline.submit(Command::Create(cmd, id)).await? {
            Outcome::Create(out) => Ok(out),
            _ => Err(Error::Internal("CreateEntity answered with another outcome".into())),
        }
    }

    /// GetEntity.
    pub async fn get_entity(&self, cmd: GetEntity) -> Result<Entity> {
        self.store.entity(&cmd.ns, &cmd.id).await?.ok_or_else(|| {
            DomainError::NotFound {
                what: "entity".into(),
                name: cmd.id.to_string(),
            }
            .into()
        })
    }

    /// ListEntities: one page, and whether more may follow. The page is read within
    /// [`super::LIST_READ_BYTES`] (however large its entities, a call holds about that much).
    pub async fn list_entities(&self, q: ListEntities) -> Result<(Vec<Entity>, bool)> {
        let limit = q.limit;
        let (mut page, full) = self
            .store
            .list_entities(&ListEntities { limit: limit + 1, ..q }, super::LIST_READ_BYTES)
            .await?;
        let more = full || page.len() > limit as usize;
        page.truncate(limit as usize);
        Ok((page, more))
    }

    /// Transition: one compare-and-swap. Of N concurrent identical transitions exactly one
    /// applies; the others learn the current state from their error (I4).
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, id = %cmd.entity_id, transition = %cmd.ask.name))]
    pub async fn transition(&self, cmd: Transition) -> Result<TransitionOutcome> {
        match self.pipeline.submit(Command::Transition(cmd)).await? {
            Outcome::Transition(out) => Ok(out),
            _ => Err(Error::Internal("Transition answered with another outcome".into())),
        }
    }
}
