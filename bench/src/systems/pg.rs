//! The raw Postgres baseline: the same work as baton's scenarios, as the minimal SQL, one
//! statement per round trip, straight from the load generator (no gRPC, no baton), one
//! pooled connection per client, in schema `bench_baseline` (dropped and created at setup).

use crate::checks::Findings;
use crate::load::{self, FENCE_HOLDER, FENCE_TTL, FenceLeases, Tally, Worker, drive};
use crate::stats::Outcome;
use crate::{Cell, Plan, Scenario, System};
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};
use std::collections::HashMap;
use std::sync::Arc;

const SCHEMA: &str = "
DROP SCHEMA IF EXISTS bench_baseline CASCADE;
CREATE SCHEMA bench_baseline;
CREATE TABLE bench_baseline.leases (
    key text PRIMARY KEY,
    token bigint NOT NULL,
    holder text,
    expires_at timestamptz NOT NULL
);
CREATE TABLE bench_baseline.entities (
    id text PRIMARY KEY,
    state text NOT NULL,
    version bigint NOT NULL,
    last_seq bigint NOT NULL
);
CREATE TABLE bench_baseline.events (
    entity_id text NOT NULL,
    seq bigint NOT NULL,
    type text NOT NULL,
    payload bytea,
    PRIMARY KEY (entity_id, seq)
);
CREATE TABLE bench_baseline.requests (
    id text PRIMARY KEY,
    entity_id text NOT NULL,
    version bigint NOT NULL,
    last_seq bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requests_by_age ON bench_baseline.requests (created_at);";

/// Grant a free or expired lease: token +1 from 0, as baton's fencing tokens.
const ACQUIRE: &str = "
INSERT INTO bench_baseline.leases AS l (key, token, holder, expires_at)
VALUES ($1, 1, $2, now() + interval '30 seconds')
ON CONFLICT (key) DO UPDATE
    SET token = l.token + 1, holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
    WHERE l.holder IS NULL OR l.expires_at < now()
RETURNING token";

const RELEASE: &str = "UPDATE bench_baseline.leases SET holder = NULL WHERE key = $1 AND token = $2";

/// A transition with one client event: state check, version +1 and two tape rows (the state
/// change and the event), as baton writes them, in one statement.
const TRANSITION: &str = "
WITH u AS (
    UPDATE bench_baseline.entities SET version = version + 1, last_seq = last_seq + 2
    WHERE id = $1 AND state = 'running'
    RETURNING id, last_seq
)
INSERT INTO bench_baseline.events (entity_id, seq, type, payload)
SELECT id, last_seq - 1, 'transition', NULL FROM u
UNION ALL
SELECT id, last_seq, 'tick', $2 FROM u";

/// An append of one event to an unsealed tape, and the row of its request id (the first
/// outcome, for a retry to find), in one statement.
const APPEND: &str = "
WITH u AS (
    UPDATE bench_baseline.entities SET last_seq = last_seq + 1
    WHERE id = $1 AND state = 'running'
    RETURNING id, version, last_seq
), r AS (
    INSERT INTO bench_baseline.requests (id, entity_id, version, last_seq)
    SELECT $3, id, version, last_seq FROM u
)
INSERT INTO bench_baseline.events (entity_id, seq, type, payload)
SELECT id, last_seq, 'tick', $2 FROM u";

/// A fenced transition with `expect_version`, in one statement: the lease `(key = $1,
/// token = $2)` is live (and share-locked until commit, so a steal waits: the fence is
/// checked in the write's transaction), the version is `$3` and the state `running`; then
/// version +1, the two tape rows and the request id's row. Returns whether the fence held,
/// the version after when applied, and the version in the statement's snapshot (what a
/// miss learns; a concurrent commit it did not see makes the next call miss again).
const FENCED_TRANSITION: &str = "
WITH l AS (
    SELECT 1 FROM bench_baseline.leases
    WHERE key = $1 AND token = $2 AND holder IS NOT NULL AND expires_at > now()
    FOR SHARE
), u AS (
    UPDATE bench_baseline.entities SET version = version + 1, last_seq = last_seq + 2
    WHERE id = $1 AND state = 'running' AND version = $3 AND EXISTS (SELECT FROM l)
    RETURNING id, version, last_seq
), e AS (
    INSERT INTO bench_baseline.events (entity_id, seq, type, payload)
    SELECT id, last_seq - 1, 'transition', NULL FROM u
    UNION ALL
    SELECT id, last_seq, 'tick', $4 FROM u
), r AS (
    INSERT INTO bench_baseline.requests (id, entity_id, version, last_seq)
    SELECT $5, id, version, last_seq FROM u
)
SELECT EXISTS (SELECT FROM l),
       (SELECT version FROM u),
       (SELECT version FROM bench_baseline.entities WHERE id = $1)";

/// Token of every fenced-transition lease: granted once, at setup.
const FENCE_TOKEN: i64 = 1;

/// The fenced-transition leases, granted (or renewed) for [`FENCE_TTL`].
const GRANT_FENCES: &str = "
INSERT INTO bench_baseline.leases (key, token, holder, expires_at)
SELECT $1 || '-' || i, $2, $3, now() + make_interval(secs => $4) FROM generate_series(0, $5 - 1) AS i
ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at";

/// The Postgres baseline.
pub struct Pg {
    url: String,
    admin: PgPool,
    tallies: HashMap<Scenario, Tally>,
    /// fenced-transition: when its leases were granted, and the newest version any client
    /// has seen per entity.
    fence: Option<(FenceLeases, Vec<u64>)>,
}

fn kind(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => format!("pg:{}", d.code().unwrap_or_default()),
        sqlx::Error::PoolTimedOut => "pg:pool-timeout".into(),
        sqlx::Error::Io(_) => "pg:io".into(),
        _ => "pg:other".into(),
    }
}

fn ids(scenario: Scenario, keys: u32) -> Arc<[String]> {
    (0..scenario.keys(keys))
        .map(|i| format!("{}-{i}", scenario.prefix()))
        .collect()
}

impl Pg {
    /// Drops and recreates the baseline schema and inserts the entities.
    pub async fn setup(url: &str, plan: &Plan) -> Result<Self, String> {
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&admin)
            .await
            .map_err(|e| format!("create schema bench_baseline: {e}"))?;
        let mut tallies = HashMap::new();
        let mut fence = None;
        for &s in &plan.scenarios {
            if s.has_entities() {
                sqlx::query(
                    "INSERT INTO bench_baseline.entities (id, state, version, last_seq)
                     SELECT $1 || '-' || i, 'running', 1, 0 FROM generate_series(0, $2 - 1) AS i",
                )
                .bind(s.prefix())
                .bind(s.keys(plan.keys) as i64)
                .execute(&admin)
                .await
                .map_err(|e| format!("insert entities: {e}"))?;
            }
            if s == Scenario::FencedTransition {
                let leases = grant_fences(&admin, plan).await?;
                fence = Some((leases, vec![1; s.keys(plan.keys)]));
            }
            tallies.insert(s, Tally::new(s.keys(plan.keys)));
        }
        Ok(Self {
            url: url.to_string(),
            admin,
            tallies,
            fence,
        })
    }

    /// Measures one cell and checks it; stream-fanout has no Postgres equivalent.
    pub async fn cell(&mut self, scenario: Scenario, clients: u32, plan: &Plan) -> Cell {
        if scenario == Scenario::StreamFanout {
            return Cell::skipped(scenario, clients, System::Postgres, "no postgres equivalent");
        }
        self.measure(scenario, clients, plan)
            .await
            .unwrap_or_else(|e| Cell::failed(scenario, clients, System::Postgres, e))
    }

    async fn measure(&mut self, scenario: Scenario, clients: u32, plan: &Plan) -> Result<Cell, String> {
        let ids = ids(scenario, plan.keys);
        let mut known = vec![];
        if let Some((leases, newest)) = &mut self.fence
            && scenario == Scenario::FencedTransition
        {
            if leases.renew_before(plan.timing)? {
                *leases = grant_fences(&self.admin, plan).await?;
            }
            known = newest.iter().map(|&v| v as i64).collect();
        }
        let pool = PgPoolOptions::new()
            .max_connections(clients)
            .connect(&self.url)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut workers = Vec::with_capacity(clients as usize);
        for n in 0..clients {
            workers.push(SqlWorker {
                conn: pool.acquire().await.map_err(|e| format!("cannot connect: {e}"))?,
                scenario,
                holder: format!("bench-client-{n}"),
                worker: n as usize,
                clients: clients as usize,
                ids: ids.clone(),
                rng: fastrand::Rng::new(),
                tally: Tally::new(ids.len()),
                payload: vec![b'x'; if scenario == Scenario::Append { 1024 } else { 64 }],
                known: known.clone(),
            });
        }
        let run = drive(workers, plan.timing).await?;
        if let Some((_, newest)) = &mut self.fence
            && scenario == Scenario::FencedTransition
        {
            let seen: Vec<Vec<u64>> = run
                .workers
                .iter()
                .map(|w| w.known.iter().map(|&v| v as u64).collect())
                .collect();
            *newest = load::newest(seen.iter().map(Vec::as_slice));
        }
        let (cell_tally, tally) = run.settle(self.tallies.entry(scenario).or_default());
        drop(run.workers);
        pool.close().await;

        let mut cell = Cell::measured(scenario, clients, System::Postgres, plan, run.stats);
        let touched: Vec<String> = cell_tally.touched().into_iter().map(|i| ids[i].clone()).collect();
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        if scenario == Scenario::LeaseCycle {
            self.check_leases(&touched, &index, &tally)
                .await?
                .report_into(&mut cell.failures);
        } else {
            let (lost, gaps) = self.check_entities(scenario, &touched, &index, &tally).await?;
            lost.report_into(&mut cell.failures);
            gaps.report_into(&mut cell.failures);
            if matches!(scenario, Scenario::Append | Scenario::FencedTransition) {
                self.check_requests(&touched, &index, &tally)
                    .await?
                    .report_into(&mut cell.failures);
            }
        }
        Ok(cell)
    }

    /// Each applied call stored exactly one request-id row: as many rows per touched entity
    /// as successes so far (append and fenced-transition entities are disjoint).
    async fn check_requests(
        &self,
        touched: &[String],
        index: &HashMap<&str, usize>,
        tally: &Tally,
    ) -> Result<Findings, String> {
        let rows = sqlx::query(
            "SELECT entity_id, count(*) FROM bench_baseline.requests WHERE entity_id = ANY($1) GROUP BY entity_id",
        )
        .bind(touched)
        .fetch_all(&self.admin)
        .await
        .map_err(|e| format!("check request ids: {e}"))?;
        let mut found = Findings::new("request-id rows do not match successes");
        if rows.len() != touched.len() {
            found.add(format!(
                "{} touched entities have no request row",
                touched.len() - rows.len()
            ));
        }
        for r in rows {
            let (id, count): (String, i64) = (r.get(0), r.get(1));
            let want = index.get(id.as_str()).map_or(0, |&i| tally.get(i));
            if count as u64 != want {
                found.add(format!("{id}: {count} rows after {want} successes"));
            }
        }
        Ok(found)
    }

    /// Each touched key's token equals its grants so far, and no key is left held.
    async fn check_leases(
        &self,
        touched: &[String],
        index: &HashMap<&str, usize>,
        tally: &Tally,
    ) -> Result<Findings, String> {
        let rows = sqlx::query("SELECT key, token, holder IS NOT NULL FROM bench_baseline.leases WHERE key = ANY($1)")
            .bind(touched)
            .fetch_all(&self.admin)
            .await
            .map_err(|e| format!("check leases: {e}"))?;
        let mut found = Findings::new("token/grant mismatch or key left held");
        if rows.len() != touched.len() {
            found.add(format!("{} leased keys have no row", touched.len() - rows.len()));
        }
        for r in rows {
            let (key, token, held): (String, i64, bool) = (r.get(0), r.get(1), r.get(2));
            let grants = index.get(key.as_str()).map_or(0, |&i| tally.get(i));
            if held || token as u64 != grants {
                found.add(format!("{key}: token {token} after {grants} grants, held: {held}"));
            }
        }
        Ok(found)
    }

    /// Each touched entity's version and last_seq match the successes counted, and its
    /// tape is exactly 1..=last_seq.
    async fn check_entities(
        &self,
        scenario: Scenario,
        touched: &[String],
        index: &HashMap<&str, usize>,
        tally: &Tally,
    ) -> Result<(Findings, Findings), String> {
        let rows = sqlx::query("SELECT id, version, last_seq FROM bench_baseline.entities WHERE id = ANY($1)")
            .bind(touched)
            .fetch_all(&self.admin)
            .await
            .map_err(|e| format!("check entities: {e}"))?;
        let want = |id: &str| {
            let n = index.get(id).map_or(0, |&i| tally.get(i));
            match scenario {
                Scenario::Append => (1, n),
                _ => (1 + n, 2 * n),
            }
        };
        let mut lost = Findings::new("lost or extra update");
        for r in rows {
            let (id, version, last_seq): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let (want_version, want_seq) = want(&id);
            if (version as u64, last_seq as u64) != (want_version, want_seq) {
                lost.add(format!(
                    "{id}: version {version} last_seq {last_seq}, expected {want_version} and {want_seq}"
                ));
            }
        }
        // The primary key rules out duplicates, so a tape is whole when its seqs run from 1
        // to its row count and that count is what the successes wrote.
        let tapes = sqlx::query(
            "SELECT entity_id, count(*), min(seq), max(seq) FROM bench_baseline.events
             WHERE entity_id = ANY($1) GROUP BY entity_id",
        )
        .bind(touched)
        .fetch_all(&self.admin)
        .await
        .map_err(|e| format!("check tapes: {e}"))?;
        let mut gaps = Findings::new("gap in tape");
        if tapes.len() != touched.len() {
            gaps.add(format!(
                "{} touched entities have no events",
                touched.len() - tapes.len()
            ));
        }
        for r in tapes {
            let (id, count, min, max): (String, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
            if min != 1 || max != count || count as u64 != want(&id).1 {
                gaps.add(format!("{id}: {count} events, seqs {min}..={max}"));
            }
        }
        Ok((lost, gaps))
    }

    /// Closes the pool; the schema stays for inspection until the next run drops it.
    pub async fn close(self) {
        self.admin.close().await;
    }
}

/// Grants (or renews) the fenced-transition leases, one per entity, all to
/// [`FENCE_HOLDER`] with token [`FENCE_TOKEN`], in one statement.
async fn grant_fences(admin: &PgPool, plan: &Plan) -> Result<FenceLeases, String> {
    let s = Scenario::FencedTransition;
    let leases = FenceLeases::asking();
    sqlx::query(GRANT_FENCES)
        .bind(s.prefix())
        .bind(FENCE_TOKEN)
        .bind(FENCE_HOLDER)
        .bind(FENCE_TTL.as_secs_f64())
        .bind(s.keys(plan.keys) as i64)
        .execute(admin)
        .await
        .map_err(|e| format!("grant fence leases: {e}"))?;
    Ok(leases)
}

/// One baseline client on its own connection.
struct SqlWorker {
    conn: PoolConnection<Postgres>,
    scenario: Scenario,
    holder: String,
    /// This client's index of `clients`: fenced-transition drives only the entities it owns.
    worker: usize,
    clients: usize,
    ids: Arc<[String]>,
    rng: fastrand::Rng,
    tally: Tally,
    payload: Vec<u8>,
    /// fenced-transition: the version this client last saw, per entity.
    known: Vec<i64>,
}

impl Worker for SqlWorker {
    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let i = match self.scenario {
                Scenario::FencedTransition => load::owned_key(&mut self.rng, self.worker, self.clients, self.ids.len()),
                _ => self.rng.usize(..self.ids.len()),
            };
            let id = self.ids[i].as_str();
            let done = match self.scenario {
                Scenario::LeaseCycle => return self.lease_cycle(i).await,
                Scenario::FencedTransition => return self.fenced_transition(i).await,
                Scenario::Append => sqlx::query(APPEND)
                    .bind(id)
                    .bind(&self.payload)
                    .bind(load::request_id())
                    .execute(&mut *self.conn)
                    .await
                    .map(|r| r.rows_affected() == 1),
                _ => sqlx::query(TRANSITION)
                    .bind(id)
                    .bind(&self.payload)
                    .execute(&mut *self.conn)
                    .await
                    .map(|r| r.rows_affected() == 2),
            };
            load::tallied(done, &mut self.tally, i, kind)
        })
    }

    fn tally(&self) -> Option<&Tally> {
        Some(&self.tally)
    }
}

impl SqlWorker {
    /// One fenced transition of entity `i` with the version last seen; a miss (learning the
    /// version) when it moved on, an error when the fence did not hold.
    async fn fenced_transition(&mut self, i: usize) -> Outcome {
        let id = self.ids[i].as_str();
        let row: Result<(bool, Option<i64>, Option<i64>), _> = sqlx::query_as(FENCED_TRANSITION)
            .bind(id)
            .bind(FENCE_TOKEN)
            .bind(self.known[i])
            .bind(&self.payload)
            .bind(load::request_id())
            .fetch_one(&mut *self.conn)
            .await;
        match row {
            Err(e) => Outcome::Error(kind(&e)),
            Ok((false, _, _)) => Outcome::Error("LeaseLost".into()),
            Ok((true, Some(after), _)) => {
                self.known[i] = after;
                self.tally.add(i);
                Outcome::Success
            }
            Ok((true, None, Some(current))) => {
                self.known[i] = current;
                Outcome::Miss
            }
            Ok((true, None, None)) => Outcome::Error("NoEntity".into()),
        }
    }

    /// Acquire then release key `i`; a miss when another client holds it.
    async fn lease_cycle(&mut self, i: usize) -> Outcome {
        let key = self.ids[i].as_str();
        let token: Option<i64> = match sqlx::query_scalar(ACQUIRE)
            .bind(key)
            .bind(&self.holder)
            .fetch_optional(&mut *self.conn)
            .await
        {
            Ok(t) => t,
            Err(e) => return Outcome::Error(kind(&e)),
        };
        let Some(token) = token else { return Outcome::Miss };
        // Granted, whatever the release says; the check catches a key left held.
        self.tally.add(i);
        match sqlx::query(RELEASE)
            .bind(key)
            .bind(token)
            .execute(&mut *self.conn)
            .await
        {
            Ok(r) if r.rows_affected() == 1 => Outcome::Success,
            Ok(_) => Outcome::Error("NotReleased".into()),
            Err(e) => Outcome::Error(kind(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton::Backend;
    use baton::process::TempDatabase;

    type Answer = (bool, Option<i64>, Option<i64>);

    async fn fenced(pool: &PgPool, token: i64, version: i64) -> Answer {
        sqlx::query_as(FENCED_TRANSITION)
            .bind("f-0")
            .bind(token)
            .bind(version)
            .bind(b"x".as_slice())
            .bind(load::request_id())
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn count(pool: &PgPool, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM bench_baseline.{table} WHERE entity_id = 'f-0'");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// The baseline's fenced transition is honest: it applies only with the live lease's
    /// token and the current version, and then writes the version, two tape rows and the
    /// request id; a stale version learns the current one; a stale or expired fence writes
    /// nothing.
    #[tokio::test]
    async fn the_fenced_statement_checks_fence_and_version() {
        let db = TempDatabase::new(Backend::Postgres).await.unwrap();
        let plan = Plan {
            scenarios: vec![Scenario::FencedTransition],
            keys: 1,
            timing: load::Timing {
                warmup: std::time::Duration::ZERO,
                duration: std::time::Duration::from_secs(1),
            },
            subscribers: 1,
            streams_per_connection: 1,
        };
        let pg = Pg::setup(db.url(), &plan).await.unwrap();
        let pool = &pg.admin;
        assert_eq!(fenced(pool, FENCE_TOKEN, 1).await, (true, Some(2), Some(1)));
        assert_eq!((count(pool, "events").await, count(pool, "requests").await), (2, 1));
        assert_eq!(
            fenced(pool, FENCE_TOKEN, 1).await,
            (true, None, Some(2)),
            "stale version"
        );
        assert_eq!(
            fenced(pool, FENCE_TOKEN + 1, 2).await,
            (false, None, Some(2)),
            "wrong token"
        );
        sqlx::query("UPDATE bench_baseline.leases SET expires_at = now() - interval '1 second'")
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(
            fenced(pool, FENCE_TOKEN, 2).await,
            (false, None, Some(2)),
            "expired lease"
        );
        assert_eq!((count(pool, "events").await, count(pool, "requests").await), (2, 1));
        pg.close().await;
    }
}
