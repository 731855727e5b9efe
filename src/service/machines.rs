//! DefineMachine and GetMachine. Machines live in the database, so every replica enforces
//! the same rules.

use super::{Coordinator, Result};
use crate::domain::DomainError;
use crate::domain::machine::Machine;
use crate::domain::names::{Name, Namespace, lock_key, lock_space};
use crate::storage::StoredMachine;
use std::sync::Arc;

/// Outcome of DefineMachine.
#[derive(Debug, Clone)]
pub struct DefineOutcome {
    /// The stored machine.
    pub machine: StoredMachine,
    /// False when the spec equalled the stored one.
    pub changed: bool,
}

impl Coordinator {
    /// Creates or replaces a machine. A redefinition may not drop a state that an entity
    /// is in. The machine's exclusive lock makes it wait for in-flight transitions of the
    /// kind (they hold it shared), and holds new ones off until it commits.
    #[tracing::instrument(skip_all, fields(ns = %ns, kind = machine.kind()))]
    pub async fn define_machine(&self, ns: Namespace, machine: Machine) -> Result<DefineOutcome> {
        let kind = Name::parse("spec.kind", machine.kind().to_string())?;
        let mut tx = self
            .store
            .begin(lock_key(&ns, lock_space::MACHINE, kind.as_str()))
            .await?;
        let current = tx.machine(&ns, &kind).await?;
        if let Some(cur) = &current {
            if cur.machine.spec() == machine.spec() {
                return Ok(DefineOutcome {
                    machine: cur.clone(),
                    changed: false,
                });
            }
            let removed = cur.machine.removed_states(&machine);
            if let Some(state) = tx.state_in_use(&ns, &kind, &removed).await? {
                return Err(DomainError::StateInUse {
                    kind: kind.to_string(),
                    state,
                }
                .into());
            }
        }
        let stored = StoredMachine {
            machine: Arc::new(machine),
            version: current.map_or(1, |c| c.version + 1),
            defined_at: tx.now(),
        };
        tx.put_machine(&ns, &stored).await?;
        tx.commit().await?;
        Ok(DefineOutcome {
            machine: stored,
            changed: true,
        })
    }

    /// GetMachine.
    pub async fn get_machine(&self, ns: Namespace, kind: Name) -> Result<StoredMachine> {
        self.store.machine(&ns, &kind).await?.ok_or_else(|| {
            DomainError::NotFound {
                what: "machine",
                name: kind.to_string(),
            }
            .into()
        })
    }
}
