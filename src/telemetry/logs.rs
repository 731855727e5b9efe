//! Logs to stderr (text or JSON; colour only on a terminal) and, when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, spans
//! exported over OTLP/gRPC.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The process's logging and tracing; [`Telemetry::shutdown`] flushes the spans not yet
/// exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The first of these variables that is set and not empty.
fn env(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| (n.to_string(), v))
    })
}

impl Telemetry {
    /// Installs the global subscriber: logs at `level` (an EnvFilter directive) as text or
    /// JSON, and the OTLP span exporter when its endpoint variable is set (the exporter
    /// reads the other `OTEL_EXPORTER_OTLP_*` variables itself). Must run inside the tokio
    /// runtime (the exporter's channel lives there).
    pub fn init(json: bool, level: &str) -> Result<Self, String> {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("bad --log-level {level:?}: {e}"))?;
        // Colour codes only where a person reads them: never in a file or a pipe.
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        let fmt = if json {
            fmt.json().with_filter(filter).boxed()
        } else {
            fmt.with_filter(filter).boxed()
        };
        let provider = Self::provider()?;
        let otel = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("baton"))
                .with_filter(Targets::new().with_target("baton", tracing::Level::INFO))
        });
        tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init()
            .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
        if provider.is_some() {
            super::rpc::enable_traces();
        }
        Ok(Self { provider })
    }

    fn provider() -> Result<Option<SdkTracerProvider>, String> {
        if env(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]).is_none() {
            return Ok(None);
        }
        if let Some((name, protocol)) = env(&["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"])
            && protocol != "grpc"
        {
            return Err(format!(
                "{name}={protocol:?}: baton exports traces over OTLP/gRPC only; set it to \"grpc\" or unset it"
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if env(&["OTEL_SERVICE_NAME"]).is_none() {
            resource = resource.with_service_name("baton");
        }
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        ))
    }

    /// Exports the spans still queued (a bounded wait), then stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The batch processor's thread blocks; keep it off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.shutdown() {
                    eprintln!("warning: exporting the last spans failed: {e}");
                }
            })
            .await;
        }
    }
}
