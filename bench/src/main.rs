//! `baton-bench`: a load generator that drives baton over gRPC and, in the same run and
//! interleaved per (scenario, clients) cell, the same work done directly against Postgres
//! and etcd, then checks that nothing was lost, duplicated or skipped. See BENCHMARKS.md.

mod checks;
mod fanout;
mod load;
mod metrics;
mod report;
mod server;
mod stats;
mod systems;

use baton::Backend;
use clap::{Parser, ValueEnum};
use load::Timing;
use serde::Serialize;
use stats::{Latency, Stats};
use std::process::ExitCode;
use std::time::Duration;
#[cfg(feature = "etcd")]
use systems::etcd;
use systems::pg;

/// The default Postgres of a spawned server and of the Postgres baseline.
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Measures a baton server's throughput, latency and correctness, beside raw Postgres and
/// etcd doing the same work in the same run (see BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(name = "baton-bench", version, about)]
pub struct BenchArgs {
    /// A running server to drive (default http://127.0.0.1:50051 unless --spawn).
    #[arg(long, env = "BATON_BENCH_TARGET", conflicts_with = "spawn")]
    target: Option<String>,
    /// Spawn `baton serve` on 127.0.0.1:0 with this backend (sqlite or postgres) instead,
    /// and kill it at the end.
    #[arg(long, env = "BATON_BENCH_SPAWN")]
    spawn: Option<Backend>,
    /// The `baton` executable to spawn (default: $BATON_BIN, else the one beside baton-bench).
    #[arg(long)]
    baton_bin: Option<std::path::PathBuf>,
    /// Database of the spawned server (default: a fresh one, dropped at the end: a new
    /// database on $DATABASE_URL's server, else on postgres://postgres@127.0.0.1:5432/test;
    /// for sqlite a new temporary file).
    #[arg(long, env = "BATON_BENCH_DATABASE_URL", requires = "spawn")]
    database_url: Option<String>,
    /// `--pool-size` passed to the spawned server.
    #[arg(long, env = "BATON_BENCH_POOL_SIZE", requires = "spawn")]
    pool_size: Option<u32>,
    /// Another argument for the spawned server (repeatable), e.g.
    /// `--server-arg=--log-level=warn`.
    #[arg(long = "server-arg", requires = "spawn", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Spawn the server without its admin listener: no metrics recorder, so the cost of
    /// metrics can be measured (round trips per call are then not measured).
    #[arg(long, requires = "spawn")]
    no_admin: bool,
    /// Export the spawned server's spans over OTLP/gRPC to a receiver in the bench that
    /// counts and drops them, so the cost of tracing can be measured.
    #[arg(long, requires = "spawn")]
    otlp_sink: bool,
    /// Pid of the --target server, for the idle-stream memory figure (read from /proc).
    #[arg(long, env = "BATON_BENCH_SERVER_PID", conflicts_with = "spawn")]
    server_pid: Option<u32>,
    /// The --target server's admin metrics (`http://HOST:PORT/metrics`, from its
    /// `--admin-listen`), for round trips per call and batch sizes.
    #[arg(long, env = "BATON_BENCH_METRICS_URL", conflicts_with = "spawn", value_parser = metrics::Endpoint::parse)]
    metrics_url: Option<metrics::Endpoint>,
    /// Scenarios to run (repeatable or comma-separated).
    #[arg(
        long = "scenario",
        env = "BATON_BENCH_SCENARIOS",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    scenarios: Vec<ScenarioArg>,
    /// Concurrent clients; each scenario runs once per count (stream-fanout: one writer).
    #[arg(long, env = "BATON_BENCH_CLIENTS", value_delimiter = ',', default_value = "1,16,64", value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: Vec<u32>,
    /// Measured time per cell.
    #[arg(long, env = "BATON_BENCH_DURATION", default_value = "10s", value_parser = positive_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each cell.
    #[arg(long, env = "BATON_BENCH_WARMUP", default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Keys (leases) and entities the random scenarios pick from.
    #[arg(long, env = "BATON_BENCH_KEYS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// Subscribers of stream-fanout.
    #[arg(long, env = "BATON_BENCH_SUBSCRIBERS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    subscribers: u32,
    /// Idle streams opened for the memory-per-stream figure (0: skip it).
    #[arg(long, env = "BATON_BENCH_IDLE_STREAMS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=200_000))]
    idle_streams: u32,
    /// Streams per HTTP/2 connection (servers allow 200 by default).
    #[arg(long, env = "BATON_BENCH_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    streams_per_connection: u32,
    /// Baselines measured in the same run (repeatable or comma-separated).
    #[arg(long = "baseline", env = "BATON_BENCH_BASELINES", value_enum, value_delimiter = ',')]
    baselines: Vec<BaselineArg>,
    /// Postgres of the postgres baseline (its tables go to schema bench_baseline, dropped first).
    #[arg(long, env = "BATON_BENCH_BASELINE_PG_URL", default_value = DEFAULT_PG_URL)]
    baseline_pg_url: String,
    /// etcd of the etcd baseline.
    #[arg(long, env = "BATON_BENCH_ETCD_ENDPOINT", default_value = "127.0.0.1:2379")]
    etcd_endpoint: String,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A scenario, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    All,
    LeaseCycle,
    Transition,
    TransitionHot,
    FencedTransition,
    Append,
    StreamFanout,
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    LeaseCycle,
    Transition,
    TransitionHot,
    FencedTransition,
    Append,
    StreamFanout,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::LeaseCycle,
        Scenario::Transition,
        Scenario::TransitionHot,
        Scenario::FencedTransition,
        Scenario::Append,
        Scenario::StreamFanout,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaseCycle => "lease-cycle",
            Scenario::Transition => "transition",
            Scenario::TransitionHot => "transition-hot",
            Scenario::FencedTransition => "fenced-transition",
            Scenario::Append => "append",
            Scenario::StreamFanout => "stream-fanout",
        }
    }

    /// Write calls in one op (a lease cycle acquires, then releases).
    pub fn writes_per_op(self) -> u64 {
        match self {
            Scenario::LeaseCycle => 2,
            _ => 1,
        }
    }

    /// How many keys or entities the scenario spreads its clients over.
    fn keys(self, keys: u32) -> usize {
        match self {
            Scenario::TransitionHot => 1,
            _ => keys as usize,
        }
    }

    /// Prefix of the scenario's entity ids or lease keys (`t-17`, `hot-0`, …).
    fn prefix(self) -> &'static str {
        match self {
            Scenario::LeaseCycle => "k",
            Scenario::Transition => "t",
            Scenario::TransitionHot => "hot",
            Scenario::FencedTransition => "f",
            Scenario::Append => "a",
            Scenario::StreamFanout => "fan",
        }
    }

    /// Whether the scenario works on entities created at setup.
    fn has_entities(self) -> bool {
        matches!(
            self,
            Scenario::Transition | Scenario::TransitionHot | Scenario::FencedTransition | Scenario::Append
        )
    }
}

/// Baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BaselineArg {
    Postgres,
    Etcd,
}

/// A measured system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Baton,
    Postgres,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Baton => "baton",
            System::Postgres => "postgres",
            System::Etcd => "etcd",
        }
    }
}

/// Append-to-delivery figures of stream-fanout.
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    pub subscribers: u32,
    /// Deliveries of events sent inside the measured window, over all subscribers.
    pub deliveries: u64,
    pub latency: Latency,
    /// Subscribers that got every seq, exactly one `final`, and then the end of the stream.
    pub complete: u32,
}

/// One measured (scenario, clients, system) cell.
#[derive(Debug, Clone)]
pub struct Cell {
    pub scenario: Scenario,
    pub clients: u32,
    pub system: System,
    pub window: Duration,
    pub stats: Stats,
    /// Failed checks; empty when every check passed.
    pub failures: Vec<String>,
    pub fanout: Option<Fanout>,
    /// Why the cell was not measured (the row shows "—").
    pub skipped: Option<String>,
    /// Calls the bench sent in the cell, warm-up and the tail included (baton cells).
    pub calls: Option<u64>,
    /// The server's own write-path counts over the cell, when its metrics were readable.
    pub server: Option<metrics::ServerCounts>,
}

impl Cell {
    fn new(scenario: Scenario, clients: u32, system: System, window: Duration) -> Self {
        Self {
            scenario,
            clients,
            system,
            window,
            stats: Stats::default(),
            failures: vec![],
            fanout: None,
            skipped: None,
            calls: None,
            server: None,
        }
    }

    /// A measured cell, checks still to add.
    fn measured(scenario: Scenario, clients: u32, system: System, plan: &Plan, stats: Stats) -> Self {
        Self {
            stats,
            ..Self::new(scenario, clients, system, plan.timing.duration)
        }
    }

    /// A row that says why nothing was measured.
    fn skipped(scenario: Scenario, clients: u32, system: System, why: impl Into<String>) -> Self {
        Self {
            skipped: Some(why.into()),
            ..Self::new(scenario, clients, system, Duration::ZERO)
        }
    }

    /// A cell that could not run: counted as a failed check.
    fn failed(scenario: Scenario, clients: u32, system: System, why: String) -> Self {
        Self {
            failures: vec![why],
            ..Self::new(scenario, clients, system, Duration::ZERO)
        }
    }
}

/// Server memory per idle open stream.
#[derive(Debug, Clone, Serialize)]
pub struct IdleStreams {
    pub streams: u32,
    pub connections: u32,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_stream: f64,
}

/// Everything one run measured.
pub struct Results {
    pub cells: Vec<Cell>,
    pub idle: Result<IdleStreams, String>,
    /// Systems that were asked for but could not be measured, with why.
    pub notes: Vec<String>,
    /// The metrics URL the baton cells were scraped at, or why they were not.
    pub metrics: Result<String, String>,
}

/// Runs the bench; exit 0 when every check passed, 1 otherwise or on a setup error.
#[tokio::main]
async fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The selected scenarios, in the order of [`Scenario::ALL`].
fn scenarios(args: &[ScenarioArg]) -> Vec<Scenario> {
    Scenario::ALL
        .into_iter()
        .filter(|s| args.iter().any(|a| a.selects(*s)))
        .collect()
}

impl ScenarioArg {
    fn selects(self, s: Scenario) -> bool {
        let one = match self {
            ScenarioArg::All => return true,
            ScenarioArg::LeaseCycle => Scenario::LeaseCycle,
            ScenarioArg::Transition => Scenario::Transition,
            ScenarioArg::TransitionHot => Scenario::TransitionHot,
            ScenarioArg::FencedTransition => Scenario::FencedTransition,
            ScenarioArg::Append => Scenario::Append,
            ScenarioArg::StreamFanout => Scenario::StreamFanout,
        };
        one == s
    }
}

/// What every system's setup and cells need to know.
pub struct Plan {
    pub scenarios: Vec<Scenario>,
    pub keys: u32,
    pub timing: Timing,
    pub subscribers: u32,
    pub streams_per_connection: u32,
}

async fn run(args: BenchArgs) -> Result<ExitCode, String> {
    // Each count once, in the order given.
    let mut clients: Vec<u32> = vec![];
    for &n in &args.clients {
        if !clients.contains(&n) {
            clients.push(n);
        }
    }
    let plan = Plan {
        scenarios: scenarios(&args.scenarios),
        keys: args.keys,
        timing: Timing {
            warmup: args.warmup,
            duration: args.duration,
        },
        subscribers: args.subscribers,
        streams_per_connection: args.streams_per_connection,
    };
    let wants = |b: BaselineArg| args.baselines.contains(&b);
    #[cfg(not(feature = "etcd"))]
    if wants(BaselineArg::Etcd) {
        return Err("--baseline etcd needs a build with the etcd feature: install protoc \
                    (apt-get install protobuf-compiler) and rebuild with `cargo build --release --features etcd`"
            .into());
    }

    let sink = if args.otlp_sink {
        Some(server::otlp_sink().await?)
    } else {
        None
    };
    let mut options = server::Options {
        admin: !args.no_admin,
        args: args.server_args.clone(),
        env: vec![],
    };
    if let Some((addr, _)) = &sink {
        options.env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ];
    }
    let server = match args.spawn {
        Some(backend) => Some(
            server::Spawned::start(
                args.baton_bin.clone(),
                backend,
                args.database_url.clone(),
                args.pool_size,
                options,
            )
            .await?,
        ),
        None => None,
    };
    let target = match (&server, &args.target) {
        (Some(s), _) => s.url(),
        (None, Some(t)) => t.clone(),
        (None, None) => "http://127.0.0.1:50051".into(),
    };
    let server_pid = server.as_ref().map(|s| s.pid()).or(args.server_pid);
    let mut notes = vec![];
    let metrics = metrics_endpoint(server.as_ref(), args.metrics_url.clone()).await;
    if let Err(e) = &metrics {
        notes.push(format!("round trips per call and batch sizes not measured: {e}"));
    }

    let mut baton = systems::baton::Baton::setup(&target, &plan, metrics.clone().ok(), server_pid)
        .await
        .map_err(|e| format!("baton at {target}: {e}"))?;
    let mut pg = if wants(BaselineArg::Postgres) {
        Some(
            pg::Pg::setup(&args.baseline_pg_url, &plan)
                .await
                .map_err(|e| format!("postgres baseline at {}: {e}", args.baseline_pg_url))?,
        )
    } else {
        None
    };
    #[cfg(feature = "etcd")]
    let mut etcd = if wants(BaselineArg::Etcd) {
        match etcd::Etcd::setup(&args.etcd_endpoint, &plan).await {
            Ok(e) => Some(e),
            Err(e) => {
                let note = format!(
                    "etcd baseline skipped: etcd at {} is not usable: {e}",
                    args.etcd_endpoint
                );
                eprintln!("{note}");
                notes.push(note);
                None
            }
        }
    } else {
        None
    };

    let mut cells = vec![];
    for &scenario in &plan.scenarios {
        // One writer feeds stream-fanout; the client counts do not apply to it.
        let counts = if scenario == Scenario::StreamFanout {
            vec![1]
        } else {
            clients.clone()
        };
        for &n in &counts {
            progress(scenario, n, System::Baton);
            cells.push(baton.cell(scenario, n, &plan).await);
            if let Some(pg) = pg.as_mut() {
                progress(scenario, n, System::Postgres);
                cells.push(pg.cell(scenario, n, &plan).await);
            }
            #[cfg(feature = "etcd")]
            if let Some(etcd) = etcd.as_mut() {
                progress(scenario, n, System::Etcd);
                cells.push(etcd.cell(scenario, n, &plan).await);
            }
        }
    }
    let idle = if plan.scenarios.contains(&Scenario::StreamFanout) && args.idle_streams > 0 {
        match server_pid {
            Some(pid) => baton.idle_streams(pid, args.idle_streams, &plan).await,
            None => Err("needs the server's pid: use --spawn or --server-pid".into()),
        }
    } else {
        Err("not measured (stream-fanout not selected or --idle-streams 0)".into())
    };
    notes.extend(baton.close().await);
    if let Some(pg) = pg {
        pg.close().await;
    }
    if let Some(s) = server {
        s.stop();
    }
    if let Some((_, spans)) = &sink {
        notes.push(format!(
            "the server exported {} spans to the bench's OTLP sink",
            spans.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }

    let results = Results {
        cells,
        idle,
        notes,
        metrics: metrics.map(|m| m.url()),
    };
    let ok = results.cells.iter().all(|c| c.failures.is_empty());
    if args.json {
        println!("{}", report::json(&results, &target, &plan));
    } else {
        print!("{}", report::table(&results, &plan));
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The server's metrics endpoint, checked with one scrape: the spawned server's admin
/// address, or `--metrics-url`; why there is none otherwise.
async fn metrics_endpoint(
    server: Option<&server::Spawned>,
    url: Option<metrics::Endpoint>,
) -> Result<metrics::Endpoint, String> {
    let endpoint = match (server, url) {
        (Some(s), _) => metrics::Endpoint::parse(&format!("http://{}/metrics", s.admin_addr()?))?,
        (None, Some(url)) => url,
        (None, None) => return Err("no --metrics-url for the --target server".into()),
    };
    endpoint.scrape().await?;
    Ok(endpoint)
}

/// One line on stderr per cell, so a long run shows where it is.
fn progress(scenario: Scenario, clients: u32, system: System) {
    eprintln!(
        "bench: {} with {clients} client(s) on {}",
        scenario.name(),
        system.name()
    );
}
