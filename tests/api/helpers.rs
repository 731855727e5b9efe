//! Test harness: a real server on 127.0.0.1:0, started through the same `Application`
//! the binary uses, on a fresh database per test (a new Postgres database, or a new SQLite
//! file), talked to over real gRPC. Postgres tests never skip: without a reachable server
//! they fail and say what to install.

pub use baton::Backend;
use baton::app::{Application, Settings, Wiring};
use baton::domain::machine::MachineSpec;
use baton::domain::time::Clock;
use baton::process::TempDatabase;
use baton::proto::coordinator_client::CoordinatorClient;
use baton::proto::{self};
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A generated client.
pub type Client = CoordinatorClient<Channel>;

/// Runs `async fn name(backend: Backend)` as one test per backend, `name::sqlite` and
/// `name::postgres`: `both_backends!(name, …);`. Tests that only make sense on Postgres
/// (several replicas, LISTEN/NOTIFY) are declared `both_backends!(postgres_only: name, …);`
/// and get only `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    (postgres_only: $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )+};
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info,baton=debug")
                .with_test_writer()
                .try_init();
        }
    });
}

/// A fresh database, dropped (Postgres) or deleted (SQLite) when the test ends. Postgres
/// tests never skip: without a reachable server they fail and say what to install.
pub struct TestDb {
    pub url: String,
    _db: TempDatabase,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        init_logging();
        let db = TempDatabase::new(backend)
            .await
            .unwrap_or_else(|e| panic!("{backend} tests: {e}"));
        Self {
            url: db.url().to_string(),
            _db: db,
        }
    }
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub clock: Clock,
    pub coordinator: baton::service::Coordinator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), baton::app::AppError>>>,
}

/// Settings for a test server on `url`.
pub fn test_settings(url: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url.to_string(),
        drain: Duration::from_secs(5),
        heartbeat: Duration::from_secs(15),
        pool_size: 8,
        ..Settings::default()
    }
}

impl TestApp {
    /// Starts a server on `url` with these settings and clock.
    pub async fn start_with(settings: Settings, clock: Clock) -> Self {
        Self::start_wired(
            settings,
            Wiring {
                clock,
                ..Wiring::default()
            },
        )
        .await
    }

    /// Starts a server with injected wiring (a clock, deliberate faults).
    pub async fn start_wired(settings: Settings, wiring: Wiring) -> Self {
        let clock = wiring.clock.clone();
        let app = Application::build_with(settings, wiring).await.expect("server builds");
        let addr = app.local_addr();
        let coordinator = app.coordinator().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            clock,
            coordinator,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a server on `db` with default test settings.
    pub async fn start(db: &TestDb, clock: Clock) -> Self {
        Self::start_with(test_settings(&db.url), clock).await
    }

    /// A new client on its own HTTP/2 connection.
    pub async fn client(&self) -> CoordinatorClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to test server");
        CoordinatorClient::new(channel)
    }

    /// Graceful shutdown; returns what `run_until_stopped` returned.
    pub async fn stop(mut self) -> Result<(), baton::app::AppError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().unwrap().await.expect("server task")
    }

    /// Stops without waiting: the server task is aborted, which drops the drain flag, so
    /// streams end with UNAVAILABLE. A real SIGKILL is `server::i8_resume_after_sigkill`.
    pub fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A fresh Postgres database and two replicas on it sharing one clock, machines of
/// examples/machines.toml defined in `ns`.
pub async fn spawn_two_replicas() -> (TestDb, TestApp, TestApp) {
    let db = TestDb::new(Backend::Postgres).await;
    let clock = Clock::system();
    let a = TestApp::start(&db, clock.clone()).await;
    let b = TestApp::start(&db, clock).await;
    define_examples(&a, NS).await;
    (db, a, b)
}

/// A fresh database and one server on it, machines of examples/machines.toml defined in `ns`.
pub async fn spawn_app(backend: Backend) -> (TestDb, TestApp) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(&db, Clock::system()).await;
    define_examples(&app, NS).await;
    (db, app)
}

/// The namespace tests use.
pub const NS: &str = "test";

/// Defines every machine of examples/machines.toml in `ns`.
pub async fn define_examples(app: &TestApp, ns: &str) {
    define_examples_with(&mut app.client().await, ns).await
}

/// The machines of examples/machines.toml (a `[[machine]]` array, as `baton machine apply`
/// reads it).
pub fn example_machines() -> Vec<MachineSpec> {
    #[derive(serde::Deserialize)]
    struct File {
        machine: Vec<MachineSpec>,
    }
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/machines.toml")).unwrap();
    toml::from_str::<File>(&text)
        .expect("examples/machines.toml parses")
        .machine
}

/// [`define_examples`] through an existing client (e.g. one talking to a `baton` process).
pub async fn define_examples_with(c: &mut Client, ns: &str) {
    for spec in example_machines() {
        c.define_machine(proto::DefineMachineRequest {
            namespace: ns.into(),
            spec: Some(baton::grpc::convert::spec_to_proto(&spec)),
        })
        .await
        .expect("example machine is valid");
    }
}

pub fn secs(s: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s as i64,
        nanos: 0,
    })
}

/// The ErrorInfo reason of a status ("" when none).
pub fn reason(s: &Status) -> String {
    s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// One ErrorInfo metadata value.
pub fn meta(s: &Status, key: &str) -> Option<String> {
    s.get_details_error_info().and_then(|i| i.metadata.get(key).cloned())
}

/// Asserts code and reason, returning the status for more checks.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, why: &str) -> Status {
    let s = r.expect_err("expected an error");
    assert_eq!((s.code(), reason(&s).as_str()), (code, why), "{s:?}");
    s
}

/// Acquires a lease (wait 0), panicking on errors.
pub async fn acquire(
    c: &mut CoordinatorClient<Channel>,
    key: &str,
    holder: &str,
    ttl: u64,
) -> proto::AcquireLeaseResponse {
    c.acquire_lease(proto::AcquireLeaseRequest {
        namespace: NS.into(),
        key: key.into(),
        holder: holder.into(),
        ttl: secs(ttl),
        wait: None,
        request_id: String::new(),
    })
    .await
    .expect("acquire")
    .into_inner()
}

/// Creates an entity of `kind` with id `id`.
pub async fn create(c: &mut CoordinatorClient<Channel>, kind: &str, id: &str) -> proto::Entity {
    c.create_entity(proto::CreateEntityRequest {
        namespace: NS.into(),
        kind: kind.into(),
        id: id.into(),
        ..Default::default()
    })
    .await
    .expect("create")
    .into_inner()
    .entity
    .unwrap()
}

/// Reads one entity, panicking on errors.
pub async fn get_entity(c: &mut Client, id: &str) -> proto::Entity {
    c.get_entity(proto::GetEntityRequest {
        namespace: NS.into(),
        id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("get {id}: {e:?}"))
    .into_inner()
    .entity
    .unwrap()
}

/// A transition request with only the essentials.
pub fn tr(id: &str, name: &str) -> proto::TransitionRequest {
    proto::TransitionRequest {
        namespace: NS.into(),
        entity_id: id.into(),
        transition: name.into(),
        ..Default::default()
    }
}

/// Applies a transition, panicking on errors.
pub async fn transition(c: &mut CoordinatorClient<Channel>, id: &str, name: &str) -> proto::TransitionResponse {
    c.transition(tr(id, name))
        .await
        .unwrap_or_else(|e| panic!("{name} on {id}: {e:?}"))
        .into_inner()
}

/// An event input.
pub fn ev(t: &str, payload: &str) -> proto::EventInput {
    proto::EventInput {
        r#type: t.into(),
        payload: payload.as_bytes().to_vec(),
        content_type: "text/plain".into(),
    }
}

/// Appends events, returning the response or the status.
pub async fn append(
    c: &mut CoordinatorClient<Channel>,
    id: &str,
    events: Vec<proto::EventInput>,
) -> Result<proto::AppendEventsResponse, Status> {
    c.append_events(proto::AppendEventsRequest {
        namespace: NS.into(),
        entity_id: id.into(),
        events,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// The whole stored tape, via StreamEvents from 0 (the entity must be sealed).
pub async fn read_tape(c: &mut CoordinatorClient<Channel>, id: &str) -> Vec<proto::Event> {
    let (events, end) = collect_stream(c, id, 0).await;
    end.expect("stream ends OK");
    events
}

/// Opens a stream of `id`'s events after `after`, panicking on errors.
pub async fn open_stream(c: &mut Client, id: &str, after: u64) -> tonic::Streaming<proto::StreamEventsResponse> {
    c.stream_events(proto::StreamEventsRequest {
        namespace: NS.into(),
        entity_id: id.into(),
        after_seq: after,
    })
    .await
    .unwrap_or_else(|e| panic!("stream {id}: {e:?}"))
    .into_inner()
}

/// Reads a stream to its end: the events, and how it ended (Ok or the status).
pub async fn collect_stream(c: &mut Client, id: &str, after: u64) -> (Vec<proto::Event>, Result<(), Status>) {
    collect_stream_reporting(c, id, after, None).await
}

/// [`collect_stream`], publishing the highest seq received so far to `progress` (tests
/// wait on it instead of sleeping).
pub async fn collect_stream_reporting(
    c: &mut Client,
    id: &str,
    after: u64,
    progress: Option<tokio::sync::watch::Sender<u64>>,
) -> (Vec<proto::Event>, Result<(), Status>) {
    let request = proto::StreamEventsRequest {
        namespace: NS.into(),
        entity_id: id.into(),
        after_seq: after,
    };
    let mut stream = match c.stream_events(request).await {
        Ok(s) => s.into_inner(),
        Err(s) => return (vec![], Err(s)),
    };
    let mut events = vec![];
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if let Some(proto::stream_events_response::Item::Event(e)) = m.item {
                    if let Some(p) = &progress {
                        let _ = p.send(e.seq);
                    }
                    events.push(e);
                }
            }
            Ok(None) => return (events, Ok(())),
            Err(s) => return (events, Err(s)),
        }
    }
}

/// Asserts a complete tape: seqs after..=final with no gaps, exactly one `final`, last.
#[track_caller]
pub fn assert_complete(events: &[proto::Event], after: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, after + 1 + i as u64, "gap or duplicate at index {i}");
    }
    assert_eq!(
        events.iter().filter(|e| e.r#type == "final").count(),
        1,
        "exactly one final"
    );
    assert_eq!(events.last().map(|e| e.r#type.as_str()), Some("final"), "final is last");
}
