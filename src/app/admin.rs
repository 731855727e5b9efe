//! The admin HTTP listener, off by default (`--admin-listen`): `GET /metrics` in the
//! Prometheus text format, and `GET /healthz` (the process is up) and `GET /readyz` (it
//! serves: the database answers and it is not draining) for proxies that cannot speak gRPC
//! health. It serves operators, proxies and the bench, never clients: keep it on loopback or
//! a private network.

use crate::service::Coordinator;
use crate::telemetry::names;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Latency buckets of every `_seconds` histogram: 100 µs to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's Prometheus recorder. Metrics are process-wide (the `metrics` facade has one
/// recorder), so every server of a process shares it; installed on first use.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(names::WRITE_BATCH_SIZE.into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            )
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS))
            .expect("static buckets are valid");
        match builder.install_recorder() {
            Ok(handle) => {
                crate::telemetry::describe();
                handle
            }
            // Another recorder is installed (an embedder's): render ours, empty.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Sets the gauges that are read off the replica's state rather than counted as things
/// happen: connections, streams, lease waiters.
fn sample(coordinator: &Coordinator) {
    let connections = coordinator.store().connections();
    let in_use = connections.in_use.min(connections.open);
    metrics::gauge!(names::DB_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(names::DB_CONNECTIONS, "state" => "idle").set((connections.open - in_use) as f64);
    let hub = coordinator.hub();
    metrics::gauge!(names::STREAMS_OPEN).set(hub.tape_subscribers() as f64);
    metrics::gauge!(names::STREAM_ENTITIES).set(hub.subscribed_tapes() as f64);
    metrics::gauge!(names::LEASE_WAITERS).set(hub.waiting_for_leases() as f64);
}

/// Serves the admin endpoints until `drain` is raised. `ready` is whether the replica
/// serves (database reachable, not draining).
pub async fn serve(
    listener: TcpListener,
    coordinator: Coordinator,
    ready: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) {
    let handle = recorder().clone();
    let metrics = move || {
        sample(&coordinator);
        std::future::ready(handle.render())
    };
    let readyz = move || {
        let answer = if *ready.borrow() {
            (StatusCode::OK, "ready\n")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        };
        std::future::ready(answer)
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route("/readyz", get(readyz));
    let stop = async move { crate::service::raised(&mut drain).await };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::warn!(error = %e, "admin listener failed");
    }
}
