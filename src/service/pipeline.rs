//! The commit pipeline (group commit). Every mutating call becomes a [`Command`] handed to a
//! lane of this replica; while one batch is in flight, the next commands gather, and each
//! batch is one transaction of two round trips:
//!
//! 1. lock the batch's keys in one global order and read every row it needs;
//! 2. decide every command in Rust, in arrival order, against those rows in memory
//!    ([`Batch::apply`]: a hot key's queue commits together, each call seeing the last);
//! 3. write everything and commit.
//!
//! A command goes to the lane of its key, so commands on a key keep their order. A lone call
//! on an idle lane goes at once: no timer waits for company. A refusal is that command's
//! answer and costs the others nothing. A key another replica holds puts off only the
//! commands that need it; a command put off again and again makes its lane's next batch
//! wait for its locks (in the same global order, so replicas cannot deadlock).
//!
//! The lanes are tasks of their own: a caller that goes away (a deadline, a cancel) stops
//! nothing — its command still commits, is announced and has its outcome recorded.

use super::machines::MachineCache;
use super::{Error, Result};
use crate::domain::batch::{Batch, Command, Lock, Reads, Writes};
use crate::domain::outcome::Outcome;
use crate::faults::Faults;
use crate::storage::{Change, Store, StoreError};
use crate::telemetry::names;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

/// Most commands in one batch.
const MAX_BATCH: usize = 512;
/// Most bytes (payloads, fields) in one batch.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Commands queued per lane before callers wait to hand theirs over.
const LANE_QUEUE: usize = 8192;
/// After being put off this many times, a command's batch waits for its locks.
const WAIT_AFTER: u32 = 3;
/// Times a batch is decided again after a conflict (a machine redefined under it).
const ATTEMPTS: u32 = 3;

/// Counters of the pipeline, for tests, the bench and metrics.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Batches committed (or failed).
    pub batches: AtomicU64,
    /// Commands those batches decided.
    pub commands: AtomicU64,
    /// Commands put off because a key was held elsewhere.
    pub deferred: AtomicU64,
}

/// A caller waiting for its command's outcome, how often the command was put off, when it
/// was handed over, and the caller's span (the parent of its store phases' spans).
type Waiter = (oneshot::Sender<Result<Outcome>>, u32, Instant, Span);

struct Job {
    command: Command,
    reply: oneshot::Sender<Result<Outcome>>,
    /// Times put off so far.
    deferred: u32,
    /// When the caller handed it over.
    submitted: Instant,
    /// The caller's span, when traces are exported.
    span: Span,
    /// The `store.queue` span of the wait for a batch: held, never read; dropping the job
    /// (its batch has begun) ends it.
    _queued: Span,
}

/// The replica's commit lanes.
pub struct Pipeline {
    lanes: Vec<mpsc::Sender<Job>>,
    stats: Arc<PipelineStats>,
    /// The canary fault: commands lose their fence before they are decided.
    skip_fence_check: bool,
}

impl Pipeline {
    /// Starts one task per lane of `store`.
    pub fn start(store: Arc<dyn Store>, machines: Arc<MachineCache>, faults: Faults) -> Self {
        let stats = Arc::new(PipelineStats::default());
        let lanes = (0..store.lanes())
            .map(|lane| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                let worker = Lane {
                    lane,
                    store: store.clone(),
                    machines: machines.clone(),
                    faults: faults.clone(),
                    stats: stats.clone(),
                };
                tokio::spawn(worker.run(rx));
                tx
            })
            .collect();
        Self {
            lanes,
            stats,
            skip_fence_check: faults.skip_fence_check,
        }
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// Hands `command` to its lane and waits for its batch to commit.
    pub async fn submit(&self, command: Command) -> Result<Outcome> {
        let command = if self.skip_fence_check {
            command.without_fence()
        } else {
            command
        };
        let lane = (command.key() as u64 % self.lanes.len() as u64) as usize;
        let (reply, answer) = oneshot::channel();
        let span = if crate::telemetry::traces_on() {
            Span::current()
        } else {
            Span::none()
        };
        let queued = children(std::slice::from_ref(&span), "store.queue")
            .pop()
            .unwrap_or_else(Span::none);
        let job = Job {
            command,
            reply,
            deferred: 0,
            submitted: Instant::now(),
            span,
            _queued: queued,
        };
        if self.lanes[lane].send(job).await.is_err() {
            return Err(Error::ShuttingDown { last_seq: None });
        }
        answer.await.unwrap_or(Err(Error::ShuttingDown { last_seq: None }))
    }
}

struct Lane {
    lane: usize,
    store: Arc<dyn Store>,
    machines: Arc<MachineCache>,
    faults: Faults,
    stats: Arc<PipelineStats>,
}

impl Lane {
    async fn run(self, mut queue: mpsc::Receiver<Job>) {
        let mut put_off: VecDeque<Job> = VecDeque::new();
        loop {
            // Put-off commands first, in their order; then whatever has arrived, without
            // waiting for more.
            let mut jobs: Vec<Job> = put_off.drain(..).collect();
            if jobs.is_empty() {
                match queue.recv().await {
                    Some(job) => jobs.push(job),
                    None => return,
                }
            }
            let mut bytes: usize = jobs.iter().map(|j| j.command.size()).sum();
            while jobs.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(job) => {
                        bytes += job.command.size();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            put_off.extend(self.batch(jobs).await);
        }
    }

    /// Runs one batch; returns the jobs put off to the next.
    async fn batch(&self, jobs: Vec<Job>) -> Vec<Job> {
        let wait = jobs.iter().any(|j| j.deferred >= WAIT_AFTER);
        let started = Instant::now();
        for job in &jobs {
            phase("queue", started.saturating_duration_since(job.submitted));
        }
        // The commands move out of their jobs (no copy of their payloads); the put-off ones
        // move back.
        let (commands, waiters): (Vec<Command>, Vec<Waiter>) = jobs
            .into_iter()
            .map(|j| (j.command, (j.reply, j.deferred, j.submitted, j.span)))
            .unzip();
        let spans: Vec<Span> = waiters.iter().map(|w| w.3.clone()).collect();
        let locks = Lock::union(&commands);
        let mut attempt = 1;
        let decided = loop {
            match self.attempt(&commands, &locks, wait, &spans).await {
                Err(StoreError::Conflict(why)) if attempt < ATTEMPTS => {
                    tracing::debug!(conflict = %why, attempt, "batch met a change under it; deciding it again");
                    attempt += 1;
                }
                other => break other,
            }
        };
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::WRITE_BATCHES).increment(1);
        let (outcomes, writes) = match decided {
            Ok(done) => done,
            Err(e) => {
                // Nothing of the batch is known to have committed: every caller hears why
                // (UNAVAILABLE may mean "committed, answer lost"; request ids tell).
                let error: Error = e.into();
                for (reply, ..) in waiters {
                    let _ = reply.send(Err(clone_error(&error)));
                }
                return vec![];
            }
        };
        if let Some(pause) = self.faults.pause_after_commit {
            tokio::time::sleep(pause).await;
        }
        self.store.announce(changes(writes));
        let decided = outcomes.iter().filter(|o| o.is_some()).count() as u64;
        metrics::counter!(names::WRITE_COMMANDS).increment(decided);
        metrics::counter!(names::WRITE_DEFERRED).increment(commands.len() as u64 - decided);
        metrics::histogram!(names::WRITE_BATCH_SIZE).record(decided as f64);
        let mut put_off = vec![];
        for ((command, (reply, deferred, submitted, span)), outcome) in commands.into_iter().zip(waiters).zip(outcomes)
        {
            match outcome {
                Some(result) => {
                    self.stats.commands.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(result.map_err(Error::from));
                }
                None => {
                    self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                    let queued = children(std::slice::from_ref(&span), "store.queue")
                        .pop()
                        .unwrap_or_else(Span::none);
                    put_off.push(Job {
                        command,
                        reply,
                        deferred: deferred + 1,
                        submitted,
                        span,
                        _queued: queued,
                    });
                }
            }
        }
        put_off
    }

    /// One try at a batch: begin and read, decide, commit. Per command: its outcome, or
    /// `None` when a lock it needs is held elsewhere (it waits for a later batch).
    #[allow(clippy::type_complexity)]
    async fn attempt(
        &self,
        commands: &[Command],
        locks: &[Lock],
        wait: bool,
        callers: &[Span],
    ) -> Result<(Vec<Option<Result<Outcome, crate::domain::DomainError>>>, Writes), StoreError> {
        // Machines come from the replica's cache; the commit checks every version used.
        let mut reads = Reads::default();
        for c in commands {
            c.reads(&mut reads);
        }
        reads
            .machines
            .retain(|(ns, kind)| self.machines.get(ns, kind).is_none());
        let read = Instant::now();
        let spans = children(callers, "store.read");
        let (mut tx, loaded) = self.store.begin_batch(self.lane, locks, wait, &reads).await?;
        let held: std::collections::HashSet<i64> = locks
            .iter()
            .zip(&loaded.granted)
            .filter(|(_, held)| **held)
            .map(|(l, _)| l.key)
            .collect();
        let mut rows = loaded.into_rows(|ns, m| self.machines.parsed(ns, m))?;
        let mut missing = rows.missing_machines(commands);
        missing.retain(|(ns, kind)| match self.machines.get(ns, kind) {
            Some(m) => {
                rows.machines.insert((ns.clone(), kind.clone()), m);
                false
            }
            None => true,
        });
        if !missing.is_empty() {
            // The first use of a kind on this replica: one more round trip.
            for (ns, m) in tx.machines(&missing).await? {
                let parsed = self.machines.parsed(&ns, &m)?;
                rows.machines.insert((ns, m.kind), parsed);
            }
        }
        phase("read", read.elapsed());
        drop(spans);
        let decide = Instant::now();
        let spans = children(callers, "store.decide");
        let mut batch = Batch::new(rows);
        let outcomes: Vec<_> = commands
            .iter()
            .map(|c| c.locks().iter().all(|l| held.contains(&l.key)).then(|| batch.apply(c)))
            .collect();
        let writes = batch.finish();
        phase("decide", decide.elapsed());
        drop(spans);
        let commit = Instant::now();
        let spans = children(callers, "store.commit");
        tx.commit(&writes).await.inspect_err(|e| {
            if matches!(e, StoreError::Conflict(_)) {
                // A machine may have changed: read it afresh next time.
                self.machines.forget_all();
            }
        })?;
        phase("commit", commit.elapsed());
        drop(spans);
        Ok((outcomes, writes))
    }
}

/// What subscribers and lease waiters hear of a committed batch: each entity's new events
/// (one change per entity, events in order), and each lease a release ended.
fn changes(writes: Writes) -> Vec<Change> {
    let mut tapes: Vec<Change> = vec![];
    for (ns, id, event) in writes.events {
        match tapes.last_mut() {
            Some(Change::Tape {
                ns: n,
                entity_id,
                head,
                events,
            }) if *n == ns && *entity_id == id => {
                *head = event.seq;
                events.push(Arc::new(event));
            }
            _ => tapes.push(Change::Tape {
                ns,
                entity_id: id,
                head: event.seq,
                events: vec![Arc::new(event)],
            }),
        }
    }
    tapes.extend(writes.freed.into_iter().map(|(ns, key)| Change::LeaseFreed { ns, key }));
    tapes
}

/// Records how long a phase of the write path took (`queue`: a command waiting for its
/// batch; `read`, `decide`, `commit`: the three steps of a batch).
fn phase(name: &'static str, took: std::time::Duration) {
    metrics::histogram!(names::WRITE_PHASE_SECONDS, "phase" => name).record(took.as_secs_f64());
}

/// A span named `name` under each caller's span (none when spans are not exported): the
/// store phases a caller's command went through, in the caller's trace. A batch serves many
/// callers, so each gets its own copy of the batch's phases.
fn children(callers: &[Span], name: &'static str) -> Vec<Span> {
    callers
        .iter()
        .filter(|c| !c.is_none())
        .map(|c| tracing::info_span!(parent: c, "store", otel.name = name))
        .collect()
}

/// An error for each caller of a failed batch.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Rule(d) => Error::Rule(d.clone()),
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::ShuttingDown { last_seq } => Error::ShuttingDown { last_seq: *last_seq },
        Error::ConnectionAged { last_seq } => Error::ConnectionAged { last_seq: *last_seq },
        Error::StreamBehind { last_seq } => Error::StreamBehind { last_seq: *last_seq },
        Error::Conflict(m) => Error::Conflict(m.clone()),
        Error::Internal(m) => Error::Internal(m.clone()),
    }
}
