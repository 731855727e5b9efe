//! The tower layer that authenticates each request of the Coordinator service: a bearer
//! token (`authorization: Bearer …`) found in the tokens file, or else a client
//! certificate whose name the file lists. The [`Caller`] goes into the request's
//! extensions for the handlers to authorize; no caller, no call (`UNAUTHENTICATED`).
//! Health and reflection stay open unless configured otherwise.

use super::grants::Rejected;
use super::{Caller, TokenStore};
use crate::grpc::{Connection, DOMAIN};
use futures::future::{BoxFuture, FutureExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// The path prefix of the API's calls.
const COORDINATOR: &str = "/baton.v1.Coordinator/";

/// Authenticates requests against a tokens file.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Arc<TokenStore>,
    /// Health and reflection need a caller too.
    protect_all: bool,
}

impl AuthLayer {
    /// A layer over `tokens`; `protect_all` puts health and reflection behind it too.
    pub fn new(tokens: Arc<TokenStore>, protect_all: bool) -> Self {
        Self { tokens, protect_all }
    }

    /// The caller a request stands for.
    fn authenticate(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> Result<Caller, Status> {
        let grants = self.tokens.grants();
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let secret = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .ok_or_else(|| unauthenticated("the authorization header is not \"Bearer <token>\""))?;
            return grants.by_token(secret.trim(), SystemTime::now()).map_err(|r| match r {
                Rejected::Unknown => unauthenticated("unknown or revoked token"),
                Rejected::Expired => unauthenticated("the token has expired"),
            });
        }
        // The names of the connection's verified client certificate, as the listener
        // recorded them (none without mTLS).
        let names = extensions
            .get::<Connection>()
            .map(|c| c.peer_names.clone())
            .unwrap_or_default();
        if let Some(caller) = grants.by_identity(names.iter().map(String::as_str)) {
            return Ok(caller);
        }
        Err(unauthenticated(if names.is_empty() {
            "no credentials: send \"authorization: Bearer <token>\" (or a client certificate the server knows)"
        } else {
            "the client certificate's names are not in the tokens file"
        }))
    }
}

/// `UNAUTHENTICATED` with an ErrorInfo (reason `UNAUTHENTICATED`).
fn unauthenticated(why: &str) -> Status {
    Status::with_error_details(
        tonic::Code::Unauthenticated,
        why,
        ErrorDetails::with_error_info("UNAUTHENTICATED", DOMAIN, HashMap::new()),
    )
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let protected = self.layer.protect_all || request.uri().path().starts_with(COORDINATOR);
        if protected {
            match self.layer.authenticate(request.headers(), request.extensions()) {
                Ok(caller) => drop(request.extensions_mut().insert(caller)),
                Err(status) => return futures::future::ready(Ok(status.into_http())).boxed(),
            }
        }
        self.inner.call(request).boxed()
    }
}
