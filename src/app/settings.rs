//! Everything `baton serve` can be told, with its defaults — written once, here. The same
//! type is the command line (each setting a flag and a `BATON_*` variable), the schema of
//! the configuration file (each setting a key: the flag's name with `_` for `-`), and what
//! tests and embedders pass to [`crate::app::Application::build`].
//!
//! Layers, lowest first: the defaults below, the file (`--config`), the environment, the
//! flags. [`Settings::resolve`] applies them and remembers where each value came from, so
//! `--print-config` can say.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings of one baton replica.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Settings {
    /// Address to serve gRPC on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP listener (GET /metrics, /healthz, /readyz); off unless
    /// given. Keep it on loopback or a private network: it is for operators, not clients.
    #[arg(long, env = "BATON_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Database: sqlite:PATH (created if missing) or postgres://USER[:PASS]@HOST[:PORT]/DB.
    // The URL may carry a password: help never shows the environment's value.
    #[arg(
        long,
        env = "BATON_DATABASE_URL",
        default_value = "sqlite:baton.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Longest graceful shutdown on SIGINT/SIGTERM, counted after the drain delay.
    #[arg(long, env = "BATON_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// On SIGINT/SIGTERM, how long to keep serving (and accepting) while health reports
    /// NOT_SERVING, so a proxy's health check notices before the listener closes.
    #[arg(long, env = "BATON_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Heartbeat interval of idle event streams.
    #[arg(long, env = "BATON_HEARTBEAT", default_value = "15s", value_parser = positive)]
    pub heartbeat: Duration,
    /// Close HTTP/2 connections after this age so a load balancer can rebalance (0 = never).
    #[arg(long, env = "BATON_MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
    /// How long streams may outlive their connection's age: then event streams end with
    /// UNAVAILABLE (SHUTTING_DOWN, cause CONNECTION_AGED, last_seq) and health watches end, so clients resume on
    /// another connection; a moment later the connection is closed, whatever is still on it.
    #[arg(long, env = "BATON_MAX_CONNECTION_AGE_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,
    /// HTTP/2 keepalive ping interval.
    #[arg(long, env = "BATON_KEEPALIVE", default_value = "30s", value_parser = positive)]
    pub keepalive: Duration,
    /// Database connections per replica (Postgres): a few per core; more only adds contention.
    #[arg(long, env = "BATON_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,
    /// Write lanes per replica (Postgres): commit batches in flight at once, each on its own
    /// connection. Commands on one key always share a lane, so they commit in order.
    #[arg(long, env = "BATON_WRITE_LANES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub write_lanes: u32,
    /// Postgres ends a session idle inside a transaction this long (a frozen or cut-off
    /// replica), rolling it back and freeing its key for the other replicas.
    #[arg(long, env = "BATON_PG_IDLE_IN_TRANSACTION_TIMEOUT", default_value = "5s", value_parser = positive)]
    pub pg_idle_in_transaction_timeout: Duration,
    /// Longest wait for a key's lock on Postgres; a call that waits longer is UNAVAILABLE.
    #[arg(long, env = "BATON_PG_LOCK_TIMEOUT", default_value = "10s", value_parser = positive)]
    pub pg_lock_timeout: Duration,
    /// How long request-id outcomes are kept for safe retries.
    #[arg(long, env = "BATON_REQUEST_RETENTION", default_value = "24h", value_parser = positive)]
    pub request_retention: Duration,
    /// How often health re-checks the database.
    #[arg(long, env = "BATON_HEALTH_INTERVAL", default_value = "2s", value_parser = positive)]
    pub health_interval: Duration,
    /// Log format (to stderr).
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. info or baton=debug,info.
    #[arg(long, env = "BATON_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Tokens file (TOML; `baton token create` makes entries): every call then needs a
    /// token or client certificate it lists, and may use only the namespaces and role it
    /// grants. Read again when it changes. Off: anyone who reaches the port may call.
    #[arg(long, env = "BATON_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// With --auth-tokens, health and reflection need credentials too (default: open, so
    /// load balancers and tools can probe).
    #[arg(long, env = "BATON_AUTH_PROTECT_ALL", action = clap::ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub auth_protect_all: bool,
    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key. Read again when it
    /// changes, without a restart.
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: clients must present one
    /// (mTLS), and its name can stand for a caller in the tokens file.
    #[arg(long, env = "BATON_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve on a non-loopback address without TLS or without authentication. Refused
    /// otherwise: anyone on the network could read and write every namespace.
    #[arg(long, env = "BATON_INSECURE", action = clap::ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub insecure: bool,
    /// Most client connections open at once; further ones wait in the listen backlog.
    /// Default: 1024, or fewer where the open-files limit would otherwise leave the database
    /// too few file descriptors. A value given is kept as it is.
    #[arg(long, env = "BATON_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
    /// Most calls in flight at once on one connection (HTTP/2 streams); a client queues the
    /// rest.
    #[arg(long, env = "BATON_MAX_STREAMS_PER_CONNECTION", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams_per_connection: u32,
    /// Longest wait for a new connection's HTTP/2 preface: a socket that sends nothing (or
    /// not HTTP/2) is closed instead of holding a connection slot.
    #[arg(long, env = "BATON_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive)]
    pub handshake_timeout: Duration,
    /// Event bytes one stream queues for a client that reads slower than its events come (at
    /// least one event); past it, the stream waits and catches up from the table later.
    #[arg(long, env = "BATON_STREAM_BUFFER", default_value = "1MiB", value_parser = byte_size)]
    pub stream_buffer: usize,
    /// Event bytes a replica holds for all its streams: queued for slow clients, and recent
    /// events kept for fan-out (a quarter). Past it, a stream whose client is behind ends
    /// with RESOURCE_EXHAUSTED and `last_seq`, to resume from.
    #[arg(long, env = "BATON_STREAM_MEMORY", default_value = "64MiB", value_parser = byte_size)]
    pub stream_memory: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn positive(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A size in bytes: a number, optionally followed by `KiB`, `MiB` or `GiB`.
fn byte_size(s: &str) -> Result<usize, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let unit = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use B, KiB, MiB or GiB")),
    };
    let n: usize = s[..digits].parse().map_err(|e| format!("{e}"))?;
    match n.checked_mul(unit) {
        Some(0) => Err("must be more than zero".into()),
        Some(n) => Ok(n),
        None => Err("is too large".into()),
    }
}

impl Settings {
    /// Why this configuration may not serve: a non-loopback address without TLS and
    /// authentication, unless `--insecure` says so.
    pub fn refuse_insecure(&self) -> Option<String> {
        if self.insecure || self.listen.ip().is_loopback() {
            return None;
        }
        let mut missing = vec![];
        if self.tls_cert.is_none() {
            missing.push("TLS (--tls-cert, --tls-key)");
        }
        if self.auth_tokens.is_none() {
            missing.push("authentication (--auth-tokens)");
        }
        (!missing.is_empty()).then(|| {
            format!(
                "refusing to serve on {} without {}: anyone on the network could read and write every namespace. Add them, listen on 127.0.0.1, or pass --insecure",
                self.listen,
                missing.join(" or ")
            )
        })
    }

    /// The HTTP/2 connection age limit, `None` for "never".
    pub fn connection_age(&self) -> Option<Duration> {
        (!self.max_connection_age.is_zero()).then_some(self.max_connection_age)
    }

    /// How long after its accept a connection's streams are ended (age + grace), `None`
    /// when connections never age.
    pub fn stream_lifetime(&self) -> Option<Duration> {
        self.connection_age().map(|age| age + self.max_connection_age_grace)
    }

    /// Applies the layers: defaults < `file` < environment < flags. `cli` holds what clap
    /// parsed from the command line and the environment (the `serve` subcommand's matches;
    /// ids that are not settings are ignored).
    pub fn resolve(cli: &ArgMatches, file: Option<&Path>) -> Result<Resolved, ConfigError> {
        let command = Defaults::command();
        let args: Vec<&clap::Arg> = command.get_arguments().filter(|a| a.get_long().is_some()).collect();
        let mut from_file = vec![];
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {shown}: {e}")))?;
            for (key, value) in parse_file(&text).map_err(|e| ConfigError(format!("{shown}: {e}")))? {
                let Some(arg) = args.iter().find(|a| a.get_id() == key.as_str()) else {
                    return Err(ConfigError(format!("{shown}: unknown setting {key:?}")));
                };
                check_value(arg, &value).map_err(|e| ConfigError(format!("{shown}: {key}: {e}")))?;
                if !matches!(
                    cli.value_source(&key),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                ) {
                    from_file.push((key, value));
                }
            }
        }
        // Parse again: the flags as given, the file's values as if they were flags (only
        // where neither a flag nor a variable set them), the environment as clap reads it.
        let mut argv: Vec<OsString> = vec!["baton".into()];
        for arg in &args {
            let id = arg.get_id().as_str();
            if cli.value_source(id) == Some(ValueSource::CommandLine)
                && let Some(values) = cli.get_raw(id)
            {
                for v in values {
                    argv.push(format!("--{}", arg.get_long().unwrap_or(id)).into());
                    argv.push(v.to_owned());
                }
            }
        }
        for (key, value) in &from_file {
            let long = args
                .iter()
                .find(|a| a.get_id() == key.as_str())
                .and_then(|a| a.get_long());
            argv.push(format!("--{}", long.unwrap_or(key)).into());
            argv.push(value.into());
        }
        let matches = command
            .clone()
            .try_get_matches_from(argv)
            .map_err(|e| ConfigError(first_line(&e.to_string())))?;
        let settings = Settings::from_arg_matches(&matches).map_err(|e| ConfigError(first_line(&e.to_string())))?;
        let effective = args
            .iter()
            .map(|arg| {
                let id = arg.get_id().as_str();
                let value = matches
                    .get_raw(id)
                    .and_then(|mut v| v.next())
                    .map(|v| v.to_string_lossy().into_owned());
                let origin = if from_file.iter().any(|(k, _)| k == id) {
                    Origin::File
                } else {
                    match matches.value_source(id) {
                        Some(ValueSource::CommandLine) => Origin::Flag,
                        Some(ValueSource::EnvVariable) => Origin::Env(
                            arg.get_env()
                                .map(|e| e.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                        ),
                        _ => Origin::Default,
                    }
                };
                Effective {
                    key: id.to_string(),
                    value,
                    origin,
                }
            })
            .collect();
        Ok(Resolved { settings, effective })
    }
}

/// A configuration that cannot be used, as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Settings after every layer, and where each value came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The settings to run with.
    pub settings: Settings,
    /// Every setting's value (as written) and origin, in declaration order.
    pub effective: Vec<Effective>,
}

/// One setting's effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The file key (the flag's name with `_` for `-`).
    pub key: String,
    /// The value as written; `None` when unset (off).
    pub value: Option<String>,
    /// Where it came from.
    pub origin: Origin,
}

/// Which layer a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The `--config` file.
    File,
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag.
    Flag,
}

impl Resolved {
    /// The effective configuration as a TOML file that `--config` accepts, each line
    /// commented with its origin; passwords in URLs are redacted.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# baton serve: the effective configuration (defaults < file < env < flags)\n");
        for e in &self.effective {
            let origin = match &e.origin {
                Origin::Default => "default".to_string(),
                Origin::File => "file".to_string(),
                Origin::Env(name) => format!("env {name}"),
                Origin::Flag => "flag".to_string(),
            };
            match &e.value {
                None => out.push_str(&format!("# {} is not set ({origin})\n", e.key)),
                Some(v) => {
                    let v = if e.key == "database_url" {
                        crate::storage::redact(v)
                    } else {
                        v.clone()
                    };
                    let shown = match v.parse::<i64>() {
                        Ok(n) => n.to_string(),
                        Err(_) => toml::Value::String(v).to_string(),
                    };
                    out.push_str(&format!("{} = {shown}  # {origin}\n", e.key));
                }
            }
        }
        out
    }
}

/// The file's keys and values, each value as it would be written after its flag.
fn parse_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .map_or(String::new(), |l| format!("line {l}: "));
        format!("{line}{}", first_line(e.message()))
    })?;
    table
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{key}: expected a string or a number, found {}",
                        other.type_str()
                    ));
                }
            };
            Ok((key, value))
        })
        .collect()
}

/// Whether `value` is one `arg` accepts, through the flag's own parser.
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let one = clap::Command::new("baton")
        .no_binary_name(true)
        .arg(arg.clone().env(None).required(false));
    let long = format!("--{}", arg.get_long().unwrap_or_default());
    one.try_get_matches_from([long.as_str(), value])
        .map(|_| ())
        .map_err(|e| first_line(&e.to_string()).trim_start_matches("error: ").to_string())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

/// Only to read the defaults off the argument definitions.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    settings: Settings,
}

impl Default for Settings {
    /// The defaults written in the argument definitions above, ignoring the environment.
    fn default() -> Self {
        let command = Defaults::command().mut_args(|a| a.env(None));
        let matches = command.get_matches_from(["baton"]);
        // The defaults above are valid values; a typo there fails every test at once.
        Settings::from_arg_matches(&matches).expect("the defaults of Settings parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_argument_definitions() {
        let s = Settings::default();
        assert_eq!(s.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(s.database_url, "sqlite:baton.db");
        assert_eq!(s.heartbeat, Duration::from_secs(15));
        assert_eq!(s.connection_age(), Some(Duration::from_secs(300)));
        assert_eq!(s.pool_size, 8);
    }

    #[test]
    fn a_public_address_needs_tls_and_auth_or_insecure() {
        let parse = |args: &[&str]| {
            let mut all = vec!["baton"];
            all.extend(args);
            Defaults::try_parse_from(all).unwrap().settings
        };
        assert_eq!(parse(&[]).refuse_insecure(), None, "loopback is fine");
        let open = parse(&["--listen", "0.0.0.0:50051"]).refuse_insecure().unwrap();
        assert!(open.contains("TLS") && open.contains("authentication"), "{open}");
        let tls_only = ["--listen", "[::]:1", "--tls-cert", "c", "--tls-key", "k"];
        assert!(parse(&tls_only).refuse_insecure().unwrap().contains("--auth-tokens"));
        let both = [&tls_only[..], &["--auth-tokens", "t.toml"]].concat();
        assert_eq!(parse(&both).refuse_insecure(), None);
        assert_eq!(parse(&["--listen", "0.0.0.0:1", "--insecure"]).refuse_insecure(), None);
        assert!(
            Defaults::try_parse_from(["baton", "--tls-cert", "c"]).is_err(),
            "a cert needs its key"
        );
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(byte_size("512 KiB"), Ok(512 << 10));
        assert_eq!(byte_size("4096"), Ok(4096));
        for bad in ["", "0", "1MB", "MiB", "-1KiB", "99999999999999999999GiB"] {
            assert!(byte_size(bad).is_err(), "{bad}");
        }
        assert_eq!(Settings::default().stream_memory, 64 << 20);
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Defaults::try_parse_from(["baton", "--pool-size", "3", "--max-connection-age", "0"]).unwrap();
        assert_eq!(cli.settings.pool_size, 3);
        assert_eq!(cli.settings.connection_age(), None);
        assert!(Defaults::try_parse_from(["baton", "--heartbeat", "0s"]).is_err());
    }
}
