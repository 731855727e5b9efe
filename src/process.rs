//! `baton serve` as a child process, for whoever drives a real server from outside: the
//! bench, the process-level tests, an embedder's own test suite. The child listens on a
//! port the OS picks and logs its address in its first JSON line ("baton serving"), which is
//! read here — no port race and no sleep. Signals go to the child's pid only.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to log that it serves (migrations included).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `baton serve` child. Dropping it kills (SIGKILL) and reaps the child.
pub struct ServeProcess {
    /// `None` once reaped.
    child: Option<Child>,
    addr: SocketAddr,
    /// Every stderr line, read by a thread so the child never blocks on a full pipe.
    log: mpsc::Receiver<String>,
    /// Lines read while waiting for the "serving" line, not yet handed out.
    early: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// A signal to send to the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Graceful shutdown (drain).
    Term,
    /// Immediate death: nothing after the signal runs.
    Kill,
    /// Freeze every thread (as a VM pause or a long GC would).
    Stop,
    /// Thaw a stopped child.
    Cont,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Term => "-TERM",
            Signal::Kill => "-KILL",
            Signal::Stop => "-STOP",
            Signal::Cont => "-CONT",
        }
    }
}

impl ServeProcess {
    /// Starts `bin serve --listen 127.0.0.1:0 --log-format json --database-url URL EXTRA…`
    /// and waits (blocking) for its address. On failure the error carries the last lines
    /// the child logged.
    pub fn spawn(bin: &Path, database_url: &str, extra: &[&str]) -> Result<Self, String> {
        Self::spawn_at(bin, SocketAddr::from(([127, 0, 0, 1], 0)), database_url, extra)
    }

    /// [`ServeProcess::spawn`] on a given address (a replica restarted where it was).
    pub fn spawn_at(bin: &Path, listen: SocketAddr, database_url: &str, extra: &[&str]) -> Result<Self, String> {
        Self::spawn_with_env(bin, listen, database_url, extra, &[])
    }

    /// [`ServeProcess::spawn_at`] with variables set for the child only (`OTEL_…`, `BATON_…`).
    pub fn spawn_with_env(
        bin: &Path,
        listen: SocketAddr,
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", &listen.to_string(), "--log-format", "json"])
            .args(["--database-url", database_url])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", bin.display()))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the spawned server has no stderr".into());
        };
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        match wait_for_addr(&log) {
            Ok((addr, early)) => Ok(Self {
                child: Some(child),
                addr,
                log,
                early: std::sync::Mutex::new(early.into()),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("baton serve on {}: {e}", crate::storage::redact(database_url)))
            }
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The child's pid (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the child (and only to it).
    pub fn signal(&self, signal: Signal) -> Result<(), String> {
        let child = self.child.as_ref().ok_or("the server was already reaped")?;
        let ok = Command::new("kill")
            .args([signal.flag(), &child.id().to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?
            .success();
        if ok {
            Ok(())
        } else {
            Err(format!("kill {} {} failed", signal.flag(), child.id()))
        }
    }

    /// Waits up to `within` for the child to exit (a thread blocks in `wait`; no polling).
    /// When it does not, it is killed and the error says so.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or("the server was already reaped")?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(within) {
            Ok(status) => status.map_err(|e| format!("wait for {pid}: {e}")),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                Err(format!("the server (pid {pid}) did not exit within {within:?}"))
            }
        }
    }

    /// The log lines received so far (each JSON), without waiting.
    pub fn drain_log(&self) -> Vec<String> {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        early.drain(..).chain(self.log.try_iter()).collect()
    }

    /// The next log line satisfying `matches`, waiting up to `within` (the lines before it
    /// are passed over).
    pub fn wait_for_log(&self, within: Duration, matches: impl Fn(&str) -> bool) -> Result<String, String> {
        {
            let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(line) = early.pop_front() {
                if matches(&line) {
                    return Ok(line);
                }
            }
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(format!("no such log line within {within:?}")),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the server exited".into()),
            }
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The address from the first JSON log line whose message is "baton serving", and the lines
/// before it; the last lines seen when the child exits or stays silent instead.
fn wait_for_addr(log: &mpsc::Receiver<String>) -> Result<(SocketAddr, Vec<String>), String> {
    let mut before: Vec<String> = vec![];
    let mut tail: Vec<String> = vec![];
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match log.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "no \"baton serving\" line within {START_TIMEOUT:?}: {}",
                    tail.join(" | ")
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(format!("it exited: {}", tail.join(" | "))),
        };
        if let Some(addr) = serving_addr(&line) {
            return Ok((addr, before));
        }
        before.push(line.clone());
        tail.push(line);
        if tail.len() > 5 {
            tail.remove(0);
        }
    }
}

/// The address in a JSON "baton serving" log line.
fn serving_addr(line: &str) -> Option<SocketAddr> {
    logged_addr(line, "baton serving")
}

/// The `addr` field of a JSON log line whose message is `message` (`"baton serving"`,
/// `"admin serving"`).
pub fn logged_addr(line: &str, message: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"] != message {
        return None;
    }
    v["fields"]["addr"].as_str()?.parse().ok()
}

/// The `baton` executable beside the running one (`target/<profile>/baton` for a test or a
/// bench binary built in the same workspace), or `$BATON_BIN` when set.
pub fn sibling_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("BATON_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
    // Test binaries live one level down, in target/<profile>/deps.
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(format!("baton{}", std::env::consts::EXE_SUFFIX)));
    for bin in candidates {
        if bin.is_file() {
            return Ok(bin);
        }
    }
    Err(format!(
        "no baton executable beside {} (build it first: cargo build --workspace --bins), or set BATON_BIN",
        exe.display()
    ))
}

/// The Postgres server that temporary databases are created on: `$DATABASE_URL`, or the
/// local default `postgres://postgres@127.0.0.1:5432/test` (a user that may CREATE DATABASE).
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty database for one server or one test: a new SQLite file in a directory of
/// its own, or a new database on the Postgres of [`postgres_admin_url`]. Deleted (SQLite)
/// or dropped (Postgres) with this value.
pub struct TempDatabase {
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin: String, name: String },
}

impl TempDatabase {
    /// Creates the database. Postgres errors say what to install or configure.
    pub async fn new(backend: crate::Backend) -> Result<Self, String> {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        match backend {
            crate::Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("baton-{unique}"));
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                Ok(Self {
                    url: format!("sqlite:{}", dir.join("baton.db").display()),
                    cleanup: Cleanup::Dir(dir),
                })
            }
            crate::Backend::Postgres => {
                use sqlx::Connection;
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|e| {
                    format!(
                        "needs a PostgreSQL server at {} ({e}). Install and start one (Debian: \
                         apt-get install postgresql && pg_ctlcluster --skip-systemctl-redirect \
                         $(ls /etc/postgresql) main start), or point DATABASE_URL at a server \
                         where the user may CREATE DATABASE",
                        crate::storage::redact(&admin)
                    )
                })?;
                let name = format!("baton_test_{unique}");
                // The name is ours (a UUID), never request data.
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("cannot create database {name}: {e}"))?;
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                Ok(Self {
                    url: format!("{base}/{name}"),
                    cleanup: Cleanup::Postgres { admin, name },
                })
            }
        }
    }

    /// The database URL, for `--database-url`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin, name } => {
                let (admin, name) = (admin.clone(), name.clone());
                // Best effort, on a thread of its own: Drop cannot await, and may run inside
                // a runtime.
                let _ = std::thread::spawn(move || {
                    use sqlx::Connection;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    rt.block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await
                        .ok()
                    })
                })
                .join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_line_gives_the_address() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"baton serving","addr":"127.0.0.1:4242","backend":"Sqlite"}}"#;
        assert_eq!(serving_addr(line), Some("127.0.0.1:4242".parse().unwrap()));
        assert_eq!(serving_addr(r#"{"fields":{"message":"draining"}}"#), None);
        assert_eq!(serving_addr("not json"), None);
    }
}
