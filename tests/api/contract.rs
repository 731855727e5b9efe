//! The `Store` contract, run against both backends: what every adapter must do, tested on
//! the trait alone (no gRPC, no service). Writes go through write batches: one round trip
//! to begin, lock and read; one to write and commit.

use crate::both_backends;
use crate::helpers::{Backend, TestDb};
use baton::domain::DomainError;
use baton::domain::batch::{Batch, Command, Lock, Reads, StoredRequest, Writes};
use baton::domain::command::{
    AcquireLease, AppendEvents, CreateEntity, ListEntities, ListMachines, PageToken, ReleaseLease, Transition,
};
use baton::domain::entity::{Entity, Fields, Version};
use baton::domain::lease::{Fence, FencingToken, LeaseRow, Ttl};
use baton::domain::machine::{FinalEvent, Machine, StoredMachine, TransitionAsk};
use baton::domain::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace, RequestId, lock_key, lock_space};
use baton::domain::outcome::Outcome;
use baton::domain::tape::{EventInput, IfSealed, Seq, StoredEvent};
use baton::domain::time::{Clock, Timestamp};
use baton::storage::{self, Change, Loaded, Store, StoreError, StoreOptions};
use std::sync::Arc;
use std::time::Duration;

/// Lanes of the stores these tests open: enough for the concurrent tests, each running
/// one batch at a time on its own lane.
const LANES: u32 = 8;

async fn store(db: &TestDb, clock: Clock) -> Arc<dyn Store> {
    let options = StoreOptions {
        write_lanes: LANES,
        ..StoreOptions::new(clock, 4)
    };
    storage::connect(&db.url, options).await.expect("store connects")
}

fn ns() -> Namespace {
    Namespace::parse("ns", "contract".into()).unwrap()
}

fn key(s: &str) -> LeaseKey {
    LeaseKey::parse("key", s.into()).unwrap()
}

fn id(s: &str) -> EntityId {
    EntityId::parse("id", s.into()).unwrap()
}

fn tok(n: u64) -> FencingToken {
    FencingToken::parse("token", n).unwrap()
}

fn seq(n: u64) -> Seq {
    Seq::parse("seq", n).unwrap()
}

fn task() -> Name {
    Name::parse("k", "task".into()).unwrap()
}

fn lease_row(k: &str, holder: Option<&str>, token: u64, now: Timestamp) -> LeaseRow {
    LeaseRow {
        key: key(k),
        token: tok(token),
        holder: holder.map(|h| Holder::parse("h", h.into()).unwrap()),
        acquired_at: now,
        expires_at: now.plus(Duration::from_secs(10)),
    }
}

fn entity(e: &str, dedup: Option<&str>, now: Timestamp) -> Entity {
    Entity {
        id: id(e),
        kind: task(),
        state: "pending".into(),
        version: Version::FIRST,
        fields: Fields::from([("note".to_string(), "a".to_string())]),
        dedup_key: dedup.map(|d| DedupKey::parse("d", d.into()).unwrap()),
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        last_seq: Seq::ZERO,
        final_seq: None,
        // Stored and read back like every other column.
        due_at: Some(now.plus(Duration::from_secs(60))),
    }
}

fn event(n: u64, t: &str, now: Timestamp) -> StoredEvent {
    StoredEvent {
        seq: seq(n),
        event_type: t.into(),
        payload: vec![n as u8, 0, 255],
        content_type: "x/y".into(),
        state: None,
        created_at: now,
    }
}

/// `version` of examples/machines.toml's `task`.
fn task_machine(version: u64, now: Timestamp) -> StoredMachine {
    let spec = crate::helpers::example_machines()
        .into_iter()
        .find(|m| m.kind == "task")
        .unwrap();
    StoredMachine {
        machine: Arc::new(Machine::parse(spec).unwrap()),
        version,
        defined_at: now,
    }
}

/// One batch on `lane`: waits for `locks`, reads `reads`, commits `writes`.
async fn batch(
    s: &dyn Store,
    lane: usize,
    locks: &[Lock],
    reads: &Reads,
    writes: &Writes,
) -> Result<Loaded, StoreError> {
    let (tx, loaded) = s.begin_batch(lane, locks, true, reads).await?;
    tx.commit(writes).await?;
    Ok(loaded)
}

/// A batch that writes `writes` and locks nothing.
async fn write(s: &dyn Store, writes: Writes) -> Result<(), StoreError> {
    batch(s, 0, &[], &Reads::default(), &writes).await.map(drop)
}

/// What a batch reading `reads` finds.
async fn load(s: &dyn Store, reads: Reads) -> Loaded {
    batch(s, 0, &[], &reads, &Writes::default()).await.unwrap()
}

async fn now(s: &dyn Store) -> Timestamp {
    s.now().await.unwrap()
}

fn with_lease(row: LeaseRow) -> Writes {
    let mut w = Writes::default();
    w.leases.insert((ns(), row.key.clone()), row);
    w
}

fn with_entity(e: Entity, new: bool) -> Writes {
    let mut w = Writes::default();
    w.entities.insert((ns(), e.id.clone()), (e, new));
    w
}

async fn define(s: &dyn Store, m: &StoredMachine) {
    let (tx, _, _) = s.begin_define(&ns(), m.machine.kind()).await.unwrap();
    tx.commit(&ns(), m).await.unwrap();
}

async fn lease_rows_keep_their_token_counter(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    let loaded = load(
        &*s,
        Reads {
            leases: [(ns(), key("k"))].into(),
            ..Reads::default()
        },
    )
    .await;
    assert!(loaded.leases.is_empty());
    write(&*s, with_lease(lease_row("k", Some("a"), 1, t))).await.unwrap();
    // A release clears the holder; the row, and its token counter (I2), stay.
    write(&*s, with_lease(lease_row("k", None, 1, t))).await.unwrap();
    let row = s
        .lease_row(&ns(), &key("k"))
        .await
        .unwrap()
        .expect("row outlives the lease");
    assert_eq!((row.token, row.holder.clone()), (tok(1), None));
    assert!(row.live(now(&*s).await).is_none());
    let loaded = load(
        &*s,
        Reads {
            leases: [(ns(), key("k"))].into(),
            ..Reads::default()
        },
    )
    .await;
    assert_eq!(loaded.leases, vec![(ns(), row)]);
}

/// A batch is all or nothing: one refused write, and none of its writes stay. A batch
/// dropped before its commit writes nothing, and its lane serves the next batch.
async fn batches_are_atomic(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    write(&*s, with_entity(entity("e1", None, t), true)).await.unwrap();
    let mut w = with_entity(entity("e1", None, t), true); // e1 is taken
    w.leases.insert((ns(), key("gone")), lease_row("gone", Some("a"), 1, t));
    let err = write(&*s, w).await.expect_err("the taken id refuses the batch");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        s.lease_row(&ns(), &key("gone")).await.unwrap(),
        None,
        "nothing of it stays"
    );
    {
        let (_dropped, _) = s.begin_batch(0, &[], false, &Reads::default()).await.unwrap();
    }
    write(&*s, with_lease(lease_row("after", Some("a"), 1, t)))
        .await
        .unwrap();
    assert!(s.lease_row(&ns(), &key("after")).await.unwrap().is_some());
}

async fn entities_ids_and_dedup_keys_are_unique(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    write(&*s, with_entity(entity("e1", Some("d"), t), true)).await.unwrap();
    let err = write(&*s, with_entity(entity("e1", None, t), true)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "id: {err:?}");
    let err = write(&*s, with_entity(entity("e2", Some("d"), t), true))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "dedup index: {err:?}");
    let dedup = DedupKey::parse("d", "d".into()).unwrap();
    let loaded = load(
        &*s,
        Reads {
            dedup: [(ns(), task(), dedup)].into(),
            ..Reads::default()
        },
    )
    .await;
    assert_eq!(loaded.entities, vec![(ns(), entity("e1", Some("d"), t))]);
    let other = Namespace::parse("ns", "other".into()).unwrap();
    assert_eq!(
        s.entity(&other, &id("e1")).await.unwrap(),
        None,
        "I12: namespaces are disjoint"
    );
    assert_eq!(
        s.entity(&ns(), &id("e1")).await.unwrap(),
        Some(entity("e1", Some("d"), t))
    );
}

async fn events_read_back_in_seq_order_and_one_final(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let mut changes = s.changes();
    let t = now(&*s).await;
    let mut w = with_entity(entity("e1", None, t), true);
    let evs: Vec<_> = (1..=5)
        .map(|i| event(i, if i == 5 { "final" } else { "p" }, t))
        .collect();
    w.events = evs.iter().map(|e| (ns(), id("e1"), e.clone())).collect();
    write(&*s, w).await.unwrap();
    assert_eq!(
        s.events(&ns(), &id("e1"), Seq::ZERO, 100, usize::MAX).await.unwrap(),
        evs
    );
    assert_eq!(
        s.events(&ns(), &id("e1"), seq(2), 2, usize::MAX).await.unwrap(),
        evs[2..4].to_vec()
    );
    // Bounded by payload bytes too (3 each): stopping before the event that would pass the
    // bound, and never returning nothing while events remain.
    for (max_bytes, n) in [(6, 2), (8, 2), (9, 3), (1, 1)] {
        let page = s.events(&ns(), &id("e1"), Seq::ZERO, 100, max_bytes).await.unwrap();
        assert_eq!(page, evs[..n].to_vec(), "{max_bytes} bytes");
    }
    // A change announced reaches subscribers (NOTIFY or in-process).
    s.announce(vec![Change::Tape {
        ns: ns(),
        entity_id: id("e1"),
        head: seq(5),
        events: evs.iter().cloned().map(Arc::new).collect(),
    }]);
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .expect("change announced")
            .unwrap()
        {
            Change::Tape { head, events, .. } => break (head, events.len()),
            _ => continue,
        }
    };
    assert_eq!(got, (seq(5), 5));
    // I6/I7 in the schema itself: no seq twice, no second final.
    for dup in [event(3, "p", t), event(6, "final", t)] {
        let w = Writes {
            events: vec![(ns(), id("e1"), dup)],
            ..Writes::default()
        };
        let err = write(&*s, w).await.expect_err("refused by the schema");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    }
}

async fn request_outcomes_are_recorded_and_purged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = Clock::system();
    let s = store(&db, clock.clone()).await;
    let rid = RequestId::parse("r", "r1".into()).unwrap();
    let stored = StoredRequest {
        call: "M".into(),
        outcome: "{\"a\":1}".into(),
    };
    let w = Writes {
        now: now(&*s).await,
        requests: vec![(ns(), rid.clone(), stored.clone())],
        ..Writes::default()
    };
    write(&*s, w.clone()).await.unwrap();
    let loaded = load(
        &*s,
        Reads {
            requests: [(ns(), rid.clone())].into(),
            ..Reads::default()
        },
    )
    .await;
    assert_eq!(loaded.requests, vec![(ns(), rid, stored)]);
    // One outcome per request id.
    assert!(matches!(write(&*s, w).await, Err(StoreError::Conflict(_))));
    assert!(s.is_housekeeper().await.unwrap());
    clock.advance(Duration::from_secs(10));
    assert_eq!(s.purge_requests(now(&*s).await).await.unwrap(), 1);
}

async fn machines_and_listing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    let m = task_machine(1, t);
    define(&*s, &m).await;
    let mut w = Writes::default();
    for (i, state) in ["pending", "running", "running"].iter().enumerate() {
        let mut e = entity(&format!("e{i}"), None, t);
        e.state = state.to_string();
        if i == 2 {
            e.fields.insert("turn".into(), "t".into());
        }
        w.entities.insert((ns(), e.id.clone()), (e, true));
    }
    write(&*s, w).await.unwrap();
    let (mut tx, current, _) = s.begin_define(&ns(), &task()).await.unwrap();
    assert_eq!(current.map(|r| r.version), Some(1));
    assert_eq!(
        tx.state_in_use(&ns(), &task(), &["failed", "running"]).await.unwrap(),
        Some("running".into())
    );
    assert_eq!(tx.state_in_use(&ns(), &task(), &["failed"]).await.unwrap(), None);
    drop(tx);
    assert_eq!(s.machine(&ns(), &task()).await.unwrap(), Some(m));
    // A batch reads the machines it asks for: in its first round trip, or later in it.
    let kinds = [(ns(), task())];
    let loaded = load(
        &*s,
        Reads {
            machines: kinds.clone().into(),
            ..Reads::default()
        },
    )
    .await;
    assert_eq!(
        loaded
            .machines
            .iter()
            .map(|(_, m)| (m.kind.clone(), m.version))
            .collect::<Vec<_>>(),
        [(task(), 1)]
    );
    let (mut tx, _) = s.begin_batch(0, &[], false, &Reads::default()).await.unwrap();
    let later = tx.machines(&kinds.into()).await.unwrap();
    assert_eq!(later.iter().map(|(_, m)| m.version).collect::<Vec<_>>(), [1]);
    tx.commit(&Writes::default()).await.unwrap();
    let names = |v: &[&str]| v.iter().map(|s| Name::parse("s", s.to_string()).unwrap()).collect();
    let q = |states: &[&str], has: &[&str], missing: &[&str], after: Option<&str>| ListEntities {
        ns: ns(),
        kind: task(),
        states: names(states),
        has_fields: names(has),
        missing_fields: names(missing),
        limit: 10,
        after: after.map(PageToken::after),
    };
    let ids = |(v, full): (Vec<Entity>, bool)| {
        assert!(!full, "no byte bound was reached");
        v.into_iter().map(|e| e.id.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(s.list_entities(&q(&[], &[], &[], None), usize::MAX).await.unwrap()),
        ["e0", "e1", "e2"]
    );
    assert_eq!(
        ids(s
            .list_entities(&q(&["running"], &[], &[], None), usize::MAX)
            .await
            .unwrap()),
        ["e1", "e2"]
    );
    assert_eq!(
        ids(s
            .list_entities(&q(&["running"], &[], &["turn"], None), usize::MAX)
            .await
            .unwrap()),
        ["e1"]
    );
    assert_eq!(
        ids(s
            .list_entities(&q(&[], &["turn", "note"], &[], None), usize::MAX)
            .await
            .unwrap()),
        ["e2"]
    );
    assert_eq!(
        ids(s
            .list_entities(&q(&[], &[], &[], Some("e0")), usize::MAX)
            .await
            .unwrap()),
        ["e1", "e2"]
    );
    // Bounded by bytes too (each entity counts its fields' JSON plus 256): the page stops
    // before the entity that would pass the bound, never returns nothing, and says so.
    let mut sizes = vec![];
    for e in ["e0", "e1", "e2"] {
        let fields = s.entity(&ns(), &id(e)).await.unwrap().unwrap().fields;
        sizes.push(serde_json::to_string(&fields).unwrap().len() + 256);
    }
    let bounded = |max_bytes: usize| {
        let s = &s;
        let q = q(&[], &[], &[], None);
        async move {
            let (page, full) = s.list_entities(&q, max_bytes).await.unwrap();
            (page.into_iter().map(|e| e.id.to_string()).collect::<Vec<_>>(), full)
        }
    };
    assert_eq!(bounded(1).await, (vec!["e0".to_string()], true));
    assert_eq!(bounded(sizes[0] + sizes[1] - 1).await, (vec!["e0".to_string()], true));
    let two = bounded(sizes[0] + sizes[1]).await;
    assert!(two.0 == ["e0", "e1"] && two.1, "{two:?}");
    let all = bounded(sizes.iter().sum()).await;
    assert!(all.0 == ["e0", "e1", "e2"] && !all.1, "{all:?}");
    let machines = ListMachines {
        ns: ns(),
        limit: 10,
        after: None,
    };
    let (page, full) = s.list_machines(&machines, 1).await.unwrap();
    assert_eq!((page.len(), full), (1, false), "one machine: the first always fits");
}

/// A batch commits only while every machine version its writes were decided with is the
/// stored one; otherwise nothing of it is written.
async fn commits_are_conditional_on_the_expected_machine(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    define(&*s, &task_machine(1, t)).await;
    let mut w = with_entity(entity("e1", None, t), true);
    w.machines.insert((ns(), task(), 1));
    write(&*s, w).await.unwrap();
    let mut w = with_entity(entity("e2", None, t), true);
    w.machines.insert((ns(), task(), 7));
    let err = write(&*s, w)
        .await
        .expect_err("decided with a machine that is not current");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(s.entity(&ns(), &id("e2")).await.unwrap().is_none());
    assert!(s.entity(&ns(), &id("e1")).await.unwrap().is_some());
}

/// Concurrent read-modify-write batches of one key, on every lane at once, waiting for its
/// lock: none is lost.
async fn writers_of_one_key_serialize(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    write(&*s, with_entity(entity("e", None, t), true)).await.unwrap();
    let lock = [Lock {
        key: lock_key(&ns(), lock_space::ENTITY, "e"),
        shared: false,
    }];
    let reads = Reads {
        entities: [(ns(), id("e"))].into(),
        leases: [(ns(), key("ctr"))].into(),
        ..Reads::default()
    };
    let mut lanes = vec![];
    for lane in 0..LANES as usize {
        let (s, lock, reads) = (s.clone(), lock, reads.clone());
        lanes.push(tokio::spawn(async move {
            for _ in 0..4 {
                let (tx, loaded) = s.begin_batch(lane, &lock, true, &reads).await.unwrap();
                assert_eq!(loaded.granted, [true], "waited for the lock");
                let mut e = loaded.entities[0].1.clone();
                e.version = e.version.next();
                let next = loaded.leases.first().map_or(1, |(_, r)| r.token.get() + 1);
                let mut w = with_entity(e, false);
                w.leases
                    .insert((ns(), key("ctr")), lease_row("ctr", Some("h"), next, loaded.now));
                tx.commit(&w).await.unwrap();
            }
        }));
    }
    for l in lanes {
        l.await.unwrap();
    }
    let writes = 4 * LANES as u64;
    assert_eq!(
        s.lease_row(&ns(), &key("ctr")).await.unwrap().unwrap().token,
        tok(writes)
    );
    assert_eq!(
        s.entity(&ns(), &id("e")).await.unwrap().unwrap().version.get(),
        1 + writes
    );
}

async fn clock_skew_is_store_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = Clock::system();
    let s = store(&db, clock.clone()).await;
    let before = now(&*s).await;
    clock.advance(Duration::from_secs(3600));
    let after = now(&*s).await;
    assert!(after.0 - before.0 >= 3_600_000_000, "{before:?} -> {after:?}");
    assert!(load(&*s, Reads::default()).await.now >= after);
}

/// Runs `commands` as one batch through the store, as the pipeline does: begin (locks,
/// reads), decide in memory, commit. Returns the outcomes and the round trips it cost.
async fn run_batch(s: &dyn Store, commands: &[Command]) -> (Vec<Result<Outcome, DomainError>>, u64) {
    run_batch_with(s, commands, None).await
}

/// [`run_batch`] by a replica that has `machine` cached (as the pipeline's cache holds it).
async fn run_batch_knowing(
    s: &dyn Store,
    commands: &[Command],
    machine: &StoredMachine,
) -> (Vec<Result<Outcome, DomainError>>, u64) {
    run_batch_with(s, commands, Some(machine)).await
}

async fn run_batch_with(
    s: &dyn Store,
    commands: &[Command],
    known: Option<&StoredMachine>,
) -> (Vec<Result<Outcome, DomainError>>, u64) {
    let before = s.round_trips();
    let locks = Lock::union(commands);
    let mut reads = Reads::default();
    for c in commands {
        c.reads(&mut reads);
    }
    let (mut tx, loaded) = s.begin_batch(0, &locks, false, &reads).await.unwrap();
    assert!(loaded.granted.iter().all(|g| *g));
    let mut rows = loaded.into_rows(|_, m| storage::parse_machine(m)).unwrap();
    if let Some(m) = known {
        rows.machines.insert((ns(), m.machine.kind().clone()), m.clone());
    }
    let missing = rows.missing_machines(commands);
    if !missing.is_empty() {
        for (n, m) in tx.machines(&missing).await.unwrap() {
            rows.machines
                .insert((n, m.kind.clone()), storage::parse_machine(&m).unwrap());
        }
    }
    let mut decided = Batch::new(rows);
    let outcomes = commands.iter().map(|c| decided.apply(c)).collect();
    tx.commit(&decided.finish()).await.unwrap();
    (outcomes, s.round_trips() - before)
}

fn fenced_start(e: &str, version: u64, request: &str) -> Command {
    Command::Transition(Transition {
        ns: ns(),
        entity_id: id(e),
        ask: TransitionAsk {
            name: Name::parse("t", "start".into()).unwrap(),
            expect_version: Some(Version::parse("v", version).unwrap()),
            set_fields: Fields::new(),
            clear_fields: vec![],
            events: vec![],
            final_event: FinalEvent::default(),
        },
        fence: Some(Fence {
            key: key("orchestrator"),
            token: tok(1),
        }),
        request_id: Some(RequestId::parse("r", request.into()).unwrap()),
    })
}

/// The write path's price: a Transition carrying a fence, a request id and an expected
/// version costs two round trips — and a batch of 32 of them costs two in all (once the
/// replica knows the machine: the first use of a kind reads it, a third round trip).
async fn a_batch_costs_two_round_trips(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    define(&*s, &task_machine(1, t)).await;
    let mut w = with_lease(lease_row(
        "orchestrator",
        Some("o"),
        1,
        t.plus(Duration::from_secs(3600)),
    ));
    for i in 0..32 {
        w.entities
            .insert((ns(), id(&format!("e{i}"))), (entity(&format!("e{i}"), None, t), true));
    }
    write(&*s, w).await.unwrap();
    let (one, cost) = run_batch(&*s, &[fenced_start("e0", 1, "r0")]).await;
    assert!(matches!(&one[0], Ok(Outcome::Transition(o)) if o.applied), "{one:?}");
    assert_eq!(cost, 3, "one call, the machine not known yet");
    let many: Vec<Command> = (1..32)
        .map(|i| fenced_start(&format!("e{i}"), 1, &format!("r{i}")))
        .collect();
    let (outcomes, cost) = run_batch_knowing(&*s, &many, &task_machine(1, t)).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(Outcome::Transition(t)) if t.applied)),
        "{outcomes:?}"
    );
    assert_eq!(cost, 2, "31 calls in one batch");
    for i in 0..32 {
        let e = s.entity(&ns(), &id(&format!("e{i}"))).await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.version.get(), e.last_seq.get()), ("running", 2, 1));
    }
    // Their outcomes are stored under their request ids, in the same commit (I10).
    let rids = (0..32)
        .map(|i| (ns(), RequestId::parse("r", format!("r{i}")).unwrap()))
        .collect();
    assert_eq!(
        load(
            &*s,
            Reads {
                requests: rids,
                ..Reads::default()
            }
        )
        .await
        .requests
        .len(),
        32
    );
}

fn rid(s: &str) -> Option<RequestId> {
    Some(RequestId::parse("r", s.into()).unwrap())
}

fn mixed_create(e: &str, dedup: Option<&str>, request: Option<&str>) -> Command {
    Command::Create(
        CreateEntity {
            ns: ns(),
            kind: task(),
            id: Some(id(e)),
            dedup_key: dedup.map(|d| DedupKey::parse("d", d.into()).unwrap()),
            fields: Fields::new(),
            fence: None,
            request_id: request.and_then(rid),
        },
        id(e),
    )
}

fn mixed_transition(e: &str, name: &str, fence: Option<(&str, u64)>, request: Option<&str>) -> Command {
    Command::Transition(Transition {
        ns: ns(),
        entity_id: id(e),
        ask: TransitionAsk {
            name: Name::parse("t", name.into()).unwrap(),
            expect_version: None,
            set_fields: Fields::new(),
            clear_fields: vec![],
            events: vec![],
            final_event: FinalEvent::default(),
        },
        fence: fence.map(|(k, t)| Fence {
            key: key(k),
            token: tok(t),
        }),
        request_id: request.and_then(rid),
    })
}

fn mixed_append(e: &str, fence: Option<(&str, u64)>, request: Option<&str>) -> Command {
    Command::Append(AppendEvents {
        ns: ns(),
        entity_id: id(e),
        events: vec![EventInput::parse("e", "progress".into(), b"p".to_vec(), String::new()).unwrap()],
        fence: fence.map(|(k, t)| Fence {
            key: key(k),
            token: tok(t),
        }),
        if_sealed: IfSealed::Drop,
        request_id: request.and_then(rid),
    })
}

fn mixed_acquire(k: &str, holder: &str) -> Command {
    Command::Acquire(AcquireLease {
        ns: ns(),
        key: key(k),
        holder: Holder::parse("h", holder.into()).unwrap(),
        ttl: Ttl::parse("ttl", Some(Duration::from_secs(60))).unwrap(),
        wait: Duration::ZERO,
        request_id: None,
    })
}

/// Every kind of outcome, in the order a pipeline could gather them.
fn mixed_commands() -> Vec<Command> {
    vec![
        mixed_create("m1", Some("w:sha"), Some("c1")),
        mixed_create("m2", Some("w:sha"), None), // dedup hit: the first one
        mixed_create("m1", None, None),          // id taken
        mixed_transition("m1", "start", None, Some("t1")),
        mixed_transition("m1", "start", None, Some("t1")), // request-id replay
        mixed_transition("m1", "start", None, None),       // refused: not from running
        mixed_acquire("k", "a"),
        mixed_acquire("k", "b"), // busy
        mixed_append("m1", Some(("k", 1)), Some("a1")),
        mixed_append("m1", Some(("k", 7)), None), // stale fence
        mixed_transition("m1", "cancel", Some(("k", 1)), None),
        mixed_transition("m1", "cancel", None, None), // declared no-op on a finished task
        mixed_append("m1", None, None),               // sealed: dropped
        mixed_transition("m1", "succeed", None, Some("c1")), // request id of another call
    ]
}

/// `Debug` of a value with every `Timestamp(…)` blanked: two stores' clocks differ.
fn timeless(v: &impl std::fmt::Debug) -> String {
    let text = format!("{v:?}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("Timestamp(") {
        out.push_str(&rest[..at + "Timestamp(".len()]);
        rest = rest[at + "Timestamp(".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('_');
    }
    out.push_str(rest);
    out
}

/// What a store holds after the mixed commands, timestamps blanked: the entity, its tape,
/// the lease, and which call each request id is stored for.
async fn mixed_state(s: &dyn Store) -> Vec<String> {
    let entity = s.entity(&ns(), &id("m1")).await.unwrap();
    let tape = s.events(&ns(), &id("m1"), Seq::ZERO, 100, usize::MAX).await.unwrap();
    let lease = s.lease_row(&ns(), &key("k")).await.unwrap();
    let requests = load(
        s,
        Reads {
            requests: ["c1", "t1", "a1"].map(|r| (ns(), rid(r).unwrap())).into(),
            ..Reads::default()
        },
    )
    .await
    .requests;
    let mut calls: Vec<(String, String)> = requests
        .iter()
        .map(|(_, r, stored)| (r.to_string(), stored.call.clone()))
        .collect();
    calls.sort();
    vec![
        timeless(&entity),
        timeless(&tape),
        timeless(&lease),
        timeless(&s.entity(&ns(), &id("m2")).await.unwrap()),
        format!("{calls:?}"),
    ]
}

/// One batch of mixed outcomes (applied, refused, declared no-op, sealed-tape drop,
/// request-id replay, dedup hit, busy lease, stale fence) through a real store: each
/// command gets the answer it would get alone, and the store ends as it would after the
/// commands ran one by one, each in a batch of its own (on a second database).
async fn a_mixed_batch_equals_its_commands_one_by_one(backend: Backend) {
    let (together_db, alone_db) = (TestDb::new(backend).await, TestDb::new(backend).await);
    let together = store(&together_db, Clock::system()).await;
    let alone = store(&alone_db, Clock::system()).await;
    for s in [&together, &alone] {
        let t = now(&**s).await;
        define(&**s, &task_machine(1, t)).await;
    }
    let commands = mixed_commands();
    let (batched, cost) = run_batch(&*together, &commands).await;
    assert_eq!(cost, 2, "one batch, the machine read with its rows");
    let mut one_by_one = vec![];
    for c in &commands {
        let (mut outcome, _) = run_batch(&*alone, std::slice::from_ref(c)).await;
        one_by_one.push(outcome.remove(0));
    }
    assert_eq!(timeless(&batched), timeless(&one_by_one));
    assert_eq!(mixed_state(&*together).await, mixed_state(&*alone).await);

    // And each answer is the one its command deserves.
    let o = &batched;
    assert!(matches!(&o[0], Ok(Outcome::Create(c)) if c.created), "{o:?}");
    assert!(
        matches!(&o[1], Ok(Outcome::Create(c)) if !c.created && c.entity.id == id("m1")),
        "{o:?}"
    );
    assert!(matches!(&o[2], Err(DomainError::AlreadyExists { .. })), "{o:?}");
    assert_eq!(o[3], o[4], "a retried request id gets the first outcome");
    assert!(matches!(&o[5], Err(DomainError::InvalidTransition { .. })), "{o:?}");
    assert!(matches!(&o[6], Ok(Outcome::Acquire(a)) if a.acquired), "{o:?}");
    assert!(matches!(&o[7], Ok(Outcome::Acquire(a)) if !a.acquired), "{o:?}");
    assert!(matches!(&o[8], Ok(Outcome::Append(a)) if a.seqs.len() == 1), "{o:?}");
    assert!(matches!(&o[9], Err(DomainError::LeaseLost { .. })), "{o:?}");
    assert!(
        matches!(&o[10], Ok(Outcome::Transition(t)) if t.applied && t.entity.final_seq.is_some()),
        "{o:?}"
    );
    assert!(matches!(&o[11], Ok(Outcome::Transition(t)) if !t.applied), "{o:?}");
    assert!(matches!(&o[12], Ok(Outcome::Append(a)) if a.dropped), "{o:?}");
    assert!(matches!(&o[13], Err(DomainError::RequestIdReused { .. })), "{o:?}");
    let stored = together.entity(&ns(), &id("m1")).await.unwrap().unwrap();
    assert_eq!(
        (stored.state.as_str(), stored.final_seq.map(|s| s.get())),
        ("cancelled", Some(stored.last_seq.get()))
    );
    assert_eq!(
        together.entity(&ns(), &id("m2")).await.unwrap(),
        None,
        "the dedup hit created nothing"
    );
}

/// Deleting an entity and creating it again in one batch makes a new entity with a new
/// tape (the deletes are written before the inserts); deleting is refused on an active
/// entity without force.
async fn an_entity_deleted_and_created_again_in_one_batch_is_new(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    define(&*s, &task_machine(1, t)).await;
    let delete = |force| {
        Command::Delete(baton::domain::command::DeleteEntity {
            ns: ns(),
            id: id("d1"),
            force,
            request_id: None,
        })
    };
    let (first, _) = run_batch(
        &*s,
        &[
            mixed_create("d1", Some("w:1"), None),
            mixed_transition("d1", "start", None, None),
            mixed_append("d1", None, None),
            delete(false),
        ],
    )
    .await;
    assert!(
        matches!(&first[3], Err(DomainError::EntityActive { current_state, .. }) if current_state == "running"),
        "{first:?}"
    );
    let (second, _) = run_batch(
        &*s,
        &[
            delete(true),
            mixed_create("d1", Some("w:1"), None),
            mixed_append("d1", None, None),
        ],
    )
    .await;
    assert!(matches!(&second[0], Ok(Outcome::Delete(true))), "{second:?}");
    assert!(matches!(&second[1], Ok(Outcome::Create(c)) if c.created), "{second:?}");
    let stored = s.entity(&ns(), &id("d1")).await.unwrap().unwrap();
    assert_eq!((stored.state.as_str(), stored.version.get()), ("pending", 1));
    let tape = s.events(&ns(), &id("d1"), Seq::ZERO, 100, usize::MAX).await.unwrap();
    assert_eq!(tape.iter().map(|e| e.seq.get()).collect::<Vec<_>>(), [1]);
}

/// I10 when a retry is decided before the call it retries (the first attempt still queued
/// on a replica whose caller gave up): the retry's answer, even a busy lease or a refusal,
/// is stored, so the first attempt replays it instead of applying later. Only a waiting
/// acquire's busy try is not the last word.
async fn the_first_answer_of_a_request_id_is_final_even_a_refusal(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let t = now(&*s).await;
    define(&*s, &task_machine(1, t)).await;
    let with_rid = |c: Command, r: &str| match c {
        Command::Acquire(a) => Command::Acquire(AcquireLease {
            request_id: rid(r),
            ..a
        }),
        Command::Transition(x) => Command::Transition(Transition {
            request_id: rid(r),
            ..x
        }),
        other => other,
    };
    let one = |o: (Vec<Result<Outcome, DomainError>>, u64)| o.0.into_iter().next().unwrap();
    let release = |token| {
        Command::Release(ReleaseLease {
            ns: ns(),
            key: key("k"),
            token,
            request_id: None,
        })
    };

    // A busy lease, then the holder releases: the same request id is still busy.
    let held = one(run_batch(&*s, &[mixed_acquire("k", "a")]).await);
    let Ok(Outcome::Acquire(held)) = held else {
        panic!("{held:?}")
    };
    let busy = one(run_batch(&*s, &[with_rid(mixed_acquire("k", "b"), "b1")]).await);
    assert!(matches!(&busy, Ok(Outcome::Acquire(o)) if !o.acquired), "{busy:?}");
    assert_eq!(
        one(run_batch(&*s, &[release(held.lease.token)]).await),
        Ok(Outcome::Release(true))
    );
    let again = one(run_batch(&*s, &[with_rid(mixed_acquire("k", "b"), "b1")]).await);
    assert_eq!(timeless(&again), timeless(&busy), "replayed, not acquired");
    assert_eq!(s.lease_row(&ns(), &key("k")).await.unwrap().unwrap().holder, None);

    // A waiting acquire's busy try is not recorded: its next try may acquire.
    let waiting = |r: &str| match with_rid(mixed_acquire("k", "c"), r) {
        Command::Acquire(a) => Command::Acquire(AcquireLease {
            wait: Duration::from_secs(5),
            ..a
        }),
        other => other,
    };
    let blocker = one(run_batch(&*s, &[mixed_acquire("k", "a")]).await);
    let Ok(Outcome::Acquire(blocker)) = blocker else {
        panic!("{blocker:?}")
    };
    let tried = one(run_batch(&*s, &[waiting("c1")]).await);
    assert!(matches!(&tried, Ok(Outcome::Acquire(o)) if !o.acquired), "{tried:?}");
    run_batch(&*s, &[release(blocker.lease.token)]).await;
    let next = one(run_batch(&*s, &[waiting("c1")]).await);
    assert!(matches!(&next, Ok(Outcome::Acquire(o)) if o.acquired), "{next:?}");

    // A refused transition stays refused for its request id, though the state moved on to
    // one it is allowed from.
    run_batch(&*s, &[mixed_create("r", None, None)]).await;
    let refused = one(run_batch(&*s, &[with_rid(mixed_transition("r", "succeed", None, None), "s1")]).await);
    assert!(
        matches!(&refused, Err(DomainError::InvalidTransition { .. })),
        "{refused:?}"
    );
    let started = one(run_batch(&*s, &[mixed_transition("r", "start", None, None)]).await);
    assert!(
        matches!(&started, Ok(Outcome::Transition(o)) if o.applied),
        "{started:?}"
    );
    let replayed = one(run_batch(&*s, &[with_rid(mixed_transition("r", "succeed", None, None), "s1")]).await);
    assert_eq!(replayed, refused, "the stored refusal, read back from the database");
    assert_eq!(s.entity(&ns(), &id("r")).await.unwrap().unwrap().state, "running");
}

both_backends!(
    lease_rows_keep_their_token_counter,
    batches_are_atomic,
    entities_ids_and_dedup_keys_are_unique,
    events_read_back_in_seq_order_and_one_final,
    request_outcomes_are_recorded_and_purged,
    machines_and_listing,
    commits_are_conditional_on_the_expected_machine,
    writers_of_one_key_serialize,
    clock_skew_is_store_time,
    a_batch_costs_two_round_trips,
    a_mixed_batch_equals_its_commands_one_by_one,
    the_first_answer_of_a_request_id_is_final_even_a_refusal,
    an_entity_deleted_and_created_again_in_one_batch_is_new,
);

/// A key another replica's batch holds is not granted to a batch that only tries it (its
/// commands wait for a later batch), while its other keys are; waiting, it is granted once
/// the holder commits.
async fn a_held_key_is_skipped_not_waited_for(backend: Backend) {
    let db = TestDb::new(backend).await;
    let a = store(&db, Clock::system()).await;
    let b = store(&db, Clock::system()).await;
    let held = Lock {
        key: lock_key(&ns(), lock_space::ENTITY, "hot"),
        shared: false,
    };
    let free = Lock {
        key: lock_key(&ns(), lock_space::ENTITY, "cold"),
        shared: false,
    };
    let (holder, _) = a.begin_batch(0, &[held], false, &Reads::default()).await.unwrap();
    let (tx, loaded) = b.begin_batch(0, &[held, free], false, &Reads::default()).await.unwrap();
    assert_eq!(loaded.granted, [false, true]);
    tx.commit(&Writes::default()).await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let (tx, loaded) = b.begin_batch(1, &[held], true, &Reads::default()).await.unwrap();
            tx.commit(&Writes::default()).await.unwrap();
            loaded.granted
        }
    });
    holder.commit(&Writes::default()).await.unwrap();
    assert_eq!(waiting.await.unwrap(), [true]);
}

/// Housekeeping runs on one replica at a time (Postgres: a session advisory lock on a
/// dedicated connection); when that replica closes, another takes over.
async fn one_housekeeper_among_postgres_replicas(backend: Backend) {
    assert_eq!(backend, Backend::Postgres);
    let db = TestDb::new(backend).await;
    let a = store(&db, Clock::system()).await;
    let b = store(&db, Clock::system()).await;
    assert!(a.is_housekeeper().await.unwrap());
    assert!(!b.is_housekeeper().await.unwrap());
    assert!(a.is_housekeeper().await.unwrap(), "the leader stays leader");
    a.close().await;
    // The lock goes when Postgres has ended a's session, a moment after its client closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !b.is_housekeeper().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "another replica takes over");
        tokio::task::yield_now().await;
    }
}

both_backends!(postgres_only: a_held_key_is_skipped_not_waited_for, one_housekeeper_among_postgres_replicas);
