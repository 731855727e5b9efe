//! A batch of write commands, decided together (group commit). The storage layer loads,
//! in one round trip, every row the batch's commands read ([`Reads`]) after taking their
//! keys' locks ([`Lock`]); [`Batch::apply`] then runs each command, in arrival order,
//! against those rows in memory — a later command on a key sees what an earlier one did —
//! and collects what the batch writes ([`Writes`]); the storage layer writes it all and
//! commits in one more round trip. The decisions are the domain's own functions (leases,
//! machines, the tape), so both backends share one predicate per rule.

use super::DomainError;
use super::command::{
    AcquireLease, AppendEvents, CreateEntity, DeleteEntity, ForceReleaseLease, ReleaseLease, RenewLease, Transition,
};
use super::entity::{Entity, EntityChange};
use super::lease::{self, AcquireDecision, Fence, LeaseRow};
use super::machine::{DedupPolicy, DuePlan, StoredMachine, TransitionPlan, plan_create, plan_due, plan_transition};
use super::names::{DedupKey, EntityId, LeaseKey, Name, Namespace, RequestId, lock_key, lock_space};
use super::outcome::{AcquireOutcome, AppendOutcome, CreateOutcome, DueOutcome, Outcome, TransitionOutcome};
use super::tape::{AppendPlan, StoredEvent, plan_append};
use super::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A write command, as the commit pipeline carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// AcquireLease (one attempt: the wait for a held lease happens between attempts).
    Acquire(AcquireLease),
    /// RenewLease.
    Renew(RenewLease),
    /// ReleaseLease.
    Release(ReleaseLease),
    /// CreateEntity, with its id decided once (the caller's, or a generated one), so a
    /// batch that is run again creates the same entity.
    Create(CreateEntity, EntityId),
    /// Transition.
    Transition(Transition),
    /// AppendEvents.
    Append(AppendEvents),
    /// The housekeeper's look at an entity whose due time came: fire its state's timeout,
    /// purge it past retention, or note when to look again.
    Due(Namespace, EntityId),
    /// DeleteEntity.
    Delete(DeleteEntity),
    /// ForceReleaseLease.
    ForceRelease(ForceReleaseLease),
}

/// A lock a command takes for its batch: a 64-bit key (see [`lock_key`]), shared or
/// exclusive. Writers of a key take it exclusively; a fenced write takes its lease key's
/// lock shared, so no grant of that key can commit between its check and its commit (I3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lock {
    /// The key.
    pub key: i64,
    /// Shared (fence) or exclusive (writer).
    pub shared: bool,
}

impl Lock {
    fn exclusive(key: i64) -> Self {
        Self { key, shared: false }
    }

    /// Every lock of `commands`, once each, in the one global order (by key) that keeps
    /// batches of different replicas from deadlocking; a key wanted both ways is exclusive.
    pub fn union<'a>(commands: impl IntoIterator<Item = &'a Command>) -> Vec<Lock> {
        let mut keys: BTreeMap<i64, bool> = BTreeMap::new();
        for lock in commands.into_iter().flat_map(Command::locks) {
            let shared = keys.entry(lock.key).or_insert(true);
            *shared &= lock.shared;
        }
        keys.into_iter().map(|(key, shared)| Lock { key, shared }).collect()
    }
}

/// The rows a batch reads before deciding, all in its first round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// Entities by id (their machines come with them).
    pub entities: BTreeSet<(Namespace, EntityId)>,
    /// Lease rows (leases written, fences checked).
    pub leases: BTreeSet<(Namespace, LeaseKey)>,
    /// Stored outcomes of request ids (I10).
    pub requests: BTreeSet<(Namespace, RequestId)>,
    /// Entities by dedup key (I9).
    pub dedup: BTreeSet<(Namespace, Name, DedupKey)>,
    /// Machines by kind: those a command names (CreateEntity) that the replica has not
    /// cached. The machine of an entity read is known once the entity is.
    pub machines: BTreeSet<(Namespace, Name)>,
}

/// A request id's stored outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The fingerprint of the call that stored it ([`Command::call_id`]).
    pub call: String,
    /// Its outcome, as JSON.
    pub outcome: String,
}

/// How long a timeout whose transition was refused waits before it is tried again.
const REFUSED_DUE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// How a stored refusal begins: `{"refused": <DomainError>}` (an outcome never has that key).
const REFUSED: &str = "{\"refused\":";

/// A refusal as stored under a request id.
#[derive(serde::Serialize, serde::Deserialize)]
struct Refused {
    refused: DomainError,
}

/// An answer as stored under a request id: the outcome's JSON, or the refusal's.
fn stored_answer(answer: &Result<Outcome, DomainError>) -> String {
    match answer {
        Ok(outcome) => outcome.to_json(),
        Err(e) => serde_json::to_string(&Refused { refused: e.clone() }).unwrap_or_else(|_| "{}".into()),
    }
}

/// The rows a batch loaded, updated in memory as its commands apply.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Store time of the batch (read once its locks were held).
    pub now: Timestamp,
    /// Entities.
    pub entities: HashMap<(Namespace, EntityId), Entity>,
    /// Lease rows.
    pub leases: HashMap<(Namespace, LeaseKey), LeaseRow>,
    /// Request outcomes.
    pub requests: HashMap<(Namespace, RequestId), StoredRequest>,
    /// Dedup keys taken, and by which entity.
    pub dedup: HashMap<(Namespace, Name, DedupKey), EntityId>,
    /// Machines, by kind.
    pub machines: HashMap<(Namespace, Name), StoredMachine>,
}

impl Rows {
    /// The machines the commands' entities and creates need that these rows do not hold.
    pub fn missing_machines(&self, commands: &[Command]) -> BTreeSet<(Namespace, Name)> {
        let mut kinds: BTreeSet<(Namespace, Name)> = BTreeSet::new();
        for c in commands {
            match c {
                Command::Create(c, _) => drop(kinds.insert((c.ns.clone(), c.kind.clone()))),
                Command::Transition(Transition { ns, entity_id: id, .. }) | Command::Due(ns, id) => {
                    if let Some(e) = self.entities.get(&(ns.clone(), id.clone())) {
                        kinds.insert((ns.clone(), e.kind.clone()));
                    }
                }
                _ => {}
            }
        }
        kinds.retain(|k| !self.machines.contains_key(k));
        kinds
    }
}

/// Everything a batch writes, in its second round trip, with its commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// The batch's store time (request outcomes are stamped with it, for their retention).
    pub now: Timestamp,
    /// Each lease row written, as it is after the batch (a release clears the holder).
    pub leases: BTreeMap<(Namespace, LeaseKey), LeaseRow>,
    /// Each entity written, as it is after the batch, and whether the batch created it.
    pub entities: BTreeMap<(Namespace, EntityId), (Entity, bool)>,
    /// Appended events, in order.
    pub events: Vec<(Namespace, EntityId, StoredEvent)>,
    /// Request outcomes to store.
    pub requests: Vec<(Namespace, RequestId, StoredRequest)>,
    /// Leases a release ended (their waiters are woken after commit).
    pub freed: Vec<(Namespace, LeaseKey)>,
    /// Entities deleted with their tapes (written before the inserts: an id deleted and
    /// created again in one batch is a new entity).
    pub deleted: BTreeSet<(Namespace, EntityId)>,
    /// The machine versions writes were decided with: the commit holds only while each is
    /// still the stored one (a redefinition in between makes the batch run again).
    pub machines: BTreeSet<(Namespace, Name, u64)>,
}

impl Writes {
    /// True when the batch writes nothing (every command was refused, read-only or replayed).
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
            && self.entities.is_empty()
            && self.events.is_empty()
            && self.requests.is_empty()
            && self.deleted.is_empty()
    }
}

fn fence_lock(ns: &Namespace, fence: &Option<Fence>) -> Option<Lock> {
    fence.as_ref().map(|f| Lock {
        key: lock_key(ns, lock_space::LEASE, f.key.as_str()),
        shared: true,
    })
}

impl Command {
    /// The namespace.
    pub fn ns(&self) -> &Namespace {
        match self {
            Command::Acquire(c) => &c.ns,
            Command::Renew(c) => &c.ns,
            Command::Release(c) => &c.ns,
            Command::Create(c, _) => &c.ns,
            Command::Transition(c) => &c.ns,
            Command::Append(c) => &c.ns,
            Command::Due(ns, _) => ns,
            Command::Delete(c) => &c.ns,
            Command::ForceRelease(c) => &c.ns,
        }
    }

    /// The request id, if any.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Command::Acquire(c) => c.request_id.as_ref(),
            Command::Renew(c) => c.request_id.as_ref(),
            Command::Release(c) => c.request_id.as_ref(),
            Command::Create(c, _) => c.request_id.as_ref(),
            Command::Transition(c) => c.request_id.as_ref(),
            Command::Append(c) => c.request_id.as_ref(),
            Command::Due(..) => None,
            Command::Delete(c) => c.request_id.as_ref(),
            Command::ForceRelease(c) => c.request_id.as_ref(),
        }
    }

    /// The lock its writes serialize on: commands with the same key commit in the order
    /// they arrived (a replica runs them in one lane).
    pub fn key(&self) -> i64 {
        self.locks()[0].key
    }

    /// The locks it needs, its own key first.
    pub fn locks(&self) -> Vec<Lock> {
        let ns = self.ns();
        let lease = |key: &LeaseKey| Lock::exclusive(lock_key(ns, lock_space::LEASE, key.as_str()));
        let entity = |id: &EntityId| Lock::exclusive(lock_key(ns, lock_space::ENTITY, id.as_str()));
        match self {
            Command::Acquire(c) => vec![lease(&c.key)],
            Command::Renew(c) => vec![lease(&c.key)],
            Command::Release(c) => vec![lease(&c.key)],
            Command::ForceRelease(c) => vec![lease(&c.key)],
            Command::Due(_, id) => vec![entity(id)],
            Command::Delete(c) => vec![entity(&c.id)],
            Command::Create(c, id) => {
                // Whatever makes two creates "the same" is what they serialize on: the dedup
                // key (I9), else the request id of a create with no id of its own (so its
                // retries cannot both create), and always the id it inserts.
                let mut locks = vec![];
                if let Some(d) = &c.dedup_key {
                    let key = format!("{}\0{}", c.kind, d);
                    locks.push(Lock::exclusive(lock_key(ns, lock_space::DEDUP, &key)));
                } else if let (None, Some(rid)) = (&c.id, &c.request_id) {
                    locks.push(Lock::exclusive(lock_key(ns, lock_space::REQUEST, rid.as_str())));
                }
                locks.push(entity(id));
                locks.extend(fence_lock(ns, &c.fence));
                locks
            }
            Command::Transition(c) => [Some(entity(&c.entity_id)), fence_lock(ns, &c.fence)]
                .into_iter()
                .flatten()
                .collect(),
            Command::Append(c) => [Some(entity(&c.entity_id)), fence_lock(ns, &c.fence)]
                .into_iter()
                .flatten()
                .collect(),
        }
    }

    /// Adds the rows it reads to `reads`.
    pub fn reads(&self, reads: &mut Reads) {
        let ns = self.ns().clone();
        if let Some(rid) = self.request_id() {
            reads.requests.insert((ns.clone(), rid.clone()));
        }
        let fence = |reads: &mut Reads, f: &Option<Fence>| {
            if let Some(f) = f {
                reads.leases.insert((ns.clone(), f.key.clone()));
            }
        };
        match self {
            Command::Acquire(c) => drop(reads.leases.insert((ns.clone(), c.key.clone()))),
            Command::Renew(c) => drop(reads.leases.insert((ns.clone(), c.key.clone()))),
            Command::Release(c) => drop(reads.leases.insert((ns.clone(), c.key.clone()))),
            Command::ForceRelease(c) => drop(reads.leases.insert((ns.clone(), c.key.clone()))),
            Command::Due(_, id) => drop(reads.entities.insert((ns.clone(), id.clone()))),
            Command::Delete(c) => drop(reads.entities.insert((ns.clone(), c.id.clone()))),
            Command::Create(c, id) => {
                reads.entities.insert((ns.clone(), id.clone()));
                reads.machines.insert((ns.clone(), c.kind.clone()));
                if let Some(d) = &c.dedup_key {
                    reads.dedup.insert((ns.clone(), c.kind.clone(), d.clone()));
                }
                fence(reads, &c.fence);
            }
            Command::Transition(c) => {
                reads.entities.insert((ns.clone(), c.entity_id.clone()));
                fence(reads, &c.fence);
            }
            Command::Append(c) => {
                reads.entities.insert((ns.clone(), c.entity_id.clone()));
                fence(reads, &c.fence);
            }
        }
    }

    /// The call a request id's outcome is stored under (I10): a retry matches it exactly, a
    /// different request under the same id does not and is refused instead of answered with
    /// another call's outcome. See [`super::fingerprint::call_id`].
    pub fn call_id(&self) -> String {
        super::fingerprint::call_id(self)
    }

    /// Roughly how many bytes it writes (batches are capped by bytes as well as count).
    pub fn size(&self) -> usize {
        let events = |e: &[super::tape::EventInput]| e.iter().map(|e| e.payload.len() + 64).sum::<usize>();
        let fields = |f: &super::entity::Fields| f.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        256 + match self {
            Command::Create(c, _) => fields(&c.fields),
            Command::Transition(c) => {
                events(&c.ask.events) + c.ask.final_event.payload.len() + fields(&c.ask.set_fields)
            }
            Command::Append(c) => events(&c.events),
            _ => 0,
        }
    }

    /// Removes its fence: the fault suite's canary (a build that checks no fence).
    pub fn without_fence(self) -> Self {
        match self {
            Command::Create(c, id) => Command::Create(CreateEntity { fence: None, ..c }, id),
            Command::Transition(c) => Command::Transition(Transition { fence: None, ..c }),
            Command::Append(c) => Command::Append(AppendEvents { fence: None, ..c }),
            other => other,
        }
    }
}

fn entity_not_found(id: &EntityId) -> DomainError {
    DomainError::NotFound {
        what: "entity".into(),
        name: id.to_string(),
    }
}

/// A batch being decided: the rows it loaded, changed in memory by each applied command,
/// and what it will write.
#[derive(Debug)]
pub struct Batch {
    rows: Rows,
    writes: Writes,
}

impl Batch {
    /// A batch over the rows its commands read.
    pub fn new(rows: Rows) -> Self {
        Self {
            rows,
            writes: Writes::default(),
        }
    }

    /// Store time of the batch.
    pub fn now(&self) -> Timestamp {
        self.rows.now
    }

    /// Decides one command against the rows as the commands before it left them, and records
    /// what it writes. A refusal writes nothing and costs the other commands nothing.
    pub fn apply(&mut self, command: &Command) -> Result<Outcome, DomainError> {
        let call = match command.request_id() {
            Some(_) => command.call_id(),
            None => String::new(),
        };
        if let Some(replayed) = self.replay(command, &call)? {
            return replayed;
        }
        let answer = match command {
            Command::Acquire(c) => Ok(self.acquire(c)),
            Command::Renew(c) => self.renew(c),
            Command::Release(c) => Ok(self.release(c)),
            Command::Create(c, id) => self.create(c, id),
            Command::Transition(c) => self.transition(c),
            Command::Append(c) => self.append(c),
            Command::Due(ns, id) => self.due(ns, id),
            Command::Delete(c) => self.delete(c),
            Command::ForceRelease(c) => Ok(self.force_release(c)),
        };
        // The first answer decided for a request id is its answer for good (I10), a refusal,
        // a no-op or a busy lease as much as a write: a retry may be decided before the
        // call it retries (still queued on a replica whose caller gave up), and that call
        // must then replay the answer the client got, not apply. The one exception is a
        // waiting acquire's busy try: the wait goes on, and the try after it answers.
        let remember = match (command, &answer) {
            (Command::Acquire(c), Ok(Outcome::Acquire(o))) => o.acquired || c.wait.is_zero(),
            _ => true,
        };
        if remember && let Some(rid) = command.request_id() {
            let stored = StoredRequest {
                call,
                outcome: stored_answer(&answer),
            };
            let key = (command.ns().clone(), rid.clone());
            self.rows.requests.insert(key.clone(), stored.clone());
            self.writes.requests.push((key.0, key.1, stored));
        }
        answer
    }

    /// What the batch writes.
    pub fn finish(self) -> Writes {
        Writes {
            now: self.rows.now,
            ..self.writes
        }
    }

    /// The stored answer of this command's request id (I10), or a refusal when the id was
    /// used for a different call; `None` when the id is new (or the call has none).
    #[allow(clippy::type_complexity)]
    fn replay(&self, command: &Command, call: &str) -> Result<Option<Result<Outcome, DomainError>>, DomainError> {
        let Some(rid) = command.request_id() else {
            return Ok(None);
        };
        let Some(stored) = self.rows.requests.get(&(command.ns().clone(), rid.clone())) else {
            return Ok(None);
        };
        if stored.call != call {
            return Err(DomainError::RequestIdReused {
                request_id: rid.to_string(),
                method: stored.call.clone(),
            });
        }
        let unreadable =
            |e: serde_json::Error| DomainError::invalid("request_id", format!("stored outcome is unreadable: {e}"));
        let json = &stored.outcome;
        if json.starts_with(REFUSED) {
            let refused: Refused = serde_json::from_str(json).map_err(unreadable)?;
            return Ok(Some(Err(refused.refused)));
        }
        Ok(Some(Ok(match command {
            Command::Acquire(_) => Outcome::Acquire(serde_json::from_str(json).map_err(unreadable)?),
            Command::Renew(_) => Outcome::Renew(serde_json::from_str(json).map_err(unreadable)?),
            Command::Release(_) => Outcome::Release(serde_json::from_str(json).map_err(unreadable)?),
            Command::Create(..) => Outcome::Create(serde_json::from_str(json).map_err(unreadable)?),
            Command::Transition(_) => Outcome::Transition(serde_json::from_str(json).map_err(unreadable)?),
            Command::Append(_) => Outcome::Append(serde_json::from_str(json).map_err(unreadable)?),
            Command::Due(..) => Outcome::Due(serde_json::from_str(json).map_err(unreadable)?),
            Command::Delete(_) => Outcome::Delete(serde_json::from_str(json).map_err(unreadable)?),
            Command::ForceRelease(_) => Outcome::ForceRelease(serde_json::from_str(json).map_err(unreadable)?),
        })))
    }

    /// The fence check of a fenced write (I3), against the lease row as it is at this point
    /// of the batch.
    fn check_fence(&self, ns: &Namespace, fence: &Option<Fence>) -> Result<(), DomainError> {
        if let Some(f) = fence {
            let row = self.rows.leases.get(&(ns.clone(), f.key.clone()));
            lease::check_fence(row, &f.key, f.token, self.rows.now)?;
        }
        Ok(())
    }

    fn put_lease(&mut self, ns: &Namespace, row: LeaseRow) {
        let key = (ns.clone(), row.key.clone());
        self.rows.leases.insert(key.clone(), row.clone());
        self.writes.leases.insert(key, row);
    }

    fn acquire(&mut self, c: &AcquireLease) -> Outcome {
        let now = self.rows.now;
        let row = self.rows.leases.get(&(c.ns.clone(), c.key.clone()));
        match lease::decide_acquire(row, &c.key, &c.holder, c.ttl, now) {
            AcquireDecision::Busy(lease) => Outcome::Acquire(AcquireOutcome {
                acquired: false,
                lease,
                now,
            }),
            AcquireDecision::Grant(lease) => {
                self.put_lease(&c.ns, LeaseRow::granted(&lease));
                Outcome::Acquire(AcquireOutcome {
                    acquired: true,
                    lease,
                    now,
                })
            }
        }
    }

    fn renew(&mut self, c: &RenewLease) -> Result<Outcome, DomainError> {
        let row = self.rows.leases.get(&(c.ns.clone(), c.key.clone()));
        let lease = lease::decide_renew(row, &c.key, c.token, c.ttl, self.rows.now)?;
        self.put_lease(&c.ns, LeaseRow::granted(&lease));
        Ok(Outcome::Renew(lease))
    }

    fn release(&mut self, c: &ReleaseLease) -> Outcome {
        let key = (c.ns.clone(), c.key.clone());
        let row = self.rows.leases.get(&key);
        if !lease::decide_release(row, &c.key, c.token, self.rows.now) {
            return Outcome::Release(false);
        }
        if let Some(row) = row.cloned() {
            // The row (and its token counter, I2) stays; only the holder goes.
            self.put_lease(&c.ns, LeaseRow { holder: None, ..row });
        }
        self.writes.freed.push(key);
        Outcome::Release(true)
    }

    /// The kind's machine, and a note that this batch decided with its version: the commit
    /// holds only while that version is the stored one — for a refusal as for a write, so a
    /// replica's cached machine can never answer for a newer definition.
    fn machine(&mut self, ns: &Namespace, kind: &Name) -> Result<StoredMachine, DomainError> {
        let machine = self
            .rows
            .machines
            .get(&(ns.clone(), kind.clone()))
            .cloned()
            .ok_or_else(|| DomainError::NotFound {
                what: "machine".into(),
                name: kind.to_string(),
            })?;
        self.writes.machines.insert((ns.clone(), kind.clone(), machine.version));
        Ok(machine)
    }

    fn create(&mut self, c: &CreateEntity, id: &EntityId) -> Result<Outcome, DomainError> {
        let machine = self.machine(&c.ns, &c.kind)?;
        let entity = plan_create(
            &machine.machine,
            id.clone(),
            c.dedup_key.clone(),
            c.fields.clone(),
            self.rows.now,
        )?;
        self.check_fence(&c.ns, &c.fence)?;
        if let Some(d) = &c.dedup_key
            && let Some(existing) = self.rows.dedup.get(&(c.ns.clone(), c.kind.clone(), d.clone()))
        {
            let entity = self.rows.entities.get(&(c.ns.clone(), existing.clone())).cloned();
            // Dedup rows are loaded with their entity; a missing one is a corrupt load.
            let entity = entity.ok_or_else(|| entity_not_found(existing))?;
            if machine.machine.dedup() == DedupPolicy::Forever || entity.final_seq.is_none() {
                return Ok(Outcome::Create(CreateOutcome { created: false, entity }));
            }
            // `while_active`, and its entity is finished: that entity gives the key up (the
            // unique index holds one entity per key) and a new one takes it below.
            self.put_entity(
                &c.ns,
                Entity {
                    dedup_key: None,
                    ..entity
                },
            );
        }
        let key = (c.ns.clone(), id.clone());
        if self.rows.entities.contains_key(&key) {
            return Err(DomainError::AlreadyExists {
                what: "entity".into(),
                name: id.to_string(),
            });
        }
        if let Some(d) = &c.dedup_key {
            self.rows
                .dedup
                .insert((c.ns.clone(), c.kind.clone(), d.clone()), id.clone());
        }
        self.rows.entities.insert(key.clone(), entity.clone());
        self.writes.entities.insert(key, (entity.clone(), true));
        Ok(Outcome::Create(CreateOutcome { created: true, entity }))
    }

    /// The entity `id`, as it is at this point of the batch.
    fn entity(&self, ns: &Namespace, id: &EntityId) -> Result<Entity, DomainError> {
        self.rows
            .entities
            .get(&(ns.clone(), id.clone()))
            .cloned()
            .ok_or_else(|| entity_not_found(id))
    }

    /// Records what the domain planned for one entity.
    fn write_change(&mut self, ns: &Namespace, change: EntityChange) {
        let EntityChange { entity, events } = change;
        let id = entity.id.clone();
        self.put_entity(ns, entity);
        self.writes
            .events
            .extend(events.into_iter().map(|e| (ns.clone(), id.clone(), e)));
    }

    /// Records an entity as it is now (inserted if this batch created it, else updated).
    fn put_entity(&mut self, ns: &Namespace, entity: Entity) {
        let key = (ns.clone(), entity.id.clone());
        let created_here = self.writes.entities.get(&key).is_some_and(|(_, new)| *new);
        self.rows.entities.insert(key.clone(), entity.clone());
        self.writes.entities.insert(key, (entity, created_here));
    }

    /// Deletes an entity and its tape: whatever this batch wrote of it goes, and the
    /// stored rows are deleted.
    fn remove_entity(&mut self, ns: &Namespace, id: &EntityId) {
        let key = (ns.clone(), id.clone());
        self.rows.entities.remove(&key);
        self.rows.dedup.retain(|(n, _, _), holder| !(n == ns && holder == id));
        let created_here = matches!(self.writes.entities.remove(&key), Some((_, true)));
        self.writes.events.retain(|(n, i, _)| !(n == ns && i == id));
        if !created_here {
            self.writes.deleted.insert(key);
        }
    }

    /// The housekeeper's look at a due entity: the machine, as it is now, decides.
    fn due(&mut self, ns: &Namespace, id: &EntityId) -> Result<Outcome, DomainError> {
        let Ok(entity) = self.entity(ns, id) else {
            return Ok(Outcome::Due(DueOutcome::Nothing));
        };
        let machine = self.machine(ns, &entity.kind)?;
        let outcome = match plan_due(&machine.machine, &entity, self.rows.now) {
            DuePlan::Clear => {
                if entity.due_at.is_some() {
                    self.put_entity(ns, Entity { due_at: None, ..entity });
                }
                DueOutcome::Nothing
            }
            DuePlan::Later(at) => {
                if entity.due_at != Some(at) {
                    self.put_entity(
                        ns,
                        Entity {
                            due_at: Some(at),
                            ..entity
                        },
                    );
                }
                DueOutcome::Later(at)
            }
            DuePlan::Purge => {
                self.remove_entity(ns, id);
                DueOutcome::Purged
            }
            DuePlan::Fire(ask) => match plan_transition(&machine.machine, &entity, &ask, self.rows.now) {
                Ok(TransitionPlan::Noop) => DueOutcome::Nothing,
                Ok(TransitionPlan::Apply(change)) => {
                    let seqs = change.seqs();
                    self.write_change(ns, change);
                    DueOutcome::Fired {
                        transition: ask.name.to_string(),
                        from: entity.state,
                        seqs,
                    }
                }
                Err(refused) => {
                    // Unreachable with a validated machine; if it happens anyway, the entity
                    // must not hold up every timeout due after it: look again later.
                    let at = self.rows.now.plus(REFUSED_DUE_RETRY);
                    self.put_entity(
                        ns,
                        Entity {
                            due_at: Some(at),
                            ..entity
                        },
                    );
                    DueOutcome::Refused {
                        why: refused.to_string(),
                        retry_at: at,
                    }
                }
            },
        };
        Ok(Outcome::Due(outcome))
    }

    fn delete(&mut self, c: &DeleteEntity) -> Result<Outcome, DomainError> {
        let entity = self.entity(&c.ns, &c.id)?;
        if entity.final_seq.is_none() && !c.force {
            return Err(DomainError::EntityActive {
                id: c.id.to_string(),
                current_state: entity.state,
                version: entity.version,
            });
        }
        self.remove_entity(&c.ns, &c.id);
        Ok(Outcome::Delete(true))
    }

    fn force_release(&mut self, c: &ForceReleaseLease) -> Outcome {
        let key = (c.ns.clone(), c.key.clone());
        let Some(row) = self.rows.leases.get(&key).cloned() else {
            return Outcome::ForceRelease(None);
        };
        let Some(ended) = row.live(self.rows.now) else {
            return Outcome::ForceRelease(None);
        };
        // As a release: the row and its token counter stay (I2), so the next grant's token
        // is higher and every write fenced with the ended one fails (I3).
        self.put_lease(&c.ns, LeaseRow { holder: None, ..row });
        self.writes.freed.push(key);
        Outcome::ForceRelease(Some(ended))
    }

    fn transition(&mut self, c: &Transition) -> Result<Outcome, DomainError> {
        let entity = self.entity(&c.ns, &c.entity_id)?;
        let machine = self.machine(&c.ns, &entity.kind)?;
        let plan = plan_transition(&machine.machine, &entity, &c.ask, self.rows.now);
        self.check_fence(&c.ns, &c.fence)?;
        let change = match plan? {
            TransitionPlan::Noop => {
                return Ok(Outcome::Transition(TransitionOutcome {
                    applied: false,
                    entity,
                    seqs: vec![],
                }));
            }
            TransitionPlan::Apply(change) => change,
        };
        let outcome = TransitionOutcome {
            applied: true,
            seqs: change.seqs(),
            entity: change.entity.clone(),
        };
        self.write_change(&c.ns, change);
        Ok(Outcome::Transition(outcome))
    }

    fn append(&mut self, c: &AppendEvents) -> Result<Outcome, DomainError> {
        let entity = self.entity(&c.ns, &c.entity_id)?;
        self.check_fence(&c.ns, &c.fence)?;
        let change = match plan_append(&entity, &c.events, c.if_sealed, self.rows.now)? {
            AppendPlan::Dropped { final_seq } => {
                return Ok(Outcome::Append(AppendOutcome {
                    seqs: vec![],
                    dropped: true,
                    final_seq: Some(final_seq),
                }));
            }
            AppendPlan::Append(change) => change,
        };
        let outcome = AppendOutcome {
            seqs: change.seqs(),
            dropped: false,
            final_seq: None,
        };
        self.write_change(&c.ns, change);
        Ok(Outcome::Append(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::command::{AcquireLease, AppendEvents, CreateEntity, Transition};
    use crate::domain::entity::Fields;
    use crate::domain::lease::Ttl;
    use crate::domain::machine::plan::tests::{ask, run_machine};
    use crate::domain::names::Holder;
    use crate::domain::tape::{EventInput, IfSealed};
    use std::sync::Arc;
    use std::time::Duration;

    fn ns() -> Namespace {
        Namespace::parse("n", "t".into()).unwrap()
    }
    fn id(s: &str) -> EntityId {
        EntityId::parse("id", s.into()).unwrap()
    }
    fn kind() -> Name {
        Name::parse("k", "workflow_run".into()).unwrap()
    }
    fn key(s: &str) -> LeaseKey {
        LeaseKey::parse("k", s.into()).unwrap()
    }
    fn rid(s: &str) -> Option<RequestId> {
        Some(RequestId::parse("r", s.into()).unwrap())
    }

    fn rows() -> Rows {
        let machine = StoredMachine {
            machine: Arc::new(run_machine()),
            version: 1,
            defined_at: Timestamp(0),
        };
        Rows {
            now: Timestamp(1_000_000_000),
            machines: HashMap::from([((ns(), kind()), machine)]),
            ..Rows::default()
        }
    }

    fn create(e: &str, dedup: Option<&str>, request: Option<&str>) -> Command {
        Command::Create(
            CreateEntity {
                ns: ns(),
                kind: kind(),
                id: Some(id(e)),
                dedup_key: dedup.map(|d| DedupKey::parse("d", d.into()).unwrap()),
                fields: Fields::new(),
                fence: None,
                request_id: request.and_then(rid),
            },
            id(e),
        )
    }

    fn transition(e: &str, name: &str, fence: Option<(&str, u64)>, request: Option<&str>) -> Command {
        Command::Transition(Transition {
            ns: ns(),
            entity_id: id(e),
            ask: ask(name),
            fence: fence.map(|(k, t)| Fence {
                key: key(k),
                token: lease::FencingToken::parse("t", t).unwrap(),
            }),
            request_id: request.and_then(rid),
        })
    }

    fn append(e: &str, fence: Option<(&str, u64)>, request: Option<&str>) -> Command {
        Command::Append(AppendEvents {
            ns: ns(),
            entity_id: id(e),
            events: vec![EventInput::parse("e", "progress".into(), b"p".to_vec(), String::new()).unwrap()],
            fence: fence.map(|(k, t)| Fence {
                key: key(k),
                token: lease::FencingToken::parse("t", t).unwrap(),
            }),
            if_sealed: IfSealed::Drop,
            request_id: request.and_then(rid),
        })
    }

    fn acquire(k: &str, holder: &str) -> Command {
        Command::Acquire(AcquireLease {
            ns: ns(),
            key: key(k),
            holder: Holder::parse("h", holder.into()).unwrap(),
            ttl: Ttl::parse("ttl", Some(Duration::from_secs(10))).unwrap(),
            wait: Duration::ZERO,
            request_id: None,
        })
    }

    /// What a store does with a batch's writes: the rows a later batch would load.
    fn absorb(rows: &mut Rows, writes: Writes) {
        for (k, row) in writes.leases {
            rows.leases.insert(k, row);
        }
        for ((n, i), (e, _)) in writes.entities {
            if let Some(d) = &e.dedup_key {
                rows.dedup.insert((n.clone(), e.kind.clone(), d.clone()), i.clone());
            }
            rows.entities.insert((n, i), e);
        }
        for (n, r, stored) in writes.requests {
            rows.requests.insert((n, r), stored);
        }
    }

    /// A mix of every kind of outcome in one batch, as the pipeline would gather it.
    fn commands() -> Vec<Command> {
        vec![
            create("r1", Some("w:sha"), Some("c1")),
            create("r2", Some("w:sha"), None), // dedup hit: the first one
            create("r1", None, None),          // id taken
            transition("r1", "start", None, Some("t1")),
            transition("r1", "start", None, Some("t1")), // request-id replay
            transition("r1", "start", None, None),       // refused: not from running
            acquire("k", "a"),
            acquire("k", "b"), // busy
            append("r1", Some(("k", 1)), Some("a1")),
            append("r1", Some(("k", 7)), None), // stale fence
            transition("r1", "cancel", Some(("k", 1)), None),
            transition("r1", "cancel", None, None), // declared no-op on a finished run
            append("r1", None, None),               // sealed: dropped
            transition("r1", "stop", None, Some("c1")), // request id used by another call
        ]
    }

    /// Every caller gets its own answer, and a batch ends in the state that applying its
    /// commands one by one, each in a batch of its own, would leave.
    #[test]
    fn a_mixed_batch_answers_each_command_as_if_applied_one_by_one() {
        let mut together = Batch::new(rows());
        let batch_outcomes: Vec<_> = commands().iter().map(|c| together.apply(c)).collect();
        let batch_writes = together.finish();

        let mut sequential = rows();
        let mut one_by_one = vec![];
        for c in commands() {
            let mut alone = Batch::new(sequential.clone());
            one_by_one.push(alone.apply(&c));
            absorb(&mut sequential, alone.finish());
        }
        assert_eq!(batch_outcomes, one_by_one);
        let mut after_batch = rows();
        absorb(&mut after_batch, batch_writes.clone());
        let sorted = |r: &Rows| {
            let mut e: Vec<_> = r.entities.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            e.sort_by(|a, b| a.0.cmp(&b.0));
            let mut l: Vec<_> = r.leases.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            l.sort_by(|a, b| a.0.cmp(&b.0));
            let mut q: Vec<_> = r.requests.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            q.sort_by(|a, b| a.0.cmp(&b.0));
            (e, l, q)
        };
        assert_eq!(sorted(&after_batch), sorted(&sequential));

        // And each answer is the one its command deserves.
        let o = &batch_outcomes;
        assert!(matches!(&o[0], Ok(Outcome::Create(c)) if c.created));
        assert!(matches!(&o[1], Ok(Outcome::Create(c)) if !c.created && c.entity.id == id("r1")));
        assert!(matches!(&o[2], Err(DomainError::AlreadyExists { .. })));
        assert_eq!(o[3], o[4], "a retried request id gets the first outcome");
        assert!(
            matches!(&o[5], Err(DomainError::InvalidTransition { current_state, .. }) if current_state == "running")
        );
        assert!(matches!(&o[6], Ok(Outcome::Acquire(a)) if a.acquired && a.lease.token.get() == 1));
        assert!(matches!(&o[7], Ok(Outcome::Acquire(a)) if !a.acquired));
        assert!(matches!(&o[8], Ok(Outcome::Append(a)) if a.seqs.len() == 1));
        assert!(matches!(&o[9], Err(DomainError::LeaseLost { .. })));
        assert!(matches!(&o[10], Ok(Outcome::Transition(t)) if t.applied && t.entity.final_seq.is_some()));
        assert!(matches!(&o[11], Ok(Outcome::Transition(t)) if !t.applied));
        assert!(matches!(&o[12], Ok(Outcome::Append(a)) if a.dropped));
        assert!(matches!(&o[13], Err(DomainError::RequestIdReused { .. })));
        // One row per entity and key, however many commands touched it; events in order.
        assert_eq!(batch_writes.entities.len(), 1);
        let seqs: Vec<u64> = batch_writes.events.iter().map(|e| e.2.seq.get()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(batch_writes.requests.len(), 3, "c1, t1, a1");
        assert!(
            batch_writes.entities.values().all(|(_, new)| *new),
            "created in this batch"
        );
    }

    #[test]
    fn locks_are_ordered_once_each_and_exclusive_wins() {
        let cmds = [
            append("r1", Some(("k", 1)), None),
            acquire("k", "a"),
            transition("r2", "start", Some(("k", 1)), None),
        ];
        let locks = Lock::union(&cmds);
        let keys: Vec<i64> = locks.iter().map(|l| l.key).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(keys, sorted, "sorted, each key once");
        let lease = lock_key(&ns(), lock_space::LEASE, "k");
        assert_eq!(locks.iter().find(|l| l.key == lease).map(|l| l.shared), Some(false));
        let only_fences = Lock::union(&cmds[..1]);
        assert_eq!(
            only_fences.iter().find(|l| l.key == lease).map(|l| l.shared),
            Some(true)
        );
    }
}
