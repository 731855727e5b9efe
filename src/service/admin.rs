//! The operator's levers — ListLeases, ForceReleaseLease, ListMachines, DeleteEntity — and
//! the housekeeper's due work: state timeouts and retention (both are write commands of the
//! pipeline, so they lock, decide and commit like any caller's).

use super::{Coordinator, Error, Result};
use crate::domain::batch::Command;
use crate::domain::command::{DeleteEntity, ForceReleaseLease, ListLeases, ListMachines};
use crate::domain::lease::Lease;
use crate::domain::machine::StoredMachine;
use crate::domain::outcome::{DueOutcome, Outcome};

/// Entities the housekeeper looks at per query of due entities.
const DUE_PAGE: u32 = 256;

/// What one pass over due entities did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DueStats {
    /// Timeouts that fired.
    pub fired: u64,
    /// Finished entities purged past their retention.
    pub purged: u64,
    /// Entities looked at that were not due after all (moved by a caller first, activity
    /// since, a machine redefined).
    pub rescheduled: u64,
}

fn unexpected(what: &str) -> Error {
    Error::Internal(format!("the pipeline answered {what} with another call's outcome"))
}

impl Coordinator {
    /// ListLeases: one page of live leases, and whether more may follow.
    pub async fn list_leases(&self, q: ListLeases) -> Result<(Vec<Lease>, bool)> {
        let now = self.store.now().await?;
        let limit = q.limit;
        let rows = self
            .store
            .list_leases(&ListLeases { limit: limit + 1, ..q }, now)
            .await?;
        let more = rows.len() > limit as usize;
        let page = rows.iter().take(limit as usize).filter_map(|r| r.live(now)).collect();
        Ok((page, more))
    }

    /// ListMachines: one page of machines, and whether more may follow (read within
    /// [`super::LIST_READ_BYTES`]).
    pub async fn list_machines(&self, q: ListMachines) -> Result<(Vec<StoredMachine>, bool)> {
        let limit = q.limit;
        let ns = q.ns.clone();
        let (rows, full) = self
            .store
            .list_machines(&ListMachines { limit: limit + 1, ..q }, super::LIST_READ_BYTES)
            .await?;
        let more = full || rows.len() > limit as usize;
        let page = rows
            .iter()
            .take(limit as usize)
            .map(|r| self.machines.parsed(&ns, r))
            .collect::<Result<_, _>>()?;
        Ok((page, more))
    }

    /// ForceReleaseLease: ends the key's live lease, whoever holds it; logs who asked. The
    /// log line is the record of who did it, so it is written on a task of its own: a
    /// caller that goes away after the commit does not lose it.
    pub async fn force_release_lease(&self, cmd: ForceReleaseLease) -> Result<Option<Lease>> {
        self.detached(|this| async move {
            let (ns, key, by) = (cmd.ns.clone(), cmd.key.clone(), cmd.by.clone());
            let Outcome::ForceRelease(ended) = this.pipeline.submit(Command::ForceRelease(cmd)).await? else {
                return Err(unexpected("ForceReleaseLease"));
            };
            if let Some(lease) = &ended {
                tracing::warn!(
                    %ns, %key, %by, holder = %lease.holder, token = lease.token.get(),
                    "lease force-released by an operator: its token is fenced out"
                );
            }
            Ok(ended)
        })
        .await
    }

    /// DeleteEntity: deletes a finished entity (or, with `force`, any) and its tape; logged
    /// even when the caller goes away after the commit.
    pub async fn delete_entity(&self, cmd: DeleteEntity) -> Result<bool> {
        self.detached(|this| async move {
            let (ns, id, force) = (cmd.ns.clone(), cmd.id.clone(), cmd.force);
            let Outcome::Delete(deleted) = this.pipeline.submit(Command::Delete(cmd)).await? else {
                return Err(unexpected("DeleteEntity"));
            };
            tracing::info!(%ns, %id, force, "entity deleted by an operator");
            Ok(deleted)
        })
        .await
    }

    /// Looks at every entity whose due time has come — fires state timeouts, purges
    /// finished entities past their retention — and returns what it did. Safe to run on
    /// many replicas at once: each look is a write command on the entity's lock that decides
    /// again from the stored row, so a timeout fires once and never after a caller moved
    /// the entity first.
    pub async fn run_due(&self) -> Result<DueStats> {
        let mut stats = DueStats::default();
        loop {
            let now = self.store.now().await?;
            let due = self.store.due(now, DUE_PAGE).await?;
            let full = due.len() == DUE_PAGE as usize;
            let looks = due
                .into_iter()
                .map(|(ns, id)| self.pipeline.submit(Command::Due(ns, id)));
            for outcome in futures::future::join_all(looks).await {
                match outcome? {
                    Outcome::Due(DueOutcome::Fired { .. }) => stats.fired += 1,
                    Outcome::Due(DueOutcome::Purged) => stats.purged += 1,
                    Outcome::Due(DueOutcome::Refused { why, retry_at }) => {
                        tracing::error!(error = %why, retry_at = retry_at.0, "a state timeout's transition was refused");
                        stats.rescheduled += 1;
                    }
                    Outcome::Due(_) => stats.rescheduled += 1,
                    _ => return Err(unexpected("a due entity")),
                }
            }
            if !full {
                return Ok(stats);
            }
        }
    }
}
