//! Requests tonic cannot decode — invalid UTF-8 in a string field, malformed protobuf, an
//! empty body, a broken frame — are refused by tonic before any handler runs, as a bare
//! `INTERNAL`. They are the caller's fault: this layer turns them into `INVALID_ARGUMENT`
//! with an ErrorInfo like every other refusal, naming the field when protobuf did.
//!
//! baton's own statuses always carry an ErrorInfo (`status.rs`), so a response whose
//! headers say `INTERNAL` without details is one tonic made from the request. Health and
//! reflection keep tonic's behaviour: only `baton.v1.Coordinator` calls are looked at.

use futures::future::BoxFuture;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

/// The path prefix of baton's own calls.
const PREFIX: &str = "/baton.v1.Coordinator/";

/// Wraps a server's services in [`Undecodable`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UndecodableLayer;

impl<S> Layer<S> for UndecodableLayer {
    type Service = Undecodable<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Undecodable { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Undecodable<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Undecodable<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let ours = request.uri().path().starts_with(PREFIX);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if !ours || response.headers().contains_key("grpc-status-details-bin") {
                return Ok(response);
            }
            match tonic::Status::from_header_map(response.headers()) {
                Some(s) if s.code() == Code::Internal => Ok(super::status::undecodable(s.message()).into_http()),
                _ => Ok(response),
            }
        })
    }
}

/// The request field a protobuf decode error names, as a dotted path (`events.type`):
/// prost writes its stack innermost first, `Message.field: ` each, before the description.
pub(crate) fn decode_error_field(message: &str) -> Option<String> {
    let stack = message.strip_prefix("failed to decode Protobuf message: ")?;
    let mut fields: Vec<&str> = stack
        .split(": ")
        .map_while(|part| {
            let (msg, field) = part.split_once('.')?;
            let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (ident(msg) && ident(field.trim_start_matches("r#"))).then(|| field.trim_start_matches("r#"))
        })
        .collect();
    fields.reverse();
    (!fields.is_empty()).then(|| fields.join("."))
}

#[cfg(test)]
mod tests {
    use super::decode_error_field;

    #[test]
    fn the_field_of_a_decode_error() {
        let nested = "failed to decode Protobuf message: EventInput.r#type: AppendEventsRequest.events: invalid string value: data is not UTF-8 encoded";
        assert_eq!(decode_error_field(nested).as_deref(), Some("events.type"));
        let top =
            "failed to decode Protobuf message: GetEntityRequest.id: invalid string value: data is not UTF-8 encoded";
        assert_eq!(decode_error_field(top).as_deref(), Some("id"));
        assert_eq!(
            decode_error_field("failed to decode Protobuf message: invalid wire type value: 7"),
            None
        );
        assert_eq!(decode_error_field("Missing request message."), None);
    }
}
