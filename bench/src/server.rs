//! A `baton serve` child for `--spawn` (started through `baton::process`), its admin
//! (metrics) address, and a server's resident memory from /proc.

use baton::Backend;
use baton::process::{self, ServeProcess, TempDatabase};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long after "baton serving" the "admin serving" line may take to show up. Both
/// listeners are bound at start-up, so it is there at once or never.
const ADMIN_LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start the spawned server besides its database.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start its admin listener (and so its metrics recorder).
    pub admin: bool,
    /// More `baton serve` arguments.
    pub args: Vec<String>,
    /// Variables set for the server only.
    pub env: Vec<(String, String)>,
}

/// A loopback OTLP/gRPC receiver that counts the spans it is sent and drops them: somewhere
/// for a traced server to export to, so tracing's cost is measured whole.
pub async fn otlp_sink() -> Result<(SocketAddr, Arc<AtomicU64>), String> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

    struct Sink(Arc<AtomicU64>);

    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans: usize = request
                .get_ref()
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.0.fetch_add(spans as u64, Ordering::Relaxed);
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("cannot bind the OTLP sink: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let spans = Arc::new(AtomicU64::new(0));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(spans.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, spans))
}

/// A spawned server, with the fresh database it was given; killed on drop, then the
/// database is dropped (fields drop in order).
pub struct Spawned {
    process: ServeProcess,
    /// The admin listener (`GET /metrics`), or why there is none.
    admin: Result<SocketAddr, String>,
    /// The fresh database made for it when none was given: as empty as the baselines'
    /// freshly created tables, so neither side starts with a bigger store.
    _db: Option<TempDatabase>,
}

impl Spawned {
    /// Starts `baton serve` (the `baton` executable beside this one, or `bin`) on
    /// 127.0.0.1:0 and waits for the address it logs; with `--admin-listen 127.0.0.1:0` too
    /// when `options.admin` and this `baton` has that flag, and then for the admin address it
    /// logs.
    pub async fn start(
        bin: Option<PathBuf>,
        backend: Backend,
        database_url: Option<String>,
        pool_size: Option<u32>,
        options: Options,
    ) -> Result<Self, String> {
        let (url, db) = match database_url {
            Some(url) => (url, None),
            None => {
                let db = TempDatabase::new(backend).await?;
                (db.url().to_string(), Some(db))
            }
        };
        let bin = match bin {
            Some(b) => b,
            None => process::sibling_binary()?,
        };
        let pool = pool_size.map(|n| n.to_string());
        let (process, admin) = tokio::task::spawn_blocking(move || {
            let has_admin = options.admin && has_admin_flag(&bin)?;
            // The serving line is logged at info; a --server-arg may set a finer level.
            let mut extra = vec![];
            if !options.args.iter().any(|a| a.starts_with("--log-level")) {
                extra.extend(["--log-level", "info"]);
            }
            if let Some(n) = &pool {
                extra.extend(["--pool-size", n.as_str()]);
            }
            if has_admin {
                extra.extend(["--admin-listen", "127.0.0.1:0"]);
            }
            extra.extend(options.args.iter().map(String::as_str));
            let env: Vec<(&str, &str)> = options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let process = ServeProcess::spawn_with_env(&bin, listen, &url, &extra, &env)?;
            let admin = if has_admin {
                // `spawn` returned at "baton serving"; the admin line comes after it, or was
                // logged before it and consumed by `spawn`, which keeps no earlier line.
                process
                    .wait_for_log(ADMIN_LOG_TIMEOUT, |l| admin_addr(l).is_some())
                    .map_err(|e| format!("no \"admin serving\" log line after \"baton serving\": {e}"))
                    .and_then(|l| admin_addr(&l).ok_or_else(|| "unreadable admin line".into()))
            } else if !options.admin {
                Err("--no-admin: the server's metrics are off".into())
            } else {
                Err(format!("{} serve has no --admin-listen", bin.display()))
            };
            Ok::<_, String>((process, admin))
        })
        .await
        .map_err(|e| format!("waiting for the server: {e}"))??;
        Ok(Self {
            process,
            admin,
            _db: db,
        })
    }

    /// The admin listener's address, or why there is none.
    pub fn admin_addr(&self) -> Result<SocketAddr, String> {
        self.admin.clone()
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

/// Whether `bin serve` takes `--admin-listen` (a server from before the flag does not, and
/// would refuse to start with it).
fn has_admin_flag(bin: &Path) -> Result<bool, String> {
    let out = Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .map_err(|e| format!("cannot run {} serve --help: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} serve --help failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).contains("--admin-listen"))
}

/// The address in a JSON "admin serving" log line.
fn admin_addr(line: &str) -> Option<SocketAddr> {
    process::logged_addr(line, "admin serving")
}

/// Resident memory of a process in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_vm_rss(&text).ok_or_else(|| format!("no VmRSS line in {path}"))
}

/// CPU time a process has used so far, all threads, user and system (utime + stime of
/// /proc/PID/stat, in clock ticks of USER_HZ, which Linux fixes at 100 for user space).
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_cpu_ticks(&text)
        .map(|ticks| ticks as f64 / 100.0)
        .ok_or_else(|| format!("no utime/stime in {path}"))
}

/// utime + stime: fields 14 and 15, counted after the command name, which is in parentheses
/// and may hold spaces and parentheses itself.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
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
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (baton (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 731 269 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(1000));
        assert_eq!(parse_cpu_ticks("4242 (baton) S 1"), None);
        let me = cpu_seconds(std::process::id()).unwrap();
        assert!(me >= 0.0, "{me}");
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tbaton\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn the_admin_line_gives_the_metrics_address() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"admin serving","addr":"127.0.0.1:4243"}}"#;
        assert_eq!(admin_addr(line), Some("127.0.0.1:4243".parse().unwrap()));
        let serving = r#"{"fields":{"message":"baton serving","addr":"127.0.0.1:4242"}}"#;
        assert_eq!(admin_addr(serving), None);
        assert_eq!(admin_addr("not json"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
