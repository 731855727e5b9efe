//! `baton serve` as a child process, for whoever drives a real server from outside: the
//! bench, the process-level tests, an embedder's own test suite. The child listens on a
//! port the OS picks and logs its address in its first JSON line ("baton serving"), which is
//! read here — no port race and no sleep. Signals go to the child's pid only. Also the
//! databases and Postgres servers such a child is started on ([`TempDatabase`],
//! [`TempPostgres`]).

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

/// A Postgres server of the caller's own, for tests that configure it (TLS, `pg_hba.conf`)
/// or crash it: `initdb` into a temporary directory, started on a free loopback port and on
/// a Unix socket in that directory, so the machine's shared Postgres is never touched.
/// Dropping it stops it (`pg_ctl stop`, by its data directory) and deletes the directory.
pub struct TempPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// The directory of `initdb` and `pg_ctl` (Debian keeps them out of PATH).
fn postgres_bin_dir() -> Result<PathBuf, String> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no initdb and pg_ctl found (Debian: apt-get install postgresql)".to_string())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl TempPostgres {
    /// `initdb` (superuser `postgres`, trust authentication) without starting the server, so
    /// the caller can configure it first ([`TempPostgres::write_file`],
    /// [`TempPostgres::configure`]), then [`TempPostgres::start`].
    pub fn init() -> Result<Self, String> {
        let bin = postgres_bin_dir()?;
        let dir = std::env::temp_dir().join(format!("baton-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // A free port, by binding and letting go (the window is a few milliseconds).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        // From here on, dropping it cleans up.
        let pg = Self { dir, bin, port };
        pg.give_to_postgres(&pg.dir)?;
        let data = pg.data_dir().to_string_lossy().into_owned();
        let args = ["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8"].map(str::to_string);
        pg.run("initdb", &args, false)?;
        Ok(pg)
    }

    /// [`TempPostgres::init`] and [`TempPostgres::start`], for a server as `initdb` makes it.
    pub fn start_default() -> Result<Self, String> {
        let pg = Self::init()?;
        pg.start()?;
        Ok(pg)
    }

    /// The data directory, where `postgresql.conf`, `pg_hba.conf` and any file
    /// [`TempPostgres::write_file`] wrote are.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes (or replaces) a file of the data directory, owned by the server's user and
    /// readable by it alone, as Postgres requires of a private key.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
        self.give_to_postgres(&path)
    }

    /// Appends settings (lines of `postgresql.conf`) to the configuration.
    pub fn configure(&self, lines: &str) -> Result<(), String> {
        let path = self.data_dir().join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        conf.push('\n');
        conf.push_str(lines);
        conf.push('\n');
        self.write_file("postgresql.conf", &conf)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), String> {
        self.ctl(&["start"])
    }

    /// Kills the server (no shutdown checkpoint, as a crash would) and starts it again; it
    /// recovers from its WAL.
    pub fn restart_immediately(&self) -> Result<(), String> {
        self.ctl(&["-m", "immediate", "restart"])
    }

    /// The server's TCP address (127.0.0.1 and its port).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A URL for `database` as the superuser at `addr` (the server itself, or a proxy in
    /// front of it).
    pub fn url_at(addr: SocketAddr, database: &str) -> String {
        format!("postgres://postgres@{addr}/{database}")
    }

    /// Options that reach `database` as the superuser over the server's Unix socket, which
    /// `initdb` trusts whatever `pg_hba.conf` says of TCP: for the test's own look at the
    /// server.
    pub fn socket_options(&self, database: &str) -> sqlx::postgres::PgConnectOptions {
        sqlx::postgres::PgConnectOptions::new_without_pgpass()
            .socket(&self.dir)
            .port(self.port)
            .username("postgres")
            .database(database)
            .ssl_mode(sqlx::postgres::PgSslMode::Disable)
    }

    /// Creates an empty database.
    pub async fn create_database(&self, name: &str) -> Result<(), String> {
        use sqlx::ConnectOptions;
        let mut conn = self
            .socket_options("postgres")
            .connect()
            .await
            .map_err(|e| format!("cannot connect to the server in {}: {e}", self.dir.display()))?;
        // The name is the caller's own, never request data.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("cannot create database {name}: {e}"))?;
        Ok(())
    }

    /// Runs pg_ctl on this server. The server it starts logs to a file: with its output on
    /// our pipes it would hold them open, and waiting for pg_ctl would never end.
    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut all = vec![
            "-D".to_string(),
            self.data_dir().to_string_lossy().into_owned(),
            "-l".to_string(),
            self.dir.join("log").to_string_lossy().into_owned(),
            "-w".to_string(),
            "-o".to_string(),
            options,
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        self.run("pg_ctl", &all, true)
    }

    /// Runs a Postgres tool, as the `postgres` user when we are root (initdb refuses root);
    /// on failure the error carries its output, and the server's log when `log` is set.
    fn run(&self, tool: &str, args: &[String], log: bool) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let out = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {tool}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let server_log = if log {
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        } else {
            String::new()
        };
        Err(format!(
            "{tool} {args:?} failed: {}{}{server_log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Makes the server's user own `path` when we are root (the server runs as `postgres`).
    fn give_to_postgres(&self, path: &Path) -> Result<(), String> {
        if !is_root() {
            return Ok(());
        }
        let ok = Command::new("chown")
            .arg("postgres")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err(format!("cannot chown {} to postgres", path.display()))
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data_dir().to_string_lossy().into_owned();
        let stop = ["-D", &data, "-m", "immediate", "stop"].map(str::to_string);
        let _ = self.run("pg_ctl", &stop, false);
        let _ = std::fs::remove_dir_all(&self.dir);
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
