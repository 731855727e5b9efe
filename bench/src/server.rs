//! A `baton serve` child for `--spawn` (started through `baton::process`), and a server's
//! resident memory from /proc.

use crate::DEFAULT_PG_URL;
use baton::Backend;
use baton::process::{self, ServeProcess};
use std::path::PathBuf;

/// A spawned server, with the temporary directory holding its SQLite file; killed on drop.
pub struct Spawned {
    process: ServeProcess,
    /// Holds the SQLite file of a spawned sqlite server until the end.
    _dir: Option<tempfile::TempDir>,
}

impl Spawned {
    /// Starts `baton serve` (the `baton` executable beside this one, or `bin`) on
    /// 127.0.0.1:0 and waits for the address it logs.
    pub async fn start(
        bin: Option<PathBuf>,
        backend: Backend,
        database_url: Option<String>,
        pool_size: Option<u32>,
    ) -> Result<Self, String> {
        let (url, dir) = match (backend, database_url) {
            (_, Some(url)) => (url, None),
            (Backend::Postgres, None) => (DEFAULT_PG_URL.to_string(), None),
            (Backend::Sqlite, None) => {
                let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
                (format!("sqlite:{}", dir.path().join("bench.db").display()), Some(dir))
            }
        };
        let bin = match bin {
            Some(b) => b,
            None => process::sibling_binary()?,
        };
        let pool = pool_size.map(|n| n.to_string());
        let process = tokio::task::spawn_blocking(move || {
            let mut extra = vec!["--log-level", "info"];
            if let Some(n) = &pool {
                extra.extend(["--pool-size", n.as_str()]);
            }
            ServeProcess::spawn(&bin, &url, &extra)
        })
        .await
        .map_err(|e| format!("waiting for the server: {e}"))??;
        Ok(Self { process, _dir: dir })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the server and reaps it.
    pub fn stop(self) {
        // Drop does the work.
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
