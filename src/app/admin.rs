//! The admin HTTP listener, off by default (`--admin-listen`): `GET /metrics` in the
//! Prometheus text format. It serves operators and the bench, never clients: keep it on
//! loopback or a private network.

use crate::telemetry::names;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
            .expect("static buckets are valid");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (an embedder's): render ours, empty.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin endpoints until `drain` is raised.
pub async fn serve(listener: TcpListener, mut drain: watch::Receiver<bool>) {
    let handle = recorder().clone();
    let app = Router::new().route("/metrics", get(move || std::future::ready(handle.render())));
    let stop = async move { crate::service::raised(&mut drain).await };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::warn!(error = %e, "admin listener failed");
    }
}
