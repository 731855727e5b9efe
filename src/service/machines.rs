//! DefineMachine and GetMachine. Machines live in the database, so every replica enforces
//! the same rules.

use super::{Coordinator, Error, Result};
use crate::domain::DomainError;
use crate::domain::command::{DefineMachine, GetMachine};
use crate::domain::machine::StoredMachine;
use crate::domain::names::{Name, Namespace, lock_key, lock_space};
use crate::storage::WriteTx;
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

/// Machines this replica has read, parsed and validated, by namespace and kind, so a
/// transition does not read and parse its machine every time. Only a hint: a write planned
/// with a cached machine commits only while that version is still the stored one
/// ([`WriteTx::expect_machine`]), and a refusal planned with one is checked against the
/// stored version before it is answered.
#[derive(Default)]
pub struct MachineCache {
    map: RwLock<HashMap<(Namespace, Name), StoredMachine>>,
}

impl MachineCache {
    fn get(&self, ns: &Namespace, kind: &Name) -> Option<StoredMachine> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(ns.clone(), kind.clone())).cloned()
    }

    fn put(&self, ns: &Namespace, kind: &Name, m: &StoredMachine) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        let slot = map.entry((ns.clone(), kind.clone())).or_insert_with(|| m.clone());
        if slot.version < m.version {
            *slot = m.clone();
        }
    }

    fn forget(&self, ns: &Namespace, kind: &Name) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&(ns.clone(), kind.clone()));
    }
}

/// A machine to plan a write with.
pub(super) struct Planned {
    /// The machine.
    pub stored: StoredMachine,
    /// True when it came from the cache (a refusal must be re-checked, see [`Coordinator::confirm_refusal`]).
    pub cached: bool,
}

/// Attempts of a call whose machine keeps being redefined under it.
const ATTEMPTS: u32 = 3;

impl Coordinator {
    /// The kind's machine for a write in `tx`: the cached copy when there is one. Either
    /// way the commit is made conditional on its version (I4 under redefinition).
    pub(super) async fn machine_for_write(&self, tx: &mut dyn WriteTx, ns: &Namespace, kind: &Name) -> Result<Planned> {
        let planned = match self.machines.get(ns, kind) {
            Some(stored) => Planned { stored, cached: true },
            None => {
                let stored = tx.machine(ns, kind).await?.ok_or_else(|| DomainError::NotFound {
                    what: "machine",
                    name: kind.to_string(),
                })?;
                self.machines.put(ns, kind, &stored);
                Planned { stored, cached: false }
            }
        };
        let lock = lock_key(ns, lock_space::MACHINE, kind.as_str());
        tx.expect_machine(lock, ns, kind, planned.stored.version)
            .await
            .map_err(|e| self.on_conflict(ns, kind, e.into()))?;
        Ok(planned)
    }

    /// Before refusing a call (or answering it as a no-op) on the word of a cached machine,
    /// checks that the machine is still current; when it is not, the call is run again.
    pub(super) async fn confirm_refusal(
        &self,
        tx: &mut dyn WriteTx,
        ns: &Namespace,
        kind: &Name,
        planned: &Planned,
    ) -> Result<()> {
        if !planned.cached {
            return Ok(());
        }
        // (On Postgres this read sends the pending machine check first, which may itself
        // report the conflict.)
        let stored = tx
            .machine(ns, kind)
            .await
            .map_err(|e| self.on_conflict(ns, kind, e.into()))?;
        match stored {
            Some(stored) if stored.version == planned.stored.version => Ok(()),
            _ => Err(self.on_conflict(ns, kind, Error::Conflict(format!("machine {kind} was redefined")))),
        }
    }

    /// Forgets a cached machine that a conflict showed to be stale.
    pub(super) fn on_conflict(&self, ns: &Namespace, kind: &Name, e: Error) -> Error {
        if matches!(e, Error::Conflict(_)) {
            self.machines.forget(ns, kind);
        }
        e
    }

    /// Runs `call` again (from its start) while it meets a machine redefined under it.
    pub(super) async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(Error::Conflict(m)) if attempt < ATTEMPTS => {
                    tracing::debug!(conflict = %m, attempt, "machine changed during the call; running it again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Creates or replaces a machine. A redefinition may not drop a state that an entity
    /// is in. The machine's exclusive lock makes it wait for in-flight transitions of the
    /// kind (they hold it shared), and holds new ones off until it commits.
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, kind = %cmd.machine.kind()))]
    pub async fn define_machine(&self, cmd: DefineMachine) -> Result<DefineOutcome> {
        self.detached(move |this| async move { this.define_once(cmd).await })
            .await
    }

    async fn define_once(&self, cmd: DefineMachine) -> Result<DefineOutcome> {
        let DefineMachine { ns, machine } = cmd;
        let kind = machine.kind().clone();
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
                what: "machine",
                name: cmd.kind.to_string(),
            }
            .into()
        })
    }
}
