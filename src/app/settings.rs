//! Everything `baton serve` can be told, with its defaults — written once, here. The same
//! type is the command line (each setting a flag and a `BATON_*` variable) and what tests
//! and embedders pass to [`crate::app::Application::build`].

use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of one baton replica.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Settings {
    /// Address to serve gRPC on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP listener (GET /metrics); off unless given. Keep it on
    /// loopback or a private network: it is for operators, not clients.
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
    /// Longest graceful shutdown on SIGINT/SIGTERM.
    #[arg(long, env = "BATON_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Heartbeat interval of idle event streams.
    #[arg(long, env = "BATON_HEARTBEAT", default_value = "15s", value_parser = positive)]
    pub heartbeat: Duration,
    /// Close HTTP/2 connections after this age so a load balancer can rebalance (0 = never).
    #[arg(long, env = "BATON_MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
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
    /// The HTTP/2 connection age limit, `None` for "never".
    pub fn connection_age(&self) -> Option<Duration> {
        (!self.max_connection_age.is_zero()).then_some(self.max_connection_age)
    }
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
