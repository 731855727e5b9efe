//! The `Store` contract, run against both backends: what every adapter must do, tested
//! on the trait alone (no gRPC, no service).

use crate::both_backends;
use crate::helpers::{Backend, TestDb};
use baton::domain::DomainError;
use baton::domain::command::{ListEntities, PageToken};
use baton::domain::entity::{Entity, Fields, Version};
use baton::domain::lease::{FencingToken, Lease};
use baton::domain::machine::{Machine, StoredMachine};
use baton::domain::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace, RequestId, lock_key, lock_space};
use baton::domain::tape::{Seq, StoredEvent};
use baton::domain::time::{Clock, Timestamp};
use baton::storage::{self, Change, First, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// The error a write meets: from the write itself, or at the latest from the commit (the
/// Postgres store sends a transaction's writes with its commit). Consumes the transaction.
macro_rules! refused {
    ($tx:ident, $write:expr) => {{
        let first = $write.await;
        match first {
            Err(e) => {
                drop($tx);
                e
            }
            Ok(()) => $tx.commit().await.expect_err("the write or its commit is refused"),
        }
    }};
}

fn tok(n: u64) -> FencingToken {
    FencingToken::parse("token", n).unwrap()
}

fn seq(n: u64) -> Seq {
    Seq::parse("seq", n).unwrap()
}

async fn store(db: &TestDb, clock: Clock) -> Arc<dyn Store> {
    storage::connect(&db.url, storage::StoreOptions::new(clock, 4))
        .await
        .expect("store connects")
}

fn ns() -> Namespace {
    Namespace::parse("ns", "contract".into()).unwrap()
}

fn key(s: &str) -> LeaseKey {
    LeaseKey::parse("key", s.into()).unwrap()
}

fn lease(k: &str, holder: &str, token: u64, now: Timestamp) -> Lease {
    Lease {
        key: key(k),
        holder: Holder::parse("h", holder.into()).unwrap(),
        token: tok(token),
        acquired_at: now,
        expires_at: now.plus(Duration::from_secs(10)),
    }
}

fn entity(id: &str, dedup: Option<&str>, now: Timestamp) -> Entity {
    Entity {
        id: EntityId::parse("id", id.into()).unwrap(),
        kind: Name::parse("k", "task".into()).unwrap(),
        state: "pending".into(),
        version: Version::FIRST,
        fields: Fields::from([("note".to_string(), "a".to_string())]),
        dedup_key: dedup.map(|d| DedupKey::parse("d", d.into()).unwrap()),
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        last_seq: Seq::ZERO,
        final_seq: None,
    }
}

/// Version 1 of examples/machines.toml's `task`.
fn task_machine(now: Timestamp) -> StoredMachine {
    let spec = crate::helpers::example_machines()
        .into_iter()
        .find(|m| m.kind == "task")
        .unwrap();
    StoredMachine {
        machine: Arc::new(Machine::parse(spec).unwrap()),
        version: 1,
        defined_at: now,
    }
}

fn event(seq: u64, t: &str, now: Timestamp) -> StoredEvent {
    StoredEvent {
        seq: self::seq(seq),
        event_type: t.into(),
        payload: vec![seq as u8, 0, 255],
        content_type: "x/y".into(),
        state: None,
        created_at: now,
    }
}

async fn lease_rows_keep_their_token_counter(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let k = key("k");
    let mut tx = s.begin(lock_key(&ns(), lock_space::LEASE, "k")).await.unwrap();
    assert_eq!(tx.lease_row(&ns(), &k, false).await.unwrap(), None);
    let now = tx.now();
    tx.put_lease(&ns(), &lease("k", "a", 1, now)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = s.begin(lock_key(&ns(), lock_space::LEASE, "k")).await.unwrap();
    tx.end_lease(&ns(), &k).await.unwrap();
    tx.commit().await.unwrap();
    let row = s.lease_row(&ns(), &k).await.unwrap().expect("row outlives the lease");
    assert_eq!((row.token, row.holder.clone()), (tok(1), None));
    assert!(row.live(s.now().await.unwrap()).is_none());
}

async fn dropped_transactions_roll_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    {
        let mut tx = s.begin(1).await.unwrap();
        let now = tx.now();
        tx.put_lease(&ns(), &lease("gone", "a", 1, now)).await.unwrap();
        tx.insert_entity(&ns(), &entity("e1", None, now)).await.unwrap();
    }
    assert_eq!(s.lease_row(&ns(), &key("gone")).await.unwrap(), None);
    assert_eq!(
        s.entity(&ns(), &EntityId::parse("id", "e1".into()).unwrap())
            .await
            .unwrap(),
        None
    );
}

async fn entities_ids_and_dedup_keys_are_unique(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let mut tx = s.begin(1).await.unwrap();
    let now = tx.now();
    tx.insert_entity(&ns(), &entity("e1", Some("d"), now)).await.unwrap();
    let err = refused!(tx, tx.insert_entity(&ns(), &entity("e1", None, now)));
    assert!(
        matches!(err, StoreError::Rejected(DomainError::AlreadyExists { .. })),
        "{err:?}"
    );
    let mut tx = s.begin(1).await.unwrap();
    tx.insert_entity(&ns(), &entity("e1", Some("d"), now)).await.unwrap();
    let err = refused!(tx, tx.insert_entity(&ns(), &entity("e2", Some("d"), now)));
    assert!(
        matches!(err, StoreError::Rejected(DomainError::AlreadyExists { .. })),
        "dedup index: {err:?}"
    );
    let mut tx = s.begin(1).await.unwrap();
    tx.insert_entity(&ns(), &entity("e1", Some("d"), now)).await.unwrap();
    let kind = Name::parse("k", "task".into()).unwrap();
    let found = tx
        .entity_by_dedup(&ns(), &kind, &DedupKey::parse("d", "d".into()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id.as_str(), "e1");
    tx.commit().await.unwrap();
    let other = Namespace::parse("ns", "other".into()).unwrap();
    assert_eq!(
        s.entity(&other, &found.id).await.unwrap(),
        None,
        "I12: namespaces are disjoint"
    );
    assert_eq!(
        s.entity(&ns(), &found.id).await.unwrap(),
        Some(entity("e1", Some("d"), now))
    );
}

async fn events_read_back_in_seq_order_and_one_final(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let id = EntityId::parse("id", "e1".into()).unwrap();
    let mut changes = s.changes();
    let mut tx = s.begin(1).await.unwrap();
    let now = tx.now();
    tx.insert_entity(&ns(), &entity("e1", None, now)).await.unwrap();
    let evs: Vec<_> = (1..=5)
        .map(|i| event(i, if i == 5 { "final" } else { "p" }, now))
        .collect();
    tx.insert_events(&ns(), &id, &evs).await.unwrap();
    tx.publish(Change::Tape {
        ns: ns(),
        entity_id: id.clone(),
        head: seq(5),
        events: evs.iter().cloned().map(Arc::new).collect(),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.events(&ns(), &id, Seq::ZERO, 100).await.unwrap(), evs);
    assert_eq!(s.events(&ns(), &id, seq(2), 2).await.unwrap(), evs[2..4].to_vec());
    // The change reaches subscribers after commit (NOTIFY or in-process).
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
    let mut tx = s.begin(1).await.unwrap();
    refused!(tx, tx.insert_events(&ns(), &id, &[event(3, "p", now)]));
    let mut tx = s.begin(1).await.unwrap();
    refused!(tx, tx.insert_events(&ns(), &id, &[event(6, "final", now)]));
}

async fn request_outcomes_are_recorded_and_purged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = Clock::system();
    let s = store(&db, clock.clone()).await;
    let rid = RequestId::parse_optional("r", "r1".into()).unwrap().unwrap();
    let mut tx = s.begin(1).await.unwrap();
    tx.put_request(&ns(), &rid, "M", "{\"a\":1}").await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = s.begin(1).await.unwrap();
    assert_eq!(
        tx.request(&ns(), &rid).await.unwrap(),
        Some(("M".into(), "{\"a\":1}".into()))
    );
    // One outcome per request id.
    refused!(tx, tx.put_request(&ns(), &rid, "M", "{}"));
    assert!(s.is_housekeeper().await.unwrap());
    clock.advance(Duration::from_secs(10));
    assert_eq!(s.purge_requests(s.now().await.unwrap()).await.unwrap(), 1);
}

async fn machines_and_listing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let kind = Name::parse("k", "task".into()).unwrap();
    let mut tx = s.begin(1).await.unwrap();
    let now = tx.now();
    let m = task_machine(now);
    tx.put_machine(&ns(), &m).await.unwrap();
    for (i, state) in ["pending", "running", "running"].iter().enumerate() {
        let mut e = entity(&format!("e{i}"), None, now);
        e.state = state.to_string();
        if i == 2 {
            e.fields.insert("turn".into(), "t".into());
        }
        tx.insert_entity(&ns(), &e).await.unwrap();
    }
    assert_eq!(
        tx.state_in_use(&ns(), &kind, &["failed", "running"]).await.unwrap(),
        Some("running".into())
    );
    assert_eq!(tx.state_in_use(&ns(), &kind, &["failed"]).await.unwrap(), None);
    tx.commit().await.unwrap();
    assert_eq!(s.machine(&ns(), &kind).await.unwrap(), Some(m));
    let q = |states: &[&str], has: &[&str], missing: &[&str], after: Option<&str>| ListEntities {
        ns: ns(),
        kind: kind.clone(),
        states: states
            .iter()
            .map(|s| Name::parse("s", s.to_string()).unwrap())
            .collect(),
        has_fields: has.iter().map(|s| Name::parse("s", s.to_string()).unwrap()).collect(),
        missing_fields: missing
            .iter()
            .map(|s| Name::parse("s", s.to_string()).unwrap())
            .collect(),
        limit: 10,
        after: after.map(|a| PageToken::after(&EntityId::parse("a", a.into()).unwrap())),
    };
    let ids = |v: Vec<Entity>| v.into_iter().map(|e| e.id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_entities(&q(&[], &[], &[], None)).await.unwrap()),
        ["e0", "e1", "e2"]
    );
    assert_eq!(
        ids(s.list_entities(&q(&["running"], &[], &[], None)).await.unwrap()),
        ["e1", "e2"]
    );
    assert_eq!(
        ids(s.list_entities(&q(&["running"], &[], &["turn"], None)).await.unwrap()),
        ["e1"]
    );
    assert_eq!(
        ids(s.list_entities(&q(&[], &["turn", "note"], &[], None)).await.unwrap()),
        ["e2"]
    );
    assert_eq!(
        ids(s.list_entities(&q(&[], &[], &[], Some("e0"))).await.unwrap()),
        ["e1", "e2"]
    );
}

async fn commits_are_conditional_on_the_expected_machine(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let kind = Name::parse("k", "task".into()).unwrap();
    let lock = lock_key(&ns(), lock_space::MACHINE, "task");
    let mut tx = s.begin(lock).await.unwrap();
    let now = tx.now();
    tx.put_machine(&ns(), &task_machine(now)).await.unwrap();
    tx.commit().await.unwrap();
    // Planned with the current version: commits.
    let mut tx = s.begin(1).await.unwrap();
    tx.expect_machine(lock, &ns(), &kind, 1).await.unwrap();
    tx.insert_entity(&ns(), &entity("e1", None, now)).await.unwrap();
    tx.commit().await.unwrap();
    // Planned with a version that is no longer current: nothing is written.
    let mut tx = s.begin(1).await.unwrap();
    tx.insert_entity(&ns(), &entity("e2", None, now)).await.unwrap();
    let err = refused!(tx, tx.expect_machine(lock, &ns(), &kind, 7));
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        s.entity(&ns(), &EntityId::parse("e", "e2".into()).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.entity(&ns(), &EntityId::parse("e", "e1".into()).unwrap())
            .await
            .unwrap()
            .is_some()
    );
}

async fn writers_of_one_key_serialize(backend: Backend) {
    // Concurrent read-modify-write increments of a lease token and of an entity version,
    // each in its own transaction under the key's lock: none may be lost, whether the row
    // is read by `begin` itself (First::...) or by a read after it.
    let db = TestDb::new(backend).await;
    let s = store(&db, Clock::system()).await;
    let lease_lock = lock_key(&ns(), lock_space::LEASE, "ctr");
    let entity_lock = lock_key(&ns(), lock_space::ENTITY, "e");
    let id = EntityId::parse("id", "e".into()).unwrap();
    let mut tx = s.begin(entity_lock).await.unwrap();
    let now = tx.now();
    tx.insert_entity(&ns(), &entity("e", None, now)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tasks = vec![];
    for i in 0..32 {
        let (s, id) = (s.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let (ns, k) = (ns(), key("ctr"));
            let first = if i % 2 == 0 {
                First::Lease(&ns, &k)
            } else {
                First::Nothing
            };
            let mut tx = s.begin_at(lease_lock, first).await.unwrap();
            let row = tx.lease_row(&ns, &k, false).await.unwrap();
            let next = row.map_or(1, |r| r.token.get() + 1);
            let now = tx.now();
            tx.put_lease(&ns, &lease("ctr", &format!("h{i}"), next, now))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let first = if i % 2 == 0 {
                First::Entity(&ns, &id)
            } else {
                First::Nothing
            };
            let mut tx = s.begin_at(entity_lock, first).await.unwrap();
            let mut e = tx.entity(&ns, &id).await.unwrap().unwrap();
            e.version = e.version.next();
            tx.update_entity(&ns, &e).await.unwrap();
            tx.commit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.lease_row(&ns(), &key("ctr")).await.unwrap().unwrap().token, tok(32));
    assert_eq!(s.entity(&ns(), &id).await.unwrap().unwrap().version.get(), 1 + 32);
    // A row read by `begin` that does not exist reads as absent.
    let (n, ghost) = (ns(), EntityId::parse("id", "ghost".into()).unwrap());
    let mut tx = s.begin_at(entity_lock, First::Entity(&n, &ghost)).await.unwrap();
    assert_eq!(tx.entity(&n, &ghost).await.unwrap(), None);
}

async fn clock_skew_is_store_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = Clock::system();
    let s = store(&db, clock.clone()).await;
    let before = s.now().await.unwrap();
    clock.advance(Duration::from_secs(3600));
    let after = s.now().await.unwrap();
    assert!(after.0 - before.0 >= 3_600_000_000, "{before:?} -> {after:?}");
    let tx = s.begin(7).await.unwrap();
    assert!(tx.now() >= after);
}

both_backends!(
    lease_rows_keep_their_token_counter,
    dropped_transactions_roll_back,
    entities_ids_and_dedup_keys_are_unique,
    events_read_back_in_seq_order_and_one_final,
    request_outcomes_are_recorded_and_purged,
    machines_and_listing,
    commits_are_conditional_on_the_expected_machine,
    writers_of_one_key_serialize,
    clock_skew_is_store_time,
);

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
    assert!(b.is_housekeeper().await.unwrap(), "another replica takes over");
}

both_backends!(postgres_only: one_housekeeper_among_postgres_replicas);
