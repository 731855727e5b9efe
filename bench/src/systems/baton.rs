//! The scenarios against baton over gRPC, with the generated client; each bench client on
//! its own HTTP/2 connection, in a fresh namespace per run.

use crate::checks::{CHECK_CONCURRENCY, Findings, gapless};
use crate::fanout::{self, Ready, Seen, Window};
use crate::load::{self, FENCE_HOLDER, FENCE_TTL, FenceLeases, Run, Tally, Worker, drive};
use crate::metrics::{Counters, Endpoint};
use crate::server::rss_kib;
use crate::stats::Outcome;
use crate::{Cell, IdleStreams, Plan, Scenario, System};
use ::baton::proto::{self, coordinator_client::CoordinatorClient, stream_events_response::Item};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::transport::Channel;

type Client = CoordinatorClient<Channel>;

/// The bench machine: `tick` keeps an entity running, `finish` ends it (and writes `final`).
const KIND: &str = "bench_item";
/// Payload of a `transition` event (~64 B) and of an `append` event (1 KiB).
const TRANSITION_PAYLOAD: usize = 64;
const APPEND_PAYLOAD: usize = 1024;

/// baton under test.
pub struct Baton {
    url: String,
    ns: Arc<str>,
    /// Connections for setup and checks.
    admin: Vec<Client>,
    /// Successes per key so far in this run, per scenario (entities live across cells).
    tallies: HashMap<Scenario, Tally>,
    /// Fan-out cells so far: each gets a fresh entity, sealed at its end.
    fanouts: u32,
    /// The fenced-transition entities' leases and versions, when that scenario runs.
    fence: Option<Fence>,
    /// The server's metrics, read around every cell.
    metrics: Option<Endpoint>,
    /// The server's process, for its CPU time around every cell (spawned or --server-pid).
    server_pid: Option<u32>,
    /// What went wrong reading them, for the report's notes.
    notes: Vec<String>,
}

/// What fenced-transition clients start a cell from: one lease per entity, held by
/// [`FENCE_HOLDER`] since setup, and the newest version any client has seen per entity.
struct Fence {
    /// Token of entity `i`'s lease (its key is the entity id).
    tokens: Arc<[u64]>,
    leases: FenceLeases,
    known: Vec<u64>,
}

async fn connect(url: &str) -> Result<Client, String> {
    let channel = Channel::from_shared(url.to_string())
        .map_err(|e| format!("bad target {url:?}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    Ok(CoordinatorClient::new(channel))
}

async fn connect_many(url: &str, n: usize) -> Result<Vec<Client>, String> {
    futures::future::try_join_all((0..n).map(|_| connect(url))).await
}

/// `google.rpc.Status`, as a status's binary details carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.ErrorInfo`: baton's `reason` and `metadata` (e.g. the current `version`).
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: HashMap<String, String>,
}

const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// The first ErrorInfo in a status's details. Decoded here with prost (what
/// `tonic_types::StatusExt` does) so the bench needs no further dependency.
fn error_info(s: &tonic::Status) -> Option<ErrorInfo> {
    use prost::Message;
    let status = RpcStatus::decode(s.details()).ok()?;
    let any = status.details.into_iter().find(|a| a.type_url == ERROR_INFO_TYPE)?;
    ErrorInfo::decode(any.value.as_slice()).ok()
}

/// An error's kind: the gRPC code name, and the ErrorInfo reason when there is one
/// (`FailedPrecondition:LEASE_LOST`).
fn code(s: &tonic::Status) -> String {
    match error_info(s) {
        Some(info) if !info.reason.is_empty() => format!("{:?}:{}", s.code(), info.reason),
        _ => format!("{:?}", s.code()),
    }
}

/// The entity's current version in an `ABORTED` / `VERSION_MISMATCH` answer (ErrorInfo
/// metadata `version`).
fn mismatch_version(s: &tonic::Status) -> Option<u64> {
    if s.code() != tonic::Code::Aborted {
        return None;
    }
    let info = error_info(s)?;
    if info.reason != "VERSION_MISMATCH" {
        return None;
    }
    info.metadata.get("version")?.parse().ok()
}

fn ttl(d: std::time::Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

/// `prefix-0` … `prefix-(n-1)`.
fn ids(scenario: Scenario, keys: u32) -> Arc<[String]> {
    (0..scenario.keys(keys))
        .map(|i| format!("{}-{i}", scenario.prefix()))
        .collect()
}

fn machine() -> proto::MachineSpec {
    let transition = |name: &str, to: &str| proto::TransitionSpec {
        name: name.into(),
        from: vec!["running".into()],
        to: to.into(),
        ..Default::default()
    };
    proto::MachineSpec {
        kind: KIND.into(),
        states: vec!["running".into(), "done".into()],
        initial_state: "running".into(),
        terminal_states: vec!["done".into()],
        transitions: vec![transition("tick", "running"), transition("finish", "done")],
        field_rules: vec![],
        ..Default::default()
    }
}

fn event(payload: Vec<u8>) -> proto::EventInput {
    proto::EventInput {
        r#type: "tick".into(),
        payload,
        content_type: String::new(),
    }
}

impl Baton {
    /// Connects, defines the bench machine in a fresh namespace and creates the entities
    /// of the selected scenarios, and fenced-transition's leases (concurrently, before any
    /// timing). `metrics`, when given, is read before and after every cell, and with it the
    /// CPU time of `server_pid`.
    pub async fn setup(
        url: &str,
        plan: &Plan,
        metrics: Option<Endpoint>,
        server_pid: Option<u32>,
    ) -> Result<Self, String> {
        let admin = connect_many(url, 4).await?;
        let ns: Arc<str> = format!("bench-{}", uuid::Uuid::now_v7().simple()).into();
        admin[0]
            .clone()
            .define_machine(proto::DefineMachineRequest {
                namespace: ns.to_string(),
                spec: Some(machine()),
            })
            .await
            .map_err(|s| format!("define machine: {}", s.message()))?;
        let mut this = Self {
            url: url.to_string(),
            ns,
            admin,
            tallies: HashMap::new(),
            fanouts: 0,
            fence: None,
            metrics,
            server_pid,
            notes: vec![],
        };
        for &s in &plan.scenarios {
            if s.has_entities() {
                let ids = ids(s, plan.keys);
                let created = stream::iter(ids.iter().enumerate())
                    .map(|(i, id)| this.create(i, id))
                    .buffer_unordered(CHECK_CONCURRENCY)
                    .collect::<Vec<_>>()
                    .await;
                created.into_iter().collect::<Result<Vec<()>, String>>()?;
            }
            if s == Scenario::FencedTransition {
                let ids = ids(s, plan.keys);
                let leases = FenceLeases::asking();
                let tokens = stream::iter(ids.iter().enumerate())
                    .map(|(i, id)| this.acquire_fence(i, id))
                    .buffered(CHECK_CONCURRENCY)
                    .collect::<Vec<_>>()
                    .await;
                this.fence = Some(Fence {
                    tokens: tokens.into_iter().collect::<Result<_, String>>()?,
                    leases,
                    // Created at version 1; setup makes no transition.
                    known: vec![1; ids.len()],
                });
            }
            this.tallies.insert(s, Tally::new(s.keys(plan.keys)));
        }
        Ok(this)
    }

    /// Leases entity `id` to [`FENCE_HOLDER`] for [`FENCE_TTL`]; its token.
    async fn acquire_fence(&self, i: usize, id: &str) -> Result<u64, String> {
        let r = self
            .client(i)
            .acquire_lease(proto::AcquireLeaseRequest {
                namespace: self.ns.to_string(),
                key: id.into(),
                holder: FENCE_HOLDER.into(),
                ttl: ttl(FENCE_TTL),
                wait: None,
                request_id: String::new(),
            })
            .await
            .map_err(|s| format!("lease {id}: {} {}", code(&s), s.message()))?
            .into_inner();
        match r.lease {
            Some(l) if r.acquired => Ok(l.token),
            l => Err(format!("lease {id}: not acquired, held by {:?}", l.map(|l| l.holder))),
        }
    }

    /// Renews every fenced-transition lease for another [`FENCE_TTL`].
    async fn renew_fences(&mut self, plan: &Plan) -> Result<(), String> {
        let Some(fence) = &self.fence else {
            return Ok(());
        };
        let ids = ids(Scenario::FencedTransition, plan.keys);
        let leases = FenceLeases::asking();
        let renewed = stream::iter(ids.iter().zip(fence.tokens.iter()).enumerate())
            .map(|(i, (id, &token))| {
                let mut c = self.client(i);
                let req = proto::RenewLeaseRequest {
                    namespace: self.ns.to_string(),
                    key: id.clone(),
                    token,
                    ttl: ttl(FENCE_TTL),
                    request_id: String::new(),
                };
                async move {
                    c.renew_lease(req)
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("renew lease {id}: {} {}", code(&s), s.message()))
                }
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        renewed.into_iter().collect::<Result<Vec<()>, String>>()?;
        if let Some(fence) = &mut self.fence {
            fence.leases = leases;
        }
        Ok(())
    }

    /// Drives `workers` for `plan.timing`, reading the server's counters right before the
    /// first call and right after the last answer (before any check reads); the measured
    /// cell carries the calls made and the server's counts.
    async fn measure<W: Worker>(
        &mut self,
        scenario: Scenario,
        clients: u32,
        workers: Vec<W>,
        plan: &Plan,
    ) -> Result<(Run<W>, Cell), String> {
        let before = self.scrape(scenario, clients).await;
        let run = drive(workers, plan.timing).await?;
        Ok(self.counted_cell(scenario, clients, plan, before, run).await)
    }

    /// The measured cell of `run`, with the calls made and the server's counts since
    /// `before`, read now.
    async fn counted_cell<W: Worker>(
        &mut self,
        scenario: Scenario,
        clients: u32,
        plan: &Plan,
        before: Option<Counters>,
        run: Run<W>,
    ) -> (Run<W>, Cell) {
        let after = self.scrape(scenario, clients).await;
        let mut cell = Cell::measured(scenario, clients, System::Baton, plan, run.stats.clone());
        cell.calls = run.calls();
        cell.server = before.zip(after).map(|(b, a)| a.since(&b));
        (run, cell)
    }

    async fn scrape(&mut self, scenario: Scenario, clients: u32) -> Option<Counters> {
        let cpu = || self.server_pid.and_then(|pid| crate::server::cpu_seconds(pid).ok());
        let Some(metrics) = self.metrics.as_ref() else {
            // A server without metrics still has a CPU time.
            return cpu().map(|cpu| Counters {
                cpu_seconds: Some(cpu),
                ..Counters::default()
            });
        };
        match metrics.scrape().await {
            Ok(mut c) => {
                c.cpu_seconds = cpu();
                Some(c)
            }
            Err(e) => {
                self.notes
                    .push(format!("{} with {clients} client(s): {e}", scenario.name()));
                None
            }
        }
    }

    fn client(&self, i: usize) -> Client {
        self.admin[i % self.admin.len()].clone()
    }

    async fn create(&self, i: usize, id: &str) -> Result<(), String> {
        self.client(i)
            .create_entity(proto::CreateEntityRequest {
                namespace: self.ns.to_string(),
                kind: KIND.into(),
                id: id.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("create {id}: {:?} {}", s.code(), s.message()))
    }

    /// Measures one cell and checks it.
    pub async fn cell(&mut self, scenario: Scenario, clients: u32, plan: &Plan) -> Cell {
        let result = match scenario {
            Scenario::LeaseCycle => self.leases(clients, plan).await,
            Scenario::Transition | Scenario::TransitionHot | Scenario::Append => {
                self.entities(scenario, clients, plan).await
            }
            Scenario::FencedTransition => self.fenced(clients, plan).await,
            Scenario::StreamFanout => self.fanout(plan).await,
        };
        result.unwrap_or_else(|e| Cell::failed(scenario, clients, System::Baton, e))
    }

    async fn leases(&mut self, clients: u32, plan: &Plan) -> Result<Cell, String> {
        let scenario = Scenario::LeaseCycle;
        let keys = ids(scenario, plan.keys);
        let conns = connect_many(&self.url, clients as usize).await?;
        let workers = conns
            .into_iter()
            .enumerate()
            .map(|(n, c)| LeaseWorker {
                c,
                ns: self.ns.clone(),
                holder: format!("bench-client-{n}"),
                keys: keys.clone(),
                rng: fastrand::Rng::new(),
                tally: Tally::new(keys.len()),
                calls: 0,
            })
            .collect();
        let (run, mut cell) = self.measure(scenario, clients, workers, plan).await?;
        let (cell_tally, tally) = run.settle(self.tallies.entry(scenario).or_default());
        // Tokens go +1 per grant from 0, so a key's last token is its number of grants; and
        // every cycle released what it acquired, so no key may be left held.
        let found = Findings::collect(
            "token/grant mismatch or key left held",
            stream::iter(cell_tally.touched())
                .map(|i| {
                    let (mut c, key, grants) = (self.client(i), keys[i].clone(), tally.get(i));
                    let ns = self.ns.to_string();
                    async move {
                        let r = c
                            .get_lease(proto::GetLeaseRequest {
                                namespace: ns,
                                key: key.clone(),
                            })
                            .await;
                        match r.map(|r| r.into_inner()) {
                            Err(s) => Some(format!("{key}: get lease {}", code(&s))),
                            Ok(r) if r.lease.is_some() => Some(format!("{key}: still held")),
                            Ok(r) if r.last_token != grants => {
                                Some(format!("{key}: token {} after {grants} grants", r.last_token))
                            }
                            Ok(_) => None,
                        }
                    }
                })
                .buffer_unordered(CHECK_CONCURRENCY),
        )
        .await;
        found.report_into(&mut cell.failures);
        Ok(cell)
    }

    async fn entities(&mut self, scenario: Scenario, clients: u32, plan: &Plan) -> Result<Cell, String> {
        let ids = ids(scenario, plan.keys);
        let conns = connect_many(&self.url, clients as usize).await?;
        let (op, size) = if scenario == Scenario::Append {
            (EntityOp::Append, APPEND_PAYLOAD)
        } else {
            (EntityOp::Transition, TRANSITION_PAYLOAD)
        };
        let workers = conns
            .into_iter()
            .map(|c| EntityWorker {
                c,
                ns: self.ns.clone(),
                ids: ids.clone(),
                rng: fastrand::Rng::new(),
                tally: Tally::new(ids.len()),
                op,
                payload: vec![b'x'; size],
                calls: 0,
            })
            .collect();
        let (run, mut cell) = self.measure(scenario, clients, workers, plan).await?;
        let (cell_tally, tally) = run.settle(self.tallies.entry(scenario).or_default());
        // A transition applied N times moves version 1 → 1+N and writes 2 events each (the
        // state change and ours); an append writes 1 event and leaves the version alone.
        let expect = move |n: u64| match op {
            EntityOp::Transition => (1 + n, 2 * n),
            EntityOp::Append => (1, n),
        };
        let touched = cell_tally.touched();
        self.check_entities(&ids, &touched, |i| expect(tally.get(i)))
            .await
            .report_into(&mut cell.failures);
        if scenario == Scenario::TransitionHot {
            self.check_tapes(&ids, &[0], |_| expect(tally.get(0)).1)
                .await
                .report_into(&mut cell.failures);
        }
        Ok(cell)
    }

    /// fenced-transition: every call carries the entity's lease as a fence, a fresh request
    /// id and the version the client last saw. Checks: version 1 + successes, last_seq
    /// 2 × successes, and a gapless tape, for every entity touched in the cell.
    async fn fenced(&mut self, clients: u32, plan: &Plan) -> Result<Cell, String> {
        let scenario = Scenario::FencedTransition;
        let fence = self.fence.as_ref().ok_or("fenced-transition was not set up")?;
        // Renewals happen here, before the first scrape, so they are not in the cell's counts.
        if fence.leases.renew_before(plan.timing)? {
            self.renew_fences(plan).await?;
        }
        let fence = self.fence.as_ref().ok_or("fenced-transition was not set up")?;
        let ids = ids(scenario, plan.keys);
        let conns = connect_many(&self.url, clients as usize).await?;
        let workers = conns
            .into_iter()
            .enumerate()
            .map(|(worker, c)| FencedWorker {
                c,
                worker,
                clients: clients as usize,
                ns: self.ns.clone(),
                ids: ids.clone(),
                tokens: fence.tokens.clone(),
                known: fence.known.clone(),
                rng: fastrand::Rng::new(),
                tally: Tally::new(ids.len()),
                payload: vec![b'x'; TRANSITION_PAYLOAD],
                calls: 0,
            })
            .collect();
        let (run, mut cell) = self.measure(scenario, clients, workers, plan).await?;
        if let Some(fence) = &mut self.fence {
            fence.known = load::newest(run.workers.iter().map(|w| w.known.as_slice()));
        }
        let (cell_tally, tally) = run.settle(self.tallies.entry(scenario).or_default());
        let touched = cell_tally.touched();
        let expect = |i: usize| (1 + tally.get(i), 2 * tally.get(i));
        self.check_entities(&ids, &touched, expect)
            .await
            .report_into(&mut cell.failures);
        self.check_tapes(&ids, &touched, |i| expect(i).1)
            .await
            .report_into(&mut cell.failures);
        Ok(cell)
    }

    /// Reads back every touched entity: its version and last_seq must be `want(i)`.
    async fn check_entities(&self, ids: &[String], touched: &[usize], want: impl Fn(usize) -> (u64, u64)) -> Findings {
        Findings::collect(
            "lost or extra update",
            stream::iter(touched.iter().copied())
                .map(|i| {
                    let (want_version, want_seq) = want(i);
                    let mut c = self.client(i);
                    let (ns, id) = (self.ns.to_string(), ids[i].clone());
                    async move {
                        match c
                            .get_entity(proto::GetEntityRequest {
                                namespace: ns,
                                id: id.clone(),
                            })
                            .await
                        {
                            Err(s) => Some(format!("{id}: get {}", code(&s))),
                            Ok(r) => {
                                let e = r.into_inner().entity.unwrap_or_default();
                                (e.version != want_version || e.last_seq != want_seq).then(|| {
                                    format!(
                                        "{id}: version {} last_seq {}, expected {want_version} and {want_seq}",
                                        e.version, e.last_seq
                                    )
                                })
                            }
                        }
                    }
                })
                .buffer_unordered(CHECK_CONCURRENCY),
        )
        .await
    }

    /// Reads the tape of every touched entity up to `head(i)`: it must be gapless.
    async fn check_tapes(&self, ids: &[String], touched: &[usize], head: impl Fn(usize) -> u64) -> Findings {
        Findings::collect(
            "gap in tape",
            stream::iter(touched.iter().copied())
                .map(|i| {
                    let (id, head) = (ids[i].clone(), head(i));
                    async move { self.read_tape(i, &id, head).await.err().map(|e| format!("{id}: {e}")) }
                })
                .buffer_unordered(CHECK_CONCURRENCY),
        )
        .await
    }

    /// Reads a live tape from seq 1 up to `head` and checks it is gapless.
    async fn read_tape(&self, i: usize, id: &str, head: u64) -> Result<(), String> {
        if head == 0 {
            return Ok(());
        }
        let mut stream = self
            .client(i)
            .stream_events(proto::StreamEventsRequest {
                namespace: self.ns.to_string(),
                entity_id: id.into(),
                after_seq: 0,
            })
            .await
            .map_err(|s| code(&s))?
            .into_inner();
        let mut seqs = Vec::with_capacity(head as usize);
        while seqs.last() != Some(&head) {
            match stream.message().await {
                Ok(Some(proto::StreamEventsResponse {
                    item: Some(Item::Event(e)),
                })) => seqs.push(e.seq),
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("stream ended at seq {:?}, head {head}", seqs.last())),
                Err(s) => return Err(format!("stream failed: {}", code(&s))),
            }
        }
        gapless(seqs).map(|_| ())
    }

    /// One writer appends stamped events to one entity while `plan.subscribers` streams
    /// follow it; then the writer finishes the entity (one `final`) and every subscriber
    /// must have received seqs 1..=final with no gap, exactly one `final`, then the end.
    async fn fanout(&mut self, plan: &Plan) -> Result<Cell, String> {
        self.fanouts += 1;
        let id = format!("{}-{}", Scenario::StreamFanout.prefix(), self.fanouts);
        self.create(0, &id).await?;
        let subs = plan.subscribers as usize;
        let conns = connect_many(&self.url, subs.div_ceil(plan.streams_per_connection as usize)).await?;
        let window = Window::default();
        let tasks = fanout::start(subs, |n, ready| {
            let req = proto::StreamEventsRequest {
                namespace: self.ns.to_string(),
                entity_id: id.clone(),
                after_seq: 0,
            };
            subscribe(conns[n % conns.len()].clone(), req, window.clone(), ready)
        })
        .await?;
        let writer = FanWriter {
            c: self.client(0),
            ns: self.ns.clone(),
            id: id.clone(),
            calls: 0,
        };
        let before = self.scrape(Scenario::StreamFanout, 1).await;
        window.open(plan.timing);
        let run = drive(vec![writer], plan.timing).await?;
        let (_, mut cell) = self.counted_cell(Scenario::StreamFanout, 1, plan, before, run).await;
        let finished = self
            .client(0)
            .transition(proto::TransitionRequest {
                namespace: self.ns.to_string(),
                entity_id: id.clone(),
                transition: "finish".into(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("finish {id}: {} {}", code(&s), s.message()))?
            .into_inner();
        let final_seq = finished.seqs.last().copied().unwrap_or(0);

        let (fan, incomplete) = fanout::finish(tasks, final_seq).await?;
        incomplete.report_into(&mut cell.failures);
        cell.fanout = Some(fan);
        Ok(cell)
    }

    /// Opens `streams` idle streams on one entity over connections of
    /// `plan.streams_per_connection` streams, confirms each is established (response headers
    /// received), and reports the server's RSS growth per stream (connections included).
    pub async fn idle_streams(&mut self, pid: u32, streams: u32, plan: &Plan) -> Result<IdleStreams, String> {
        let id = format!("{}-idle", Scenario::StreamFanout.prefix());
        self.create(0, &id).await?;
        let before = rss_kib(pid)?;
        let per = plan.streams_per_connection as usize;
        let conns = connect_many(&self.url, (streams as usize).div_ceil(per)).await?;
        let open = stream::iter(0..streams as usize)
            .map(|n| {
                let mut c = conns[n / per].clone();
                let req = proto::StreamEventsRequest {
                    namespace: self.ns.to_string(),
                    entity_id: id.clone(),
                    after_seq: 0,
                };
                async move { c.stream_events(req).await.map(|r| r.into_inner()) }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
        let open = open
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|s| format!("an idle stream did not open: {} {}", code(&s), s.message()))?;
        let after = rss_kib(pid)?;
        drop(open);
        Ok(IdleStreams {
            streams,
            connections: conns.len() as u32,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_stream: after.saturating_sub(before) as f64 / f64::from(streams),
        })
    }

    /// Nothing to tear down: the namespace stays for inspection. Returns the notes.
    pub async fn close(self) -> Vec<String> {
        self.notes
    }
}

/// One lease-cycle client: acquire a random key as its own holder, release it.
struct LeaseWorker {
    c: Client,
    ns: Arc<str>,
    holder: String,
    keys: Arc<[String]>,
    rng: fastrand::Rng,
    /// Grants per key.
    tally: Tally,
    calls: u64,
}

impl Worker for LeaseWorker {
    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let i = self.rng.usize(..self.keys.len());
            self.calls += 1;
            let acquired = self
                .c
                .acquire_lease(proto::AcquireLeaseRequest {
                    namespace: self.ns.to_string(),
                    key: self.keys[i].clone(),
                    holder: self.holder.clone(),
                    ttl: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
                    wait: None,
                    request_id: String::new(),
                })
                .await;
            let lease = match acquired.map(|r| r.into_inner()) {
                Err(s) => return Outcome::Error(code(&s)),
                Ok(r) if !r.acquired => return Outcome::Miss,
                Ok(r) => r.lease.unwrap_or_default(),
            };
            self.tally.add(i);
            self.calls += 1;
            let released = self
                .c
                .release_lease(proto::ReleaseLeaseRequest {
                    namespace: self.ns.to_string(),
                    key: self.keys[i].clone(),
                    token: lease.token,
                    request_id: String::new(),
                })
                .await;
            match released.map(|r| r.into_inner().released) {
                Ok(true) => Outcome::Success,
                Ok(false) => Outcome::Error("NotReleased".into()),
                Err(s) => Outcome::Error(code(&s)),
            }
        })
    }

    fn tally(&self) -> Option<&Tally> {
        Some(&self.tally)
    }

    fn calls(&self) -> Option<u64> {
        Some(self.calls)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntityOp {
    /// `tick` with one event.
    Transition,
    /// AppendEvents with one event and a fresh request id.
    Append,
}

/// One client of transition, transition-hot or append.
struct EntityWorker {
    c: Client,
    ns: Arc<str>,
    ids: Arc<[String]>,
    rng: fastrand::Rng,
    /// Applied calls per entity.
    tally: Tally,
    op: EntityOp,
    payload: Vec<u8>,
    calls: u64,
}

impl Worker for EntityWorker {
    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let i = self.rng.usize(..self.ids.len());
            self.calls += 1;
            let (namespace, entity_id) = (self.ns.to_string(), self.ids[i].clone());
            let events = vec![event(self.payload.clone())];
            let applied = match self.op {
                EntityOp::Transition => self
                    .c
                    .transition(proto::TransitionRequest {
                        namespace,
                        entity_id,
                        transition: "tick".into(),
                        events,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().applied),
                EntityOp::Append => self
                    .c
                    .append_events(proto::AppendEventsRequest {
                        namespace,
                        entity_id,
                        events,
                        request_id: load::request_id(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| !r.into_inner().dropped),
            };
            load::tallied(applied, &mut self.tally, i, code)
        })
    }

    fn tally(&self) -> Option<&Tally> {
        Some(&self.tally)
    }

    fn calls(&self) -> Option<u64> {
        Some(self.calls)
    }
}

/// One fenced-transition client, as an orchestrator calls: `tick` with the entity's lease
/// as fence, a fresh request id and `expect_version` = the version it last saw, which it
/// learns from every answer (a `VERSION_MISMATCH` carries the current one: a miss).
struct FencedWorker {
    c: Client,
    /// This client's index of `clients`: it drives only the entities it owns.
    worker: usize,
    clients: usize,
    ns: Arc<str>,
    ids: Arc<[String]>,
    /// Lease token per entity; the lease key is the entity id.
    tokens: Arc<[u64]>,
    /// The version this client last saw, per entity.
    known: Vec<u64>,
    rng: fastrand::Rng,
    /// Applied calls per entity.
    tally: Tally,
    payload: Vec<u8>,
    calls: u64,
}

impl Worker for FencedWorker {
    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let i = load::owned_key(&mut self.rng, self.worker, self.clients, self.ids.len());
            self.calls += 1;
            let r = self
                .c
                .transition(proto::TransitionRequest {
                    namespace: self.ns.to_string(),
                    entity_id: self.ids[i].clone(),
                    transition: "tick".into(),
                    expect_version: Some(self.known[i]),
                    fence: Some(proto::Fence {
                        key: self.ids[i].clone(),
                        token: self.tokens[i],
                    }),
                    events: vec![event(self.payload.clone())],
                    request_id: load::request_id(),
                    ..Default::default()
                })
                .await;
            match r.map(|r| r.into_inner()) {
                Ok(r) => {
                    if let Some(e) = &r.entity {
                        self.known[i] = e.version;
                    }
                    load::tallied(Ok::<_, tonic::Status>(r.applied), &mut self.tally, i, code)
                }
                Err(s) => match mismatch_version(&s) {
                    Some(v) => {
                        self.known[i] = v;
                        Outcome::Miss
                    }
                    None => Outcome::Error(code(&s)),
                },
            }
        })
    }

    fn tally(&self) -> Option<&Tally> {
        Some(&self.tally)
    }

    fn calls(&self) -> Option<u64> {
        Some(self.calls)
    }
}

/// The one fan-out writer: appends one stamped event per call, as fast as it can.
struct FanWriter {
    c: Client,
    ns: Arc<str>,
    id: String,
    calls: u64,
}

impl Worker for FanWriter {
    fn calls(&self) -> Option<u64> {
        Some(self.calls)
    }

    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            self.calls += 1;
            let r = self
                .c
                .append_events(proto::AppendEventsRequest {
                    namespace: self.ns.to_string(),
                    entity_id: self.id.clone(),
                    events: vec![event(load::stamp())],
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => Outcome::Success,
                Err(s) => Outcome::Error(code(&s)),
            }
        })
    }
}

async fn subscribe(mut c: Client, req: proto::StreamEventsRequest, window: Window, ready: Ready) -> Seen {
    let mut seen = Seen::default();
    let mut stream = match c.stream_events(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            let e = format!("{} {}", code(&s), s.message());
            let _ = ready.send(Err(e.clone())).await;
            seen.error = Some(e);
            return seen;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    loop {
        match stream.message().await {
            Ok(Some(proto::StreamEventsResponse {
                item: Some(Item::Event(e)),
            })) => {
                if e.seq != seen.last_seq + 1 {
                    seen.error = Some(format!("seq {} after {}", e.seq, seen.last_seq));
                    return seen;
                }
                seen.last_seq = e.seq;
                if e.r#type == "final" {
                    seen.finals += 1;
                } else if e.r#type == "tick" {
                    seen.delivered(&e.payload, &window);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                seen.closed = true;
                return seen;
            }
            Err(s) => {
                seen.error = Some(format!("stream failed after seq {}: {}", seen.last_seq, code(&s)));
                return seen;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::baton::domain::{DomainError, entity::Version};
    use ::baton::service::Error;

    /// The statuses as the server builds them (its one error → Status mapping).
    fn status(e: DomainError) -> tonic::Status {
        tonic::Status::from(Error::Rule(e))
    }

    #[test]
    fn a_version_mismatch_tells_the_current_version() {
        let s = status(DomainError::VersionMismatch {
            expected: Version::parse("v", 3).unwrap(),
            version: Version::parse("v", 7).unwrap(),
            current_state: "running".into(),
        });
        assert_eq!(mismatch_version(&s), Some(7));
        assert_eq!(code(&s), "Aborted:VERSION_MISMATCH");
    }

    #[test]
    fn other_errors_teach_no_version() {
        let lost = status(DomainError::LeaseLost {
            key: "f-1".into(),
            token: 1,
            current_token: Some(2),
            current_holder: Some("other".into()),
        });
        assert_eq!(mismatch_version(&lost), None);
        assert_eq!(code(&lost), "FailedPrecondition:LEASE_LOST");
        let bare = tonic::Status::aborted("no details");
        assert_eq!(mismatch_version(&bare), None);
        assert_eq!(code(&bare), "Aborted");
    }
}
