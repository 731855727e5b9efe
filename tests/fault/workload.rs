//! The workload of a fault run, and its record. Partition `p` is one lease key `k{p}`
//! guarding one entity `e{p}`. Clients take the lease, write through its fence, renew,
//! release, stall past their TTL and write with the stale fence, read, and write without a
//! fence. Every call is recorded with its invoke and return times; a call whose outcome is
//! unknown (UNAVAILABLE, a deadline, a cancel, a dead connection) is sent again with the
//! same request id — on the next replica when there are two — until its outcome is known,
//! and recorded once, over the whole time it took. Stream subscribers follow each tape and
//! resume elsewhere from their last seq when their stream breaks.

use crate::lincheck::Op;
use crate::model::{Input, Output, St, Tr};
use baton::proto::{self, coordinator_client::CoordinatorClient, stream_events_response::Item};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The namespace and kind of every fault run.
pub const NS: &str = "fault";
pub const KIND: &str = "job";

/// The test machine: pending → running (start), running → running (step), running → done
/// (finish), pending|running → done (cancel; a no-op in done).
pub fn machine() -> proto::MachineSpec {
    let t = |name: &str, from: &[&str], to: &str, noop: &[&str]| proto::TransitionSpec {
        name: name.into(),
        from: from.iter().map(|s| s.to_string()).collect(),
        to: to.into(),
        noop_from: noop.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    proto::MachineSpec {
        kind: KIND.into(),
        states: vec!["pending".into(), "running".into(), "done".into()],
        initial_state: "pending".into(),
        terminal_states: vec!["done".into()],
        transitions: vec![
            t("start", &["pending"], "running", &[]),
            t("step", &["running"], "running", &[]),
            t("finish", &["running"], "done", &[]),
            t("cancel", &["pending", "running"], "done", &["done"]),
        ],
        field_rules: vec![],
        ..Default::default()
    }
}

/// Microseconds since the Unix epoch, the clock the servers decide expiry by.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The size of a run's load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub partitions: usize,
    pub clients_per_partition: usize,
    pub subscribers_per_partition: usize,
    /// Lease TTL.
    pub ttl: Duration,
    /// Chance that a holder stalls past its TTL and then writes with its stale fence.
    pub stall_chance: f64,
}

/// One recorded call: its partition, the id its request id and payloads derive from, and
/// the operation as the checker sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: usize,
    pub id: u64,
    pub op: Op<Input, Output>,
}

/// One attempt's result.
enum Attempt {
    Known(Output),
    Unknown,
    Anomaly(String),
}

/// Everything one run's clients share: where to call, and the record.
pub struct World {
    channels: Vec<Channel>,
    /// Clients stop starting new work when true.
    pub stop: watch::Receiver<bool>,
    /// The client-cancellation fault: while true, a third of the calls get a deadline of a
    /// few milliseconds, so they are cancelled mid-call.
    pub cancel: watch::Receiver<bool>,
    /// Past this instant an unknown outcome stays unknown.
    give_up: Mutex<Option<Instant>>,
    history: Mutex<Vec<Record>>,
    anomalies: Mutex<Vec<String>>,
    /// (replica, µs) of every known outcome, for recovery times.
    served: Mutex<Vec<(usize, u64)>>,
    next_id: AtomicU64,
    unknown_attempts: AtomicU64,
}

impl World {
    pub fn new(endpoints: &[String], stop: watch::Receiver<bool>, cancel: watch::Receiver<bool>) -> Self {
        let channels = endpoints
            .iter()
            .map(|e| {
                Channel::from_shared(e.clone())
                    .unwrap()
                    .connect_timeout(Duration::from_millis(500))
                    .connect_lazy()
            })
            .collect();
        Self {
            channels,
            stop,
            cancel,
            give_up: Mutex::new(None),
            history: Mutex::default(),
            anomalies: Mutex::default(),
            served: Mutex::default(),
            next_id: AtomicU64::new(1),
            unknown_attempts: AtomicU64::new(0),
        }
    }

    pub fn replicas(&self) -> usize {
        self.channels.len()
    }

    fn client(&self, replica: usize) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(self.channels[replica].clone())
    }

    /// The tape head of `e{partition}`, from the first replica that answers (unrecorded:
    /// it only picks a subscriber's starting cursor).
    pub async fn head(&self, partition: usize) -> Option<u64> {
        for replica in 0..self.replicas() {
            let got = self
                .client(replica)
                .get_entity(proto::GetEntityRequest {
                    namespace: NS.into(),
                    id: format!("e{partition}"),
                })
                .await;
            if let Ok(r) = got {
                return Some(r.into_inner().entity.unwrap_or_default().last_seq);
            }
        }
        None
    }

    /// From now on, unknown outcomes are retried for at most `grace`.
    pub fn give_up_after(&self, grace: Duration) {
        *self.give_up.lock().unwrap() = Some(Instant::now() + grace);
    }

    fn gave_up(&self) -> bool {
        self.give_up.lock().unwrap().is_some_and(|g| Instant::now() >= g)
    }

    pub fn anomaly(&self, what: String) {
        self.anomalies.lock().unwrap().push(what);
    }

    pub fn take_history(&self) -> Vec<Record> {
        std::mem::take(&mut self.history.lock().unwrap())
    }

    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.lock().unwrap().clone()
    }

    pub fn served(&self) -> Vec<(usize, u64)> {
        self.served.lock().unwrap().clone()
    }

    pub fn unknown_attempts(&self) -> u64 {
        self.unknown_attempts.load(Ordering::Relaxed)
    }

    /// Runs one logical call to a known outcome (or gives up), and records it.
    pub async fn call(&self, rng: &mut fastrand::Rng, partition: usize, client: usize, input: Input) -> Option<Output> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let call = now_us();
        let mut replica = client % self.replicas();
        let mut backoff = Duration::from_millis(10);
        let output = loop {
            let deadline = if *self.cancel.borrow() && rng.u8(0..3) == 0 {
                Duration::from_micros(rng.u64(200..5_000))
            } else {
                Duration::from_secs(2)
            };
            match self.attempt(replica, partition, id, &input, deadline).await {
                Attempt::Known(out) => {
                    self.served.lock().unwrap().push((replica, now_us()));
                    break Some(out);
                }
                Attempt::Anomaly(what) => {
                    self.anomaly(format!("partition {partition}, {input:?}: {what}"));
                    break None;
                }
                Attempt::Unknown if self.gave_up() => break None,
                Attempt::Unknown => {
                    self.unknown_attempts.fetch_add(1, Ordering::Relaxed);
                    // A client's backoff before it asks again (not a wait for a condition).
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    replica = (replica + 1) % self.replicas();
                }
            }
        };
        let ret = if output.is_some() { now_us() } else { u64::MAX };
        self.history.lock().unwrap().push(Record {
            partition,
            id,
            op: Op {
                client,
                input,
                output: output.clone(),
                call,
                ret,
            },
        });
        output
    }

    async fn attempt(&self, replica: usize, p: usize, id: u64, input: &Input, deadline: Duration) -> Attempt {
        let mut c = self.client(replica);
        let rid = format!("r{id}");
        let fence = |token: &Option<u64>| {
            token.map(|token| proto::Fence {
                key: format!("k{p}"),
                token,
            })
        };
        fn req<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
            let mut r = tonic::Request::new(msg);
            r.set_timeout(deadline);
            r
        }
        let result: Result<Output, Status> = match input {
            Input::Acquire { holder, ttl_us } => c
                .acquire_lease(req(
                    proto::AcquireLeaseRequest {
                        namespace: NS.into(),
                        key: format!("k{p}"),
                        holder: format!("h{holder}"),
                        ttl: Some(pduration(*ttl_us)),
                        wait: None,
                        request_id: rid,
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    let lease = r.lease.unwrap_or_default();
                    if r.acquired {
                        Output::Acquired {
                            token: lease.token,
                            expires_at: micros(lease.expires_at),
                        }
                    } else {
                        Output::Busy {
                            holder: lease.holder.trim_start_matches('h').parse().unwrap_or(u32::MAX),
                            token: lease.token,
                        }
                    }
                }),
            Input::Renew { token, ttl_us } => c
                .renew_lease(req(
                    proto::RenewLeaseRequest {
                        namespace: NS.into(),
                        key: format!("k{p}"),
                        token: *token,
                        ttl: Some(pduration(*ttl_us)),
                        request_id: rid,
                    },
                    deadline,
                ))
                .await
                .map(|r| Output::Renewed {
                    expires_at: micros(r.into_inner().lease.unwrap_or_default().expires_at),
                }),
            Input::Release { token } => c
                .release_lease(req(
                    proto::ReleaseLeaseRequest {
                        namespace: NS.into(),
                        key: format!("k{p}"),
                        token: *token,
                        request_id: rid,
                    },
                    deadline,
                ))
                .await
                .map(|r| Output::Released(r.into_inner().released)),
            Input::Transition {
                name,
                expect_version,
                fence: token,
            } => c
                .transition(req(
                    proto::TransitionRequest {
                        namespace: NS.into(),
                        entity_id: format!("e{p}"),
                        transition: transition_name(name).into(),
                        expect_version: *expect_version,
                        fence: fence(token),
                        request_id: rid,
                        ..Default::default()
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    let e = r.entity.unwrap_or_default();
                    let state = state(&e.state);
                    if r.applied {
                        Output::Applied {
                            version: e.version,
                            state,
                            seqs: r.seqs,
                        }
                    } else {
                        Output::Noop {
                            version: e.version,
                            state,
                        }
                    }
                }),
            Input::Append { n, fence: token } => c
                .append_events(req(
                    proto::AppendEventsRequest {
                        namespace: NS.into(),
                        entity_id: format!("e{p}"),
                        events: (0..*n)
                            .map(|i| proto::EventInput {
                                r#type: "progress".into(),
                                payload: tag(id, i).into_bytes(),
                                content_type: String::new(),
                            })
                            .collect(),
                        fence: fence(token),
                        request_id: rid,
                        ..Default::default()
                    },
                    deadline,
                ))
                .await
                .map(|r| Output::Appended {
                    seqs: r.into_inner().seqs,
                }),
            Input::Read => c
                .get_entity(req(
                    proto::GetEntityRequest {
                        namespace: NS.into(),
                        id: format!("e{p}"),
                    },
                    deadline,
                ))
                .await
                .map(|r| {
                    let e = r.into_inner().entity.unwrap_or_default();
                    Output::Entity {
                        version: e.version,
                        state: state(&e.state),
                        last_seq: e.last_seq,
                    }
                }),
        };
        match result {
            Ok(out) => Attempt::Known(out),
            Err(s) => classify(&s),
        }
    }
}

/// The payload of event `i` of append `id`: how the tape check finds each acknowledged
/// event, and sees that none is stored twice.
pub fn tag(id: u64, i: u64) -> String {
    format!("a{id}.{i}")
}

fn transition_name(t: &Tr) -> &'static str {
    match t {
        Tr::Start => "start",
        Tr::Step => "step",
        Tr::Finish => "finish",
        Tr::Cancel => "cancel",
    }
}

fn state(s: &str) -> St {
    match s {
        "pending" => St::Pending,
        "running" => St::Running,
        _ => St::Done,
    }
}

fn pduration(us: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1000) as i32,
    }
}

fn micros(t: Option<prost_types::Timestamp>) -> u64 {
    t.map_or(0, |t| t.seconds as u64 * 1_000_000 + t.nanos as u64 / 1000)
}

/// A refusal is an outcome; a transport or availability failure leaves it unknown;
/// anything else is a bug the run reports.
fn classify(s: &Status) -> Attempt {
    let info = s.get_details_error_info();
    let reason = info.as_ref().map(|i| i.reason.as_str()).unwrap_or("");
    let meta = |k: &str| {
        info.as_ref()
            .and_then(|i| i.metadata.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let num = |k: &str| meta(k).parse::<u64>().unwrap_or(0);
    match (s.code(), reason) {
        (Code::FailedPrecondition, "LEASE_LOST") => Attempt::Known(Output::LeaseLost),
        (Code::FailedPrecondition, "TAPE_SEALED") => Attempt::Known(Output::Sealed {
            final_seq: num("final_seq"),
        }),
        (Code::FailedPrecondition, "INVALID_TRANSITION") => Attempt::Known(Output::InvalidTransition {
            version: num("version"),
            state: state(&meta("current_state")),
        }),
        (Code::Aborted, "VERSION_MISMATCH") => Attempt::Known(Output::VersionMismatch {
            version: num("version"),
            state: state(&meta("current_state")),
        }),
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown, _) => Attempt::Unknown,
        // No ErrorInfo: the client library's own report of a connection torn down mid-call
        // (tonic maps an HTTP/2 reset to INTERNAL) — the server never answered.
        (Code::Internal, _) if info.is_none() => Attempt::Unknown,
        // No ErrorInfo: HTTP/2 itself ended the connection (a GOAWAY with ENHANCE_YOUR_CALM,
        // which tonic reports as RESOURCE_EXHAUSTED) — the server never answered in-band.
        (Code::ResourceExhausted, _) if info.is_none() => Attempt::Unknown,
        _ => Attempt::Anomaly(format!("unexpected {:?} {reason}: {}", s.code(), s.message())),
    }
}

/// One client's loop, until the world stops.
pub async fn client(world: &World, seed: u64, partition: usize, client: usize, load: Load) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let holder = client as u32;
    let ttl_us = load.ttl.as_micros() as u64;
    let mut version = None;
    while !*world.stop.borrow() {
        let roll = rng.u8(0..100);
        if roll < 55 {
            let Some(Output::Acquired { token, .. }) = world
                .call(&mut rng, partition, client, Input::Acquire { holder, ttl_us })
                .await
            else {
                // Busy: read instead of spinning on the lease.
                world.call(&mut rng, partition, client, Input::Read).await;
                continue;
            };
            for _ in 0..rng.u8(1..4) {
                let input = match rng.u8(0..3) {
                    0 => Input::Append {
                        n: rng.u64(1..3),
                        fence: Some(token),
                    },
                    1 => Input::Transition {
                        name: Tr::Step,
                        expect_version: None,
                        fence: Some(token),
                    },
                    _ => Input::Renew { token, ttl_us },
                };
                world.call(&mut rng, partition, client, input).await;
            }
            if rng.f64() < load.stall_chance {
                // The fault "a lease holder freezes past its TTL" (a GC pause, a stopped
                // VM), then writes with its stale fence: it must be refused.
                tokio::time::sleep(load.ttl + Duration::from_millis(300)).await;
                let stale = Input::Append {
                    n: 1,
                    fence: Some(token),
                };
                world.call(&mut rng, partition, client, stale).await;
            }
            if rng.u8(0..5) > 0 {
                world.call(&mut rng, partition, client, Input::Release { token }).await;
            }
        } else if roll < 70 {
            if let Some(Output::Entity { version: v, .. }) = world.call(&mut rng, partition, client, Input::Read).await
            {
                version = Some(v);
            }
        } else if roll < 85 {
            let input = Input::Append {
                n: rng.u64(1..3),
                fence: None,
            };
            world.call(&mut rng, partition, client, input).await;
        } else {
            let input = Input::Transition {
                name: Tr::Step,
                expect_version: version.filter(|_| rng.bool()),
                fence: None,
            };
            world.call(&mut rng, partition, client, input).await;
        }
    }
}

/// What one stream subscriber saw.
#[derive(Debug)]
pub struct Subscription {
    pub partition: usize,
    /// The cursor it first asked to start after.
    pub after: u64,
    /// (seq, type, payload), in the order received.
    pub events: Vec<(u64, String, Vec<u8>)>,
    /// The stream ended OK right after `final`.
    pub complete: bool,
    /// How many times it resumed after a broken stream.
    pub resumed: u32,
}

/// Follows `e{partition}` after `after` to its `final`, resuming on another replica (or
/// the same one, restarted) from its last seq whenever the stream breaks, until `until`.
pub async fn subscribe(
    world: &World,
    partition: usize,
    after: u64,
    first: usize,
    until: watch::Receiver<bool>,
) -> Subscription {
    let mut sub = Subscription {
        partition,
        after,
        events: vec![],
        complete: false,
        resumed: 0,
    };
    let mut replica = first % world.replicas();
    let mut backoff = Duration::from_millis(10);
    while !*until.borrow() {
        let cursor = sub.events.last().map_or(after, |e| e.0);
        let opened = world
            .client(replica)
            .stream_events(proto::StreamEventsRequest {
                namespace: NS.into(),
                entity_id: format!("e{partition}"),
                after_seq: cursor,
            })
            .await;
        let broken = match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            if let Some(Item::Event(e)) = m.item {
                                let is_final = e.r#type == "final";
                                sub.events.push((e.seq, e.r#type, e.payload));
                                if is_final {
                                    // The stream must end OK right after final.
                                    sub.complete = matches!(stream.message().await, Ok(None));
                                    return sub;
                                }
                            }
                        }
                        Ok(None) => break "ended before final".to_string(),
                        Err(s) => break format!("{:?} {}", s.code(), s.message()),
                    }
                }
            }
            Err(s) => format!("{:?} {}", s.code(), s.message()),
        };
        if broken.starts_with("InvalidArgument") || broken.starts_with("NotFound") {
            world.anomaly(format!("subscriber of e{partition}: {broken}"));
            return sub;
        }
        sub.resumed += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
        replica = (replica + 1) % world.replicas();
    }
    sub
}
