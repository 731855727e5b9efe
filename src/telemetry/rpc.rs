//! One RPC as it is observed: started by the gRPC handler, finished with its code (a stream
//! when it ends; a call whose caller went away, on drop, as CANCELLED).

use super::names;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tonic::Code;
use tonic::metadata::{KeyRef, MetadataMap};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once spans are exported: spans cost nothing when nobody reads them.
static TRACES: AtomicBool = AtomicBool::new(false);

pub(super) fn enable_traces() {
    TRACES.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (the OTLP exporter is configured).
pub fn traces_on() -> bool {
    TRACES.load(Ordering::Relaxed)
}

/// The canonical name of a gRPC code (`OK`, `UNAVAILABLE`, …), as metrics and logs use it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// gRPC metadata as OpenTelemetry's propagator reads it.
struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Longest value of a request field a log line or span carries.
const LOGGED_MAX: usize = 128;

/// A request's value as a log line may carry it: the request is not validated yet, so at
/// most [`LOGGED_MAX`] characters, control characters (a forged log line) as `?`.
fn loggable(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(LOGGED_MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().nth(LOGGED_MAX).is_some() {
        out.push('…');
    }
    out
}

/// What the request log line says besides method, code and latency; kept only when the
/// line will be written.
struct Logged {
    namespace: String,
    request_id: String,
}

/// One RPC in flight.
pub struct Call {
    method: &'static str,
    started: Instant,
    span: Span,
    logged: Option<Logged>,
    finished: bool,
}

impl Call {
    /// Starts observing `method` (`AcquireLease`, …) of a request in `namespace`. The
    /// request id is the call's own, else the `x-request-id` a proxy may have set.
    pub fn start(method: &'static str, metadata: &MetadataMap, namespace: &str, request_id: &str) -> Self {
        let span = if traces_on() {
            let span = tracing::info_span!(
                "rpc",
                otel.name = %format_args!("baton.v1.Coordinator/{method}"),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = "baton.v1.Coordinator",
                rpc.method = method,
                namespace = loggable(namespace),
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let parent = TraceContextPropagator::new().extract(&Metadata(metadata));
            let _ = span.set_parent(parent);
            span
        } else {
            Span::none()
        };
        let logged = tracing::enabled!(target: "baton::request", tracing::Level::INFO).then(|| Logged {
            namespace: loggable(namespace),
            request_id: loggable(if request_id.is_empty() {
                metadata
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
            } else {
                request_id
            }),
        });
        Self {
            method,
            started: Instant::now(),
            span,
            logged,
            finished: false,
        }
    }

    /// The RPC's span (disabled when spans are not exported).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Records the RPC's end: its counter and latency, its span's code, its log line.
    pub fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let took = self.started.elapsed();
        let code_name = code_name(code);
        let labels = [("method", self.method), ("code", code_name)];
        metrics::counter!(names::RPC_REQUESTS, &labels).increment(1);
        metrics::histogram!(names::RPC_DURATION, &labels).record(took.as_secs_f64());
        if !self.span.is_disabled() {
            self.span.record("rpc.grpc.status_code", code as i64);
            if !matches!(code, Code::Ok) {
                self.span.record("otel.status_code", "ERROR");
            }
        }
        if let Some(l) = &self.logged {
            tracing::info!(
                target: "baton::request",
                method = self.method,
                namespace = l.namespace,
                code = code_name,
                latency_ms = took.as_secs_f64() * 1000.0,
                request_id = l.request_id,
                "request"
            );
        }
    }
}

impl Drop for Call {
    /// A call dropped before it finished: its caller went away (tonic drops the handler).
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_values_are_logged_short_and_on_one_line() {
        assert_eq!(loggable("prod"), "prod");
        assert_eq!(loggable("a\nINFO forged"), "a?INFO forged");
        let long = loggable(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), LOGGED_MAX + 1);
    }
}
