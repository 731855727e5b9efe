//! Wiring: [`Settings`] (every setting and its default), [`Application::build`] connects the store and binds the listener (so callers
//! know the port before serving); [`Application::run_until_stopped`] serves until the
//! shutdown future resolves, then drains within a bound. Tests and the binary both start
//! the server through these two functions.

pub mod admin;
mod health;
mod listener;
mod settings;
pub mod tls;

pub use settings::{ConfigError, Effective, LogFormat, Origin, Resolved, Settings};

use crate::auth::TokenStore;
use crate::auth::layer::AuthLayer;
use crate::domain::time::Clock;
use crate::faults::Faults;
use crate::grpc::CoordinatorService;
use crate::proto::{self, coordinator_server::CoordinatorServer};
use crate::service::{Coordinator, ServiceConfig};
use crate::storage::{self, Store, StoreError, StoreOptions};
use crate::telemetry::names;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;

/// How long after its streams end an aged connection is closed, whatever is still on it (a
/// long lease wait): the streams' own end comes first, with a status that says where to
/// resume.
const AGED_CLOSE_SLACK: Duration = Duration::from_secs(1);

/// What tests inject into a server besides its settings.
#[derive(Debug, Clone, Default)]
pub struct Wiring {
    /// The clock (tests advance it instead of sleeping).
    pub clock: Clock,
    /// Deliberate faults (the fault suite and its canary).
    #[doc(hidden)]
    pub faults: Faults,
}

/// Why the server could not start or run. Each renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The gRPC server failed.
    #[error("server error: {0}")]
    Serve(String),
    /// The settings cannot work (an insecure public listener, a bad tokens file …).
    #[error("{0}")]
    Config(String),
}

/// A built, bound, not yet serving baton.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    /// The admin listener, when asked for.
    admin: Option<(TcpListener, SocketAddr)>,
    coordinator: Coordinator,
    store: Arc<dyn Store>,
    shutdown: watch::Sender<bool>,
    settings: Settings,
    /// The tokens file, when calls are authenticated.
    tokens: Option<Arc<TokenStore>>,
    /// TLS on the gRPC port, when configured.
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl Application {
    /// Connects the store (running migrations) and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        Self::build_with_clock(settings, Clock::system()).await
    }

    /// [`Application::build`] with an injected clock (tests advance it instead of sleeping).
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> Result<Self, AppError> {
        Self::build_with(
            settings,
            Wiring {
                clock,
                ..Wiring::default()
            },
        )
        .await
    }

    /// [`Application::build`] with what only code can inject: a clock and deliberate faults.
    pub async fn build_with(settings: Settings, wiring: Wiring) -> Result<Self, AppError> {
        if let Some(why) = settings.refuse_insecure() {
            return Err(AppError::Config(why));
        }
        let tokens = match &settings.auth_tokens {
            Some(path) => Some(Arc::new(TokenStore::load(path).map_err(AppError::Config)?)),
            None => None,
        };
        let acceptor = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(
                tls::acceptor(&tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: settings.tls_client_ca.clone(),
                })
                .map_err(AppError::Config)?,
            ),
            _ => None,
        };
        let options = StoreOptions {
            clock: wiring.clock,
            pool_size: settings.pool_size,
            write_lanes: settings.write_lanes,
            idle_in_transaction_timeout: settings.pg_idle_in_transaction_timeout,
            lock_timeout: settings.pg_lock_timeout,
            faults: wiring.faults.clone(),
        };
        let store = storage::connect(&settings.database_url, options).await?;
        let listener = match listener::bind(settings.listen) {
            Ok(l) => l,
            Err(source) => {
                store.close().await;
                return Err(AppError::Bind {
                    addr: settings.listen,
                    source,
                });
            }
        };
        let addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: settings.listen,
            source,
        })?;
        let admin = match settings.admin_listen {
            None => None,
            Some(at) => {
                admin::recorder();
                let bound = admin::bind(at).await;
                let bound = bound.and_then(|l| l.local_addr().map(|a| (l, a)));
                match bound {
                    Ok(bound) => Some(bound),
                    Err(source) => {
                        store.close().await;
                        return Err(AppError::Bind { addr: at, source });
                    }
                }
            }
        };
        let (shutdown, drain_rx) = watch::channel(false);
        let config = ServiceConfig {
            heartbeat: settings.heartbeat,
            request_retention: settings.request_retention,
            stream_buffer: settings.stream_buffer,
            stream_memory: settings.stream_memory,
            faults: wiring.faults,
        };
        let coordinator = Coordinator::new(store.clone(), config, drain_rx);
        Ok(Self {
            listener,
            addr,
            admin,
            coordinator,
            store,
            shutdown,
            settings,
            tokens,
            acceptor,
        })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's bound address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, a)| *a)
    }

    /// The coordinator (for in-process use and tests).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// Serves until `stop` resolves, then drains: health turns NOT_SERVING (gRPC health and
    /// `/readyz`) while the server goes on serving and accepting for `drain_delay`, so
    /// proxies notice; then open streams end with UNAVAILABLE (clients resume elsewhere),
    /// health watches end, new calls are refused, in-flight unary calls finish — all within
    /// `drain`, after which remaining connections are dropped.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let Self {
            listener,
            addr,
            admin,
            coordinator,
            store,
            shutdown,
            settings,
            tokens,
            acceptor,
        } = self;
        let (reporter, _) = tonic_health::server::health_reporter();
        reporter.set_serving::<CoordinatorServer<CoordinatorService>>().await;
        let health = HealthServer::new(health::DrainingHealth::new(reporter.clone(), shutdown.subscribe()));
        // Both reflection versions: grpcurl, grpcio's client, Postman and other tools still
        // speak v1alpha only.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let serve_error = |e: tonic_reflection::server::Error| AppError::Serve(e.to_string());
        let reflection_v1 = reflection().build_v1().map_err(serve_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(serve_error)?;

        let mut drain_rx = shutdown.subscribe();
        // Whether this replica serves: the database answers and it is not draining.
        let (ready, ready_rx) = watch::channel(true);
        let ready = Arc::new(ready);
        // Raised when the drain begins (before its delay): health stops following the database.
        let (stopping, stopping_rx) = watch::channel(false);
        tokio::spawn(watch_health(
            store.clone(),
            reporter.clone(),
            ready.clone(),
            settings.health_interval,
            stopping_rx,
        ));
        tokio::spawn(housekeeping(coordinator.clone(), drain_rx.clone()));

        let mut builder = Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(settings.keepalive))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            // h2 ends a connection (GOAWAY, ENHANCE_YOUR_CALM) once more than this many streams
            // were reset by the client before the server accepted them: its defence against
            // rapid reset. Its default of 20 is met by honest clients whenever the server
            // stalls (a VM pause, a long GC, SIGSTOP): every call whose deadline passed in the
            // meantime arrives reset, and the whole connection's calls then fail. 1,024 per
            // connection still bounds the work a reset flood can cause.
            .http2_max_pending_accept_reset_streams(Some(1024))
            // What one connection may hold: its calls, and what its client may send before
            // the server reads (HTTP/2 flow control); connections are bounded by `listener`.
            .max_concurrent_streams(Some(settings.max_streams_per_connection))
            .initial_stream_window_size(Some(listener::STREAM_WINDOW))
            .initial_connection_window_size(Some(listener::CONNECTION_WINDOW))
            .http2_max_header_list_size(Some(listener::MAX_HEADER_LIST));
        if let Some(age) = settings.connection_age() {
            // At the age tonic sends GOAWAY and waits for the connection's streams; ours
            // end at age + grace (see `connection`), and the connection is closed just after.
            builder = builder
                .max_connection_age(age)
                .max_connection_age_grace(settings.max_connection_age_grace + AGED_CLOSE_SLACK);
        }
        let service = match &tokens {
            Some(tokens) => {
                tokio::spawn(reload_tokens(tokens.clone(), drain_rx.clone()));
                CoordinatorService::authenticated(coordinator.clone())
            }
            None => CoordinatorService::new(coordinator.clone()),
        };
        let auth_on = tokens.is_some();
        let auth = tokens.map(|t| AuthLayer::new(t, settings.auth_protect_all));
        let router = builder
            .layer(tower::util::option_layer(auth))
            .layer(crate::grpc::UndecodableLayer)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(CoordinatorServer::new(service));
        let tls = acceptor.is_some();
        let incoming = listener::incoming(listener, listener::limits(&settings, acceptor));
        let server_drain = async move { crate::service::raised(&mut drain_rx).await };
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, server_drain));
        tracing::info!(%addr, backend = %store.backend(), tls, auth = auth_on, "baton serving");
        if let Some((listener, admin_addr)) = admin {
            tokio::spawn(admin::serve(listener, coordinator, ready_rx, shutdown.subscribe()));
            tracing::info!(addr = %admin_addr, "admin serving");
        }

        tokio::select! {
            _ = stop => {}
            res = &mut server => {
                store.close().await;
                return match res {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(AppError::Serve(e.to_string())),
                    Err(e) => Err(AppError::Serve(e.to_string())),
                };
            }
        }
        tracing::info!(drain = ?settings.drain, delay = ?settings.drain_delay, "draining");
        let _ = stopping.send(true);
        let _ = ready.send(false);
        reporter
            .set_not_serving::<CoordinatorServer<CoordinatorService>>()
            .await;
        reporter.set_service_status("", ServingStatus::NotServing).await;
        // Serve on, accepting too, while proxies' health checks see NOT_SERVING and stop
        // sending here; the listener closing at once would fail calls still on their way.
        if !settings.drain_delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(settings.drain_delay) => {}
                res = &mut server => {
                    store.close().await;
                    return res
                        .map_err(|e| AppError::Serve(e.to_string()))?
                        .map_err(|e| AppError::Serve(e.to_string()));
                }
            }
        }
        // One flag tells stream handlers to end with UNAVAILABLE, lease waiters to stop
        // waiting, and tonic to stop accepting and finish in-flight calls.
        let _ = shutdown.send(true);
        match tokio::time::timeout(settings.drain, &mut server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error while draining"),
            Ok(_) => tracing::info!("drained"),
            Err(_) => {
                tracing::warn!("drain time exceeded; dropping remaining connections");
                server.abort();
            }
        }
        store.close().await;
        Ok(())
    }
}

/// How often the tokens file is checked for changes.
const TOKENS_RELOAD: Duration = Duration::from_secs(1);

/// Reads the tokens file again whenever it changes, until the server drains: a token
/// added, revoked or expired takes effect within [`TOKENS_RELOAD`], without a restart.
async fn reload_tokens(tokens: Arc<TokenStore>, mut drain: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = crate::service::raised(&mut drain) => return,
            _ = tokio::time::sleep(TOKENS_RELOAD) => {}
        }
        match tokens.reload_if_changed() {
            Ok(true) => {
                tracing::info!(file = %tokens.path().display(), grants = tokens.grants().len(), "tokens file reloaded")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "tokens file not reloaded; the previous version stays in force"),
        }
    }
}

/// Health follows the database: SERVING while it answers, NOT_SERVING while it does not
/// (gRPC health, and `ready` for `/readyz`).
async fn watch_health(
    store: Arc<dyn Store>,
    reporter: tonic_health::server::HealthReporter,
    ready: Arc<watch::Sender<bool>>,
    every: Duration,
    mut drain: watch::Receiver<bool>,
) {
    let mut last = true;
    loop {
        tokio::select! {
            _ = crate::service::raised(&mut drain) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ok = matches!(tokio::time::timeout(every, store.ping()).await, Ok(Ok(())));
        if ok != last && !*drain.borrow() {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::warn!(serving = ok, "database reachability changed");
            let _ = ready.send(ok);
            reporter.set_service_status("", status).await;
            reporter.set_service_status("baton.v1.Coordinator", status).await;
            last = ok;
        }
    }
}

/// How often the housekeeper looks for due entities: a state timeout fires at most this
/// long (plus its commit) after its due time on an idle server.
pub const DUE_INTERVAL: Duration = Duration::from_millis(500);
/// How often expired request outcomes are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Housekeeping, on the one replica that holds the housekeeper lock: state timeouts and
/// retention every [`DUE_INTERVAL`] (at once on start, so what came due while no replica
/// ran fires now), expired request outcomes every [`PURGE_INTERVAL`].
async fn housekeeping(coordinator: Coordinator, mut drain: watch::Receiver<bool>) {
    let mut last_purge: Option<tokio::time::Instant> = None;
    loop {
        let purge = last_purge.is_none_or(|t| t.elapsed() >= PURGE_INTERVAL);
        let ran = coordinator.housekeeping(purge).await;
        if !matches!(ran, Ok(None)) {
            let result = if ran.is_ok() { "ok" } else { "error" };
            metrics::counter!(names::HOUSEKEEPING_RUNS, "result" => result).increment(1);
        }
        match ran {
            Ok(Some(work)) => {
                if purge {
                    last_purge = Some(tokio::time::Instant::now());
                }
                let due = work.due;
                metrics::counter!(names::TIMEOUTS_FIRED).increment(due.fired);
                metrics::counter!(names::HOUSEKEEPING_PURGED, "what" => "entities").increment(due.purged);
                metrics::counter!(names::HOUSEKEEPING_PURGED, "what" => "requests").increment(work.requests_purged);
                if due.fired > 0 || due.purged > 0 {
                    tracing::info!(
                        timeouts_fired = due.fired,
                        entities_purged = due.purged,
                        "due entities handled"
                    );
                }
                if work.requests_purged > 0 {
                    tracing::info!(purged = work.requests_purged, "expired request outcomes purged");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
        }
        tokio::select! {
            _ = crate::service::raised(&mut drain) => return,
            _ = tokio::time::sleep(DUE_INTERVAL) => {}
        }
    }
}
