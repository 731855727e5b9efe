//! The raw Postgres baseline: the same work as baton's scenarios, as the minimal SQL, one
//! statement per round trip, straight from the load generator (no gRPC, no baton), one
//! pooled connection per client, in schema `bench_baseline` (dropped and created at setup).

use crate::checks::Findings;
use crate::load::{self, Tally, Worker, drive};
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
);";

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

/// An append of one event to an unsealed tape, in one statement.
const APPEND: &str = "
WITH u AS (
    UPDATE bench_baseline.entities SET last_seq = last_seq + 1
    WHERE id = $1 AND state = 'running'
    RETURNING id, last_seq
)
INSERT INTO bench_baseline.events (entity_id, seq, type, payload)
SELECT id, last_seq, 'tick', $2 FROM u";

/// The Postgres baseline.
pub struct Pg {
    url: String,
    admin: PgPool,
    tallies: HashMap<Scenario, Tally>,
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
        for &s in &plan.scenarios {
            if matches!(s, Scenario::Transition | Scenario::TransitionHot | Scenario::Append) {
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
            tallies.insert(s, Tally::new(s.keys(plan.keys)));
        }
        Ok(Self {
            url: url.to_string(),
            admin,
            tallies,
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
                ids: ids.clone(),
                rng: fastrand::Rng::new(),
                tally: Tally::new(ids.len()),
                payload: vec![b'x'; if scenario == Scenario::Append { 1024 } else { 64 }],
            });
        }
        let run = drive(workers, plan.timing).await?;
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
        }
        Ok(cell)
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

/// One baseline client on its own connection.
struct SqlWorker {
    conn: PoolConnection<Postgres>,
    scenario: Scenario,
    holder: String,
    ids: Arc<[String]>,
    rng: fastrand::Rng,
    tally: Tally,
    payload: Vec<u8>,
}

impl Worker for SqlWorker {
    fn op(&mut self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let i = self.rng.usize(..self.ids.len());
            let id = self.ids[i].as_str();
            let done = match self.scenario {
                Scenario::LeaseCycle => return self.lease_cycle(i).await,
                Scenario::Append => sqlx::query(APPEND)
                    .bind(id)
                    .bind(&self.payload)
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
