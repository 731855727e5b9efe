//! The system under test: real `baton serve` processes on one database. Postgres runs get
//! two replicas, each talking to the suite's own Postgres through a proxy of its own (to
//! partition or slow one replica's network); SQLite runs get the one node. A replica that is
//! killed or drained is restarted on the same address, so clients find it where it was.

use crate::proxy::Proxy;
use baton::Backend;
use baton::process::TempPostgres;
use baton::process::{ServeProcess, Signal, TempDatabase};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of every replica in a fault run: a short idle-in-transaction bound (a frozen or
/// partitioned replica frees its keys within 1 s) and a heartbeat far longer than a run, so
/// that a lost wake-up is not hidden by the heartbeat sweep and shows up as a stuck stream.
const REPLICA_FLAGS: &[&str] = &[
    "--pg-idle-in-transaction-timeout",
    "1s",
    "--heartbeat",
    "60s",
    "--drain",
    "3s",
    "--log-level",
    "warn,baton=info",
];

struct Replica {
    addr: SocketAddr,
    database_url: String,
    proxy: Option<Proxy>,
    process: Option<ServeProcess>,
}

/// A running cluster; every process it started is killed when it is dropped.
pub struct Cluster {
    bin: PathBuf,
    replicas: Vec<Replica>,
    pub pg: Option<TempPostgres>,
    _sqlite: Option<TempDatabase>,
}

async fn spawn(bin: PathBuf, listen: SocketAddr, url: String) -> ServeProcess {
    tokio::task::spawn_blocking(move || ServeProcess::spawn_at(&bin, listen, &url, REPLICA_FLAGS))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("replica starts: {e}"))
}

impl Cluster {
    /// Starts the backend's cluster on a fresh database.
    pub async fn start(backend: Backend) -> Self {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_baton"));
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        match backend {
            Backend::Sqlite => {
                let db = TempDatabase::new(backend).await.unwrap();
                let process = spawn(bin.clone(), any, db.url().to_string()).await;
                Self {
                    replicas: vec![Replica {
                        addr: process.addr(),
                        database_url: db.url().to_string(),
                        proxy: None,
                        process: Some(process),
                    }],
                    bin,
                    pg: None,
                    _sqlite: Some(db),
                }
            }
            Backend::Postgres => {
                let pg = tokio::task::spawn_blocking(TempPostgres::start_default)
                    .await
                    .unwrap()
                    .expect("the fault suite starts a Postgres of its own");
                pg.create_database("baton").await.expect("create database");
                let mut replicas = vec![];
                for _ in 0..2 {
                    let proxy = Proxy::start(pg.addr()).await;
                    let url = TempPostgres::url_at(proxy.addr(), "baton");
                    let process = spawn(bin.clone(), any, url.clone()).await;
                    replicas.push(Replica {
                        addr: process.addr(),
                        database_url: url,
                        proxy: Some(proxy),
                        process: Some(process),
                    });
                }
                Self {
                    replicas,
                    bin,
                    pg: Some(pg),
                    _sqlite: None,
                }
            }
        }
    }

    /// The replicas' gRPC URLs, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.iter().map(|r| format!("http://{}", r.addr)).collect()
    }

    /// Sends a signal to replica `i`.
    pub fn signal(&self, i: usize, signal: Signal) {
        let p = self.replicas[i].process.as_ref().expect("replica is running");
        p.signal(signal).unwrap();
    }

    /// kill -9 of replica `i`, reaped.
    pub fn kill(&mut self, i: usize) {
        let mut p = self.replicas[i].process.take().expect("replica is running");
        p.signal(Signal::Kill).unwrap();
        p.wait_exit(Duration::from_secs(10)).unwrap();
    }

    /// SIGTERM of replica `i`; it must drain and exit 0 within its drain bound.
    pub fn terminate(&mut self, i: usize) {
        let mut p = self.replicas[i].process.take().expect("replica is running");
        p.signal(Signal::Term).unwrap();
        let status = p.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(0), "a drained replica exits 0");
    }

    /// Starts replica `i` again, on its old address and database.
    pub async fn restart(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        assert!(r.process.is_none(), "replica {i} is still running");
        r.process = Some(spawn(self.bin.clone(), r.addr, r.database_url.clone()).await);
    }

    /// The proxy between replica `i` and Postgres.
    pub fn proxy(&self, i: usize) -> &Proxy {
        self.replicas[i].proxy.as_ref().expect("Postgres replicas have proxies")
    }
}
