//! The etcd v3 baseline through `etcd-client`: the closest etcd equivalent of each scenario
//! (lease grant + put-if-absent txn + revoke; compare-mod-revision txn; put; watch), under
//! a fresh key prefix per run.

use crate::checks::{CHECK_CONCURRENCY, Findings, gapless};
use crate::fanout::{self, Ready, Seen, Window};
use crate::load::{self, Tally, Worker, drive};
use crate::stats::Outcome;
use crate::{Cell, Plan, Scenario, System};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long the first call may take before etcd counts as unreachable.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);
const LEASE_TTL_SECS: i64 = 30;

/// Mod revision and version (the value) of an entity key, as a client last saw them.
type Known = (i64, u64);

/// The etcd baseline.
pub struct Etcd {
    endpoint: String,
    client: Client,
    /// `bench/<uuid>/`: keys of this run.
    prefix: Arc<str>,
    tallies: HashMap<Scenario, Tally>,
    /// Latest mod revision and version per entity, per scenario, carried across cells.
    known: HashMap<Scenario, Arc<Vec<Known>>>,
    /// Cells so far: part of every client's name, so event keys never repeat across cells.
    cells: u32,
}

fn kind(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("etcd:{:?}", s.code()),
        etcd_client::Error::TransportError(_) => "etcd:transport".into(),
        etcd_client::Error::WatchError(_) => "etcd:watch".into(),
        _ => "etcd:other".into(),
    }
}

fn msg(e: etcd_client::Error) -> String {
    e.to_string()
}

async fn connect(endpoint: &str) -> Result<Client, String> {
    Client::connect([endpoint], None).await.map_err(msg)
}

fn ids(prefix: &str, scenario: Scenario, keys: u32) -> Arc<[String]> {
    (0..scenario.keys(keys))
        .map(|i| format!("{prefix}{}-{i}", scenario.prefix()))
        .collect()
}

/// The version stored as an entity key's value.
fn version_of(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Event keys carry their number zero-padded, so they list in order.
fn event_key(entity: &str, n: u64) -> String {
    format!("{entity}/ev/{n:010}")
}

fn event_number(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key).ok()?.rsplit('/').next()?.parse().ok()
}

impl Etcd {
    /// Connects (failing fast when etcd is unreachable) and puts the entity keys of the
    /// selected scenarios, each at version 1.
    pub async fn setup(endpoint: &str, plan: &Plan) -> Result<Self, String> {
        let mut client = tokio::time::timeout(REACH_TIMEOUT, async {
            let mut c = connect(endpoint).await?;
            c.get("bench/", None).await.map_err(msg)?;
            Ok::<_, String>(c)
        })
        .await
        .map_err(|_| format!("no answer within {REACH_TIMEOUT:?}"))??;
        let prefix: Arc<str> = format!("bench/{}/", uuid::Uuid::now_v7().simple()).into();
        let mut tallies = HashMap::new();
        let mut known = HashMap::new();
        for &s in &plan.scenarios {
            tallies.insert(s, Tally::new(s.keys(plan.keys)));
            if matches!(s, Scenario::Transition | Scenario::TransitionHot) {
                let seeded = stream::iter(ids(&prefix, s, plan.keys).iter().cloned())
                    .map(|id| {
                        let mut c = client.clone();
                        async move {
                            let r = c.put(id, "1", None).await.map_err(msg)?;
                            Ok::<Known, String>((r.header().map_or(0, |h| h.revision()), 1))
                        }
                    })
                    .buffered(CHECK_CONCURRENCY)
                    .collect::<Vec<_>>()
                    .await;
                known.insert(s, Arc::new(seeded.into_iter().collect::<Result<Vec<_>, _>>()?));
            }
        }
        client.get(prefix.as_bytes(), None).await.map_err(msg)?;
        Ok(Self {
            endpoint: endpoint.to_string(),
            client,
            prefix,
            tallies,
            known,
            cells: 0,
        })
    }

    /// Measures one cell and checks it.
    pub async fn cell(&mut self, scenario: Scenario, clients: u32, plan: &Plan) -> Cell {
        let result = match scenario {
            Scenario::FencedTransition => {
                return Cell::skipped(scenario, clients, System::Etcd, "not implemented for etcd");
            }
            Scenario::StreamFanout => self.fanout(plan).await,
            _ => self.measure(scenario, clients, plan).await,
        };
        result.unwrap_or_else(|e| Cell::failed(scenario, clients, System::Etcd, e))
    }

    async fn measure(&mut self, scenario: Scenario, clients: u32, plan: &Plan) -> Result<Cell, String> {
        self.cells += 1;
        let ids = ids(&self.prefix, scenario, plan.keys);
        let known = self.known.get(&scenario).cloned().unwrap_or_default();
        let conns = futures::future::try_join_all((0..clients).map(|_| connect(&self.endpoint))).await?;
        let workers = conns
            .into_iter()
            .enumerate()
            .map(|(n, c)| EtcdWorker {
                c,
                scenario,
                name: format!("bench-client-{}-{n}", self.cells),
                ids: ids.clone(),
                rng: fastrand::Rng::new(),
                tally: Tally::new(ids.len()),
                known: known.to_vec(),
                appended: 0,
                payload: vec![b'x'; if scenario == Scenario::Append { 1024 } else { 64 }],
            })
            .collect();
        let run = drive(workers, plan.timing).await?;
        let (cell_tally, tally) = run.settle(self.tallies.entry(scenario).or_default());
        if !known.is_empty() {
            // Carry the newest revision each client saw into the next cell.
            let mut newest = known.to_vec();
            for w in &run.workers {
                for (n, k) in newest.iter_mut().zip(&w.known) {
                    *n = (*n).max(*k);
                }
            }
            self.known.insert(scenario, Arc::new(newest));
        }
        let mut cell = Cell::measured(scenario, clients, System::Etcd, plan, run.stats);
        let found = Findings::collect(
            match scenario {
                Scenario::LeaseCycle => "key left held",
                _ => "lost or extra update, or gap",
            },
            stream::iter(cell_tally.touched())
                .map(|i| {
                    let (c, id, n) = (self.client.clone(), ids[i].clone(), tally.get(i));
                    async move { check_key(c, scenario, &id, n).await.err().map(|e| format!("{id}: {e}")) }
                })
                .buffer_unordered(CHECK_CONCURRENCY),
        )
        .await;
        found.report_into(&mut cell.failures);
        Ok(cell)
    }

    /// S watchers on one prefix over several connections; one writer puts numbered,
    /// stamped keys as fast as it can, then one `final` key. Every watcher must see
    /// 1..=n in order and then `final`.
    async fn fanout(&mut self, plan: &Plan) -> Result<Cell, String> {
        self.cells += 1;
        let prefix = format!("{}fan-{}", self.prefix, self.cells);
        let subs = plan.subscribers as usize;
        let n_conns = subs.div_ceil(plan.streams_per_connection as usize);
        let conns = futures::future::try_join_all((0..n_conns).map(|_| connect(&self.endpoint))).await?;
        let start = self
            .client
            .get(prefix.as_bytes(), None)
            .await
            .map_err(msg)?
            .header()
            .map_or(0, |h| h.revision())
            + 1;
        let window = Window::default();
        let tasks = fanout::start(subs, |n, ready| {
            watch(
                conns[n % conns.len()].clone(),
                format!("{prefix}/"),
                start,
                window.clone(),
                ready,
            )
        })
        .await?;
        let writer = FanWriter {
            c: self.client.clone(),
            entity: prefix.clone(),
            next: 1,
        };
        window.open(plan.timing);
        let run = drive(vec![writer], plan.timing).await?;
        let written = run.workers.first().map_or(0, |w| w.next - 1);
        self.client
            .put(format!("{prefix}/final"), "final", None)
            .await
            .map_err(|e| format!("put final: {e}"))?;
        let mut cell = Cell::measured(Scenario::StreamFanout, 1, System::Etcd, plan, run.stats);
        // The final key counts as seq n + 1, as baton's `final` ends its tape.
        let (fan, incomplete) = fanout::finish(tasks, written + 1).await?;
        incomplete.report_into(&mut cell.failures);
        cell.fanout = Some(fan);
        Ok(cell)
    }
}

/// The end-of-cell check of one touched key after `n` successes on it in this run.
async fn check_key(mut c: Client, scenario: Scenario, id: &str, n: u64) -> Result<(), String> {
    if scenario == Scenario::LeaseCycle {
        // Every lease was revoked, which deletes its key.
        let r = c
            .get(id, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(msg)?;
        return if r.count() == 0 {
            Ok(())
        } else {
            Err("still held".into())
        };
    }
    let events = c
        .get(
            format!("{id}/ev/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(msg)?;
    if scenario == Scenario::Append {
        return if events.count() as u64 == n {
            Ok(())
        } else {
            Err(format!("{} events after {n} appends", events.count()))
        };
    }
    let entity = c.get(id, None).await.map_err(msg)?;
    let version = entity.kvs().first().map_or(0, |kv| version_of(kv.value()));
    if version != 1 + n {
        return Err(format!("version {version} after {n} transitions"));
    }
    // Event keys are numbered by the version they made: 2..=1+n, gapless.
    let last = gapless(
        events
            .kvs()
            .iter()
            .map(|kv| event_number(kv.key()).unwrap_or(0).saturating_sub(1)),
    )?;
    if last != n {
        return Err(format!("{last} events after {n} transitions"));
    }
    Ok(())
}

/// One etcd client of lease-cycle, transition, transition-hot or append.
struct EtcdWorker {
    c: Client,
    scenario: Scenario,
    name: String,
    ids: Arc<[String]>,
    rng: fastrand::Rng,
    tally: Tally,
    /// Transition: this client's view of each entity (a stale one costs a miss).
    known: Vec<Known>,
    /// Append: events this client wrote, for unique keys.
    appended: u64,
    payload: Vec<u8>,
}

impl Worker for EtcdWorker {
    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let i = self.rng.usize(..self.ids.len());
            let done = match self.scenario {
                Scenario::LeaseCycle => self.lease_cycle(i).await,
                Scenario::Append => {
                    self.appended += 1;
                    let key = format!("{}/ev/{}-{}", self.ids[i], self.name, self.appended);
                    self.c.put(key, self.payload.clone(), None).await.map(|_| true)
                }
                _ => self.transition(i).await,
            };
            load::tallied(done, &mut self.tally, i, kind)
        })
    }

    fn tally(&self) -> Option<&Tally> {
        Some(&self.tally)
    }
}

impl EtcdWorker {
    /// Grant, put-if-absent with the lease, revoke. Ok(false) when the key exists.
    async fn lease_cycle(&mut self, i: usize) -> Result<bool, etcd_client::Error> {
        let key = self.ids[i].clone();
        let lease = self.c.lease_grant(LEASE_TTL_SECS, None).await?.id();
        let put = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.name.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let acquired = self.c.txn(put).await;
        let revoked = self.c.lease_revoke(lease).await;
        let acquired = acquired?.succeeded();
        revoked?;
        Ok(acquired)
    }

    /// Compare-mod-revision txn: put the entity's next version and its event when the
    /// entity is as this client last saw it; otherwise read it back (a miss).
    async fn transition(&mut self, i: usize) -> Result<bool, etcd_client::Error> {
        let key = self.ids[i].clone();
        let (rev, version) = self.known[i];
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([
                TxnOp::put(key.clone(), (version + 1).to_string(), None),
                TxnOp::put(event_key(&key, version + 1), self.payload.clone(), None),
            ])
            .or_else([TxnOp::get(key, None)]);
        let r = self.c.txn(txn).await?;
        if r.succeeded() {
            self.known[i] = (r.header().map_or(0, |h| h.revision()), version + 1);
            return Ok(true);
        }
        for op in r.op_responses() {
            if let TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                self.known[i] = (kv.mod_revision(), version_of(kv.value()));
            }
        }
        Ok(false)
    }
}

/// The fan-out writer: puts `<entity>/ev/<n>` with a stamp, n = 1, 2, …
struct FanWriter {
    c: Client,
    entity: String,
    next: u64,
}

impl Worker for FanWriter {
    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            match self
                .c
                .put(event_key(&self.entity, self.next), load::stamp(), None)
                .await
            {
                Ok(_) => {
                    self.next += 1;
                    Outcome::Success
                }
                Err(e) => Outcome::Error(kind(&e)),
            }
        })
    }
}

/// One watcher of the fan-out prefix, from `start`; ends after the `final` key.
async fn watch(mut c: Client, prefix: String, start: i64, window: Window, ready: Ready) -> Seen {
    let mut seen = Seen::default();
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut stream = match c.watch(prefix.as_bytes(), Some(options)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e.to_string())).await;
            seen.error = Some(e.to_string());
            return seen;
        }
    };
    // The first response confirms the watch is created: from here nothing can be missed.
    match stream.message().await {
        Ok(Some(r)) if r.created() => {
            let _ = ready.send(Ok(())).await;
        }
        other => {
            let e = format!("watch not created: {other:?}");
            let _ = ready.send(Err(e.clone())).await;
            seen.error = Some(e);
            return seen;
        }
    }
    drop(ready);
    loop {
        let r = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                seen.error = Some(format!("watch ended after {}", seen.last_seq));
                return seen;
            }
            Err(e) => {
                seen.error = Some(format!("watch failed after {}: {e}", seen.last_seq));
                return seen;
            }
        };
        if r.canceled() {
            seen.error = Some(format!("watch canceled: {}", r.cancel_reason()));
            return seen;
        }
        for ev in r.events() {
            let Some(kv) = ev.kv() else { continue };
            if ev.event_type() != EventType::Put {
                continue;
            }
            seen.last_seq += 1;
            if kv.key().ends_with(b"/final") {
                seen.finals += 1;
                seen.closed = true;
                return seen;
            }
            if event_number(kv.key()) != Some(seen.last_seq) {
                seen.error = Some(format!("{:?} after seq {}", kv.key_str(), seen.last_seq - 1));
                return seen;
            }
            seen.delivered(kv.value(), &window);
        }
    }
}
