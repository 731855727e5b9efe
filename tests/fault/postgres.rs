//! A Postgres instance of the suite's own (initdb into a temporary directory, another port),
//! so that restarting it hurts no one: the machine's shared Postgres is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running Postgres owned by one fault run; stopped and deleted when dropped.
pub struct OwnPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// The directory of `initdb` and `pg_ctl` (Debian keeps them out of PATH).
fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
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
    found.pop().expect(
        "the fault suite starts its own Postgres and needs initdb and pg_ctl \
         (Debian: apt-get install postgresql)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A Postgres tool, run as the `postgres` user when we are root (initdb refuses root).
fn command(bin: &Path, tool: &str) -> Command {
    let exe = bin.join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

/// Runs a Postgres tool to success.
fn run(bin: &Path, tool: &str, args: &[&str]) {
    let out = command(bin, tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OwnPostgres {
    /// initdb, then start on a free loopback port, waiting until it accepts connections.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!("baton-fault-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {} to postgres", dir.display());
        }
        let data = dir.join("data");
        run(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
            ],
        );
        // A free port, by binding and letting go (the window is a few milliseconds).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { dir, bin, port };
        pg.ctl(&["start"]);
        pg
    }

    /// Runs pg_ctl on this instance. The server it starts logs to a file: with its output
    /// on our pipes it would hold them open, and waiting for pg_ctl would never end.
    fn ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut all = vec![
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-o",
            &options,
        ];
        all.extend_from_slice(args);
        run(&self.bin, "pg_ctl", &all);
    }

    /// The address replicas (or a proxy) connect to.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A URL for `database` at `addr` (the instance itself, or a proxy in front of it).
    pub fn url_at(addr: std::net::SocketAddr, database: &str) -> String {
        format!("postgres://postgres@{addr}/{database}")
    }

    /// Creates an empty database.
    pub async fn create_database(&self, name: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&Self::url_at(self.addr(), "postgres"))
            .await
            .unwrap();
        // The name is the suite's own, never request data.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Kills Postgres (no shutdown checkpoint, as a crash would) and starts it again; it
    /// recovers from its WAL.
    pub fn restart_immediately(&self) {
        self.ctl(&["-m", "immediate", "restart"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = command(&self.bin, "pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
