//! DefineMachine and GetMachine, and the replica's cache of parsed machines. Machines live
//! in the database, so every replica enforces the same rules.

use super::{Coordinator, Result};
use crate::domain::DomainError;
use crate::domain::command::{DefineMachine, GetMachine};
use crate::domain::machine::StoredMachine;
use crate::domain::names::{Name, Namespace};
use crate::storage::{MachineRow, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Outcome of DefineMachine.
#[derive(Debug, Clone)]
pub struct DefineOutcome {
    /// The stored machine.
    pub machine: StoredMachine,
    /// False when the spec equalled the stored one.
    pub changed: bool,
}

/// Most machines a replica keeps parsed; past this the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// Machines this replica has parsed and validated, by namespace and kind, so a write batch
/// need not read them. Only a hint: a batch commits only while every version it decided
/// with (refusals included) is still the stored one, and a batch that meets a newer one is
/// decided again with the cache cleared.
#[derive(Default)]
pub struct MachineCache {
    map: RwLock<HashMap<(Namespace, Name), StoredMachine>>,
}

impl MachineCache {
    /// The machine `row` stores, parsed once per version.
    pub fn parsed(&self, ns: &Namespace, row: &MachineRow) -> Result<StoredMachine, StoreError> {
        let key = (ns.clone(), row.kind.clone());
        if let Some(m) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(&key)
            && m.version == row.version
        {
            return Ok(m.clone());
        }
        let parsed = crate::storage::parse_machine(row)?;
        self.put(ns, &row.kind, &parsed);
        Ok(parsed)
    }

    /// The cached machine of a kind, if any.
    pub fn get(&self, ns: &Namespace, kind: &Name) -> Option<StoredMachine> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(ns.clone(), kind.clone())).cloned()
    }

    fn put(&self, ns: &Namespace, kind: &Name, m: &StoredMachine) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert((ns.clone(), kind.clone()), m.clone());
    }

    /// Forgets everything (a batch met a redefinition).
    pub fn forget_all(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Coordinator {
    /// Creates or replaces a machine. A redefinition may not drop a state that an entity
    /// is in. The kind's exclusive lock makes it wait for write batches decided with the
    /// current version (they hold it shared to their commit), and holds new ones off.
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, kind = %cmd.machine.kind()))]
    pub async fn define_machine(&self, cmd: DefineMachine) -> Result<DefineOutcome> {
        self.detached(move |this| async move { this.define_once(cmd).await })
            .await
    }

    async fn define_once(&self, cmd: DefineMachine) -> Result<DefineOutcome> {
        let DefineMachine { ns, machine } = cmd;
        let kind = machine.kind().clone();
        let (mut tx, current, now) = self.store.begin_define(&ns, &kind).await?;
        let current = current.map(|row| self.machines.parsed(&ns, &row)).transpose()?;
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
            defined_at: now,
        };
        tx.commit(&ns, &stored).await?;
        self.machines.put(&ns, &kind, &stored);
        Ok(DefineOutcome {
            machine: stored,
            changed: true,
        })
    }

    /// GetMachine.
    pub async fn get_machine(&self, cmd: GetMachine) -> Result<StoredMachine> {
        self.store.machine(&cmd.ns, &cmd.kind).await?.ok_or_else(|| {
            DomainError::NotFound {
                what: "machine".into(),
                name: cmd.kind.to_string(),
            }
            .into()
        })
    }
}
