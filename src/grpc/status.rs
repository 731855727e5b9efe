//! The one mapping from service errors to gRPC statuses with `google.rpc.ErrorInfo`
//! (domain "baton", a stable reason, metadata a client can act on).

use crate::domain::DomainError;
use crate::service::Error;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The error domain in every ErrorInfo.
pub const DOMAIN: &str = "baton";

/// Longest message a status carries, in bytes. Messages quote at most a short prefix of a
/// request value (`domain::error::quote`); this bound is the net under that rule, so trailers
/// stay far below what default clients accept (the message travels twice: in `grpc-message`
/// and in the details).
const MAX_MESSAGE: usize = 1024;
/// Longest ErrorInfo metadata value, in bytes.
const MAX_META_VALUE: usize = 512;

/// `s` cut on a character boundary to at most `max` bytes, marked `…` when cut.
fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        s.truncate(s.floor_char_boundary(max));
        s.push('…');
    }
    s
}

fn status(code: Code, reason: &str, message: String, meta: &[(&str, String)]) -> Status {
    let metadata: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), bounded(v.clone(), MAX_META_VALUE)))
        .collect();
    Status::with_error_details(
        code,
        bounded(message, MAX_MESSAGE),
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

/// A request tonic could not decode (see `undecodable.rs`): `INVALID_ARGUMENT`, naming the
/// field when protobuf did (`request` otherwise).
pub(crate) fn undecodable(detail: &str) -> Status {
    let field = super::undecodable::decode_error_field(detail).unwrap_or_else(|| "request".into());
    status(
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        format!("undecodable request: {detail}"),
        &[("field", field)],
    )
}

/// `PERMISSION_DENIED` for a caller whose grant does not cover a call: ErrorInfo reason
/// `PERMISSION_DENIED`, metadata `namespace` (and `role` needed, for a role too low).
pub fn denied(d: crate::auth::Denied) -> Status {
    use crate::auth::Denied;
    let msg = d.to_string();
    match d {
        Denied::Namespace { namespace, .. } => status(
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            msg,
            &[("namespace", namespace)],
        ),
        Denied::Role { namespace, needs, .. } => status(
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            msg,
            &[("namespace", namespace), ("needs_role", needs.to_string())],
        ),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Rule(d) => match d {
                DomainError::InvalidArgument { field, .. } => {
                    status(Code::InvalidArgument, "INVALID_ARGUMENT", msg, &[("field", field)])
                }
                DomainError::InvalidTransition {
                    transition,
                    current_state,
                    version,
                    allowed_from,
                    ..
                } => status(
                    Code::FailedPrecondition,
                    "INVALID_TRANSITION",
                    msg,
                    &[
                        ("transition", transition),
                        ("current_state", current_state),
                        ("version", version.to_string()),
                        ("allowed_from", allowed_from.join(",")),
                    ],
                ),
                DomainError::VersionMismatch {
                    expected,
                    version,
                    current_state,
                } => status(
                    Code::Aborted,
                    "VERSION_MISMATCH",
                    msg,
                    &[
                        ("expected_version", expected.to_string()),
                        ("version", version.to_string()),
                        ("current_state", current_state),
                    ],
                ),
                DomainError::LeaseLost {
                    key,
                    token,
                    current_token,
                    current_holder,
                } => {
                    let mut meta = vec![("key", key), ("token", token.to_string())];
                    if let Some(t) = current_token {
                        meta.push(("current_token", t.to_string()));
                    }
                    if let Some(h) = current_holder {
                        meta.push(("current_holder", h));
                    }
                    status(Code::FailedPrecondition, "LEASE_LOST", msg, &meta)
                }
                DomainError::TapeSealed { final_seq } => status(
                    Code::FailedPrecondition,
                    "TAPE_SEALED",
                    msg,
                    &[("final_seq", final_seq.to_string())],
                ),
                DomainError::FieldNotAllowed {
                    field,
                    state,
                    allowed_in,
                } => status(
                    Code::InvalidArgument,
                    "FIELD_NOT_ALLOWED",
                    msg,
                    &[("field", field), ("state", state), ("allowed_in", allowed_in.join(","))],
                ),
                DomainError::NotFound { what, name } => status(
                    Code::NotFound,
                    &format!("{}_NOT_FOUND", what.to_uppercase()),
                    msg,
                    &[("name", name)],
                ),
                DomainError::AlreadyExists { what, name } => status(
                    Code::AlreadyExists,
                    &format!("{}_EXISTS", what.to_uppercase()),
                    msg,
                    &[("name", name)],
                ),
                DomainError::EntityActive {
                    id,
                    current_state,
                    version,
                } => status(
                    Code::FailedPrecondition,
                    "ENTITY_ACTIVE",
                    msg,
                    &[
                        ("id", id),
                        ("current_state", current_state),
                        ("version", version.to_string()),
                    ],
                ),
                DomainError::StateInUse { kind, state } => status(
                    Code::FailedPrecondition,
                    "STATE_IN_USE",
                    msg,
                    &[("kind", kind), ("state", state)],
                ),
                DomainError::RequestIdReused { request_id, method } => status(
                    Code::InvalidArgument,
                    "REQUEST_ID_REUSED",
                    msg,
                    &[("request_id", request_id), ("first_call", method)],
                ),
                DomainError::OutOfRange { earliest_seq } => status(
                    Code::OutOfRange,
                    "CURSOR_EXPIRED",
                    msg,
                    &[("earliest_seq", earliest_seq.to_string())],
                ),
            },
            Error::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                status(
                    Code::Unavailable,
                    "DATABASE_UNAVAILABLE",
                    "database unavailable; retry later".into(),
                    &[],
                )
            }
            Error::ShuttingDown { last_seq } => {
                let meta: Vec<(&str, String)> = last_seq.map(|s| ("last_seq", s.to_string())).into_iter().collect();
                status(Code::Unavailable, "SHUTTING_DOWN", msg, &meta)
            }
            // The reason clients already resume on (the Python and TypeScript clients retry
            // SHUTTING_DOWN); `cause` tells a connection recycled from a replica draining.
            Error::ConnectionAged { last_seq } => status(
                Code::Unavailable,
                "SHUTTING_DOWN",
                msg,
                &[("last_seq", last_seq.to_string()), ("cause", "CONNECTION_AGED".into())],
            ),
            Error::StreamBehind { last_seq } => status(
                Code::ResourceExhausted,
                "STREAM_BEHIND",
                msg,
                &[("last_seq", last_seq.to_string())],
            ),
            Error::Conflict(_) => status(Code::Aborted, "MACHINE_CHANGED", msg, &[]),
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                status(
                    Code::Internal,
                    "INTERNAL",
                    "internal error; see the server log".into(),
                    &[],
                )
            }
        }
    }
}
