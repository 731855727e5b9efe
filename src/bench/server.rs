//! A `baton serve` child on 127.0.0.1:0, and the server's resident memory from /proc.

use super::{Backend, DEFAULT_PG_URL};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a spawned server may take to log that it serves (migrations included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A spawned server; killed by [`Spawned::stop`] or on drop.
pub struct Spawned {
    child: Child,
    addr: String,
    /// Holds the SQLite file of a spawned sqlite server until the end.
    _dir: Option<tempfile::TempDir>,
}

impl Spawned {
    /// Starts the current executable as `baton serve` and waits for its "baton serving" log
    /// line, which carries the bound address (no port race, no sleep).
    pub async fn start(backend: Backend, database_url: Option<String>, pool_size: Option<u32>) -> Result<Self, String> {
        let (url, dir) = match (backend, database_url) {
            (_, Some(url)) => (url, None),
            (Backend::Postgres, None) => (DEFAULT_PG_URL.to_string(), None),
            (Backend::Sqlite, None) => {
                let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
                (format!("sqlite:{}", dir.path().join("bench.db").display()), Some(dir))
            }
        };
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the baton executable: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--database-url",
            &url,
        ]);
        if let Some(n) = pool_size {
            cmd.args(["--pool-size", &n.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn baton serve: {e}"))?;
        let Some(stderr) = child.stderr.take() else {
            return Err("spawned server has no stderr".into());
        };
        let (tx, rx) = mpsc::channel();
        // Reads the log for the whole run so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let found = tokio::task::spawn_blocking(move || wait_for_addr(&rx))
            .await
            .map_err(|e| format!("waiting for the server: {e}"))?;
        match found {
            Ok(addr) => Ok(Self { child, addr, _dir: dir }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("spawned server on {url}: {e}"))
            }
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server and reaps it.
    pub fn stop(self) {
        // Drop does the work.
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address from the first JSON log line whose message is "baton serving"; the last
/// lines seen, when the server exits or stays silent instead.
fn wait_for_addr(log: &mpsc::Receiver<String>) -> Result<String, String> {
    let mut tail: Vec<String> = vec![];
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match log.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "no \"baton serving\" line within {START_TIMEOUT:?}: {}",
                    tail.join(" | ")
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("it exited: {}", tail.join(" | ")));
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "baton serving"
            && let Some(addr) = v["fields"]["addr"].as_str()
        {
            return Ok(addr.to_string());
        }
        tail.push(line);
        if tail.len() > 5 {
            tail.remove(0);
        }
    }
}

/// Resident memory of a process in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_vm_rss(&text).ok_or_else(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tbaton\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
