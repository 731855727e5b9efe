//! A client command that failed: what went wrong, as one line on stderr (`error: …`) or,
//! when JSON output was asked for, as one JSON object there; and the exit code it ends with.

use crate::output::Output;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use tonic::Code;
use tonic_types::StatusExt;

/// The ErrorInfo domain of baton's own answers.
const BATON: &str = "baton";

/// Why a client command failed.
#[derive(Debug)]
pub struct Failure {
    /// The server's code; for a local failure the nearest one (an unreachable server is
    /// `Unavailable`, a usage error `InvalidArgument`, anything else `Unknown`), so JSON
    /// errors have one shape.
    code: Code,
    /// The ErrorInfo reason ("" when the status had none, and for local failures).
    reason: String,
    /// The ErrorInfo domain: `baton` for baton's answers.
    domain: String,
    message: String,
    metadata: BTreeMap<String, String>,
    /// What the command was doing when it failed, e.g. `machine task`.
    context: Option<String>,
    source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A gRPC status: the server's answer, or the transport's.
    Status,
    /// The server could not be reached.
    Unreachable,
    /// The command line cannot work (exit 2, like clap's own usage errors).
    Usage,
    /// Anything else decided on this side (an unreadable file, …).
    Local,
}

/// Exit code of a usage error (clap uses the same).
const USAGE: u8 = 2;

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let info = status.get_details_error_info();
        let (reason, domain, metadata) = match info {
            Some(i) => (i.reason, i.domain, i.metadata.into_iter().collect()),
            None => Default::default(),
        };
        Failure {
            code: status.code(),
            reason,
            domain,
            message: status.message().to_string(),
            metadata,
            context: None,
            source: Source::Status,
        }
    }
}

impl Failure {
    fn local(source: Source, code: Code, message: String) -> Self {
        Failure {
            code,
            reason: String::new(),
            domain: String::new(),
            message,
            metadata: BTreeMap::new(),
            context: None,
            source,
        }
    }

    /// The server could not be reached (or answered no HTTP/2).
    pub fn unreachable(message: String) -> Self {
        Self::local(Source::Unreachable, Code::Unavailable, message)
    }

    /// The command line cannot work: exit 2.
    pub fn usage(message: String) -> Self {
        Self::local(Source::Usage, Code::InvalidArgument, message)
    }

    /// A failure on this side that retrying will not change.
    pub fn other(message: String) -> Self {
        Self::local(Source::Local, Code::Unknown, message)
    }

    /// The same failure, saying what the command was doing.
    pub fn context(mut self, what: String) -> Self {
        self.context = Some(what);
        self
    }

    /// Whether an event stream that ended this way may be resumed: after anything that is
    /// not a baton answer (the transport's errors, an unreachable server), and after baton's
    /// UNAVAILABLE (`SHUTTING_DOWN`, `DATABASE_UNAVAILABLE`). Every other baton answer
    /// (`ENTITY_NOT_FOUND`, `INVALID_ARGUMENT`, …) stays the same however often it is asked.
    pub fn resumable(&self) -> bool {
        match self.source {
            Source::Status => self.domain != BATON || self.code == Code::Unavailable,
            Source::Unreachable => true,
            Source::Usage | Source::Local => false,
        }
    }

    /// The exit code: 2 for usage errors, else 1.
    pub fn exit_code(&self) -> ExitCode {
        if self.source == Source::Usage {
            ExitCode::from(USAGE)
        } else {
            ExitCode::FAILURE
        }
    }

    /// `{"code":…,"reason":…,"message":…,"metadata":{…}}` (and `context` when there is one).
    pub fn json(&self) -> Value {
        let mut v = json!({
            "code": format!("{:?}", self.code),
            "reason": self.reason,
            "message": self.message,
            "metadata": self.metadata,
        });
        if let Some(c) = &self.context {
            v["context"] = json!(c);
        }
        v
    }

    /// Writes the failure to stderr: `error: …`, or `{"error":{…}}` for JSON output.
    pub fn report(&self, output: Output) {
        match output {
            Output::Json => eprintln!("{}", json!({ "error": self.json() })),
            Output::Table => eprintln!("error: {self}"),
        }
    }
}

impl fmt::Display for Failure {
    /// One line: `Code REASON: message [key=value …]` for a status, the message otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.context {
            write!(f, "{c}: ")?;
        }
        if self.source != Source::Status {
            return f.write_str(&self.message);
        }
        write!(f, "{:?}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, " {}", self.reason)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.metadata.is_empty() {
            let meta: Vec<String> = self.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, " [{}]", meta.join(" "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, StatusExt};

    fn baton(code: Code, reason: &str, meta: &[(&str, &str)]) -> Failure {
        let meta: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let details = ErrorDetails::with_error_info(reason, BATON, meta);
        tonic::Status::with_error_details(code, "why", details).into()
    }

    #[test]
    fn baton_answers_are_final_unavailable_and_transport_errors_resume() {
        assert!(!baton(Code::NotFound, "ENTITY_NOT_FOUND", &[]).resumable());
        assert!(!baton(Code::InvalidArgument, "INVALID_ARGUMENT", &[]).resumable());
        assert!(baton(Code::Unavailable, "SHUTTING_DOWN", &[("last_seq", "6")]).resumable());
        assert!(baton(Code::Unavailable, "DATABASE_UNAVAILABLE", &[]).resumable());
        assert!(Failure::from(tonic::Status::unknown("h2 protocol error")).resumable());
        assert!(Failure::from(tonic::Status::internal("stream reset")).resumable());
        let foreign = ErrorDetails::with_error_info("X", "example.com", HashMap::new());
        assert!(Failure::from(tonic::Status::with_error_details(Code::NotFound, "m", foreign)).resumable());
        assert!(Failure::unreachable("refused".into()).resumable());
        assert!(!Failure::usage("bad".into()).resumable());
        assert!(!Failure::other("bad".into()).resumable());
    }

    #[test]
    fn one_line_or_one_json_object() {
        let f = baton(
            Code::FailedPrecondition,
            "TAPE_SEALED",
            &[("final_seq", "4"), ("a", "b")],
        );
        assert_eq!(f.to_string(), "FailedPrecondition TAPE_SEALED: why [a=b final_seq=4]");
        assert_eq!(
            f.json(),
            json!({"code": "FailedPrecondition", "reason": "TAPE_SEALED", "message": "why",
                   "metadata": {"final_seq": "4", "a": "b"}})
        );
        let f = Failure::from(tonic::Status::unavailable("gone")).context("machine task".into());
        assert_eq!(f.to_string(), "machine task: Unavailable: gone");
        assert_eq!(f.json()["context"], "machine task");
        assert_eq!(Failure::usage("--addr …".into()).to_string(), "--addr …");
        assert_eq!(Failure::usage("u".into()).exit_code(), ExitCode::from(2));
        assert_eq!(Failure::unreachable("u".into()).exit_code(), ExitCode::FAILURE);
    }
}
