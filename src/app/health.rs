//! gRPC health (`grpc.health.v1`) with manners: tonic-health's service, whose `Watch`
//! streams end — after saying NOT_SERVING — when the server drains or their connection
//! has aged, instead of holding the drain (or the connection) open until the bound.

use crate::grpc::Connection;
use std::pin::Pin;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus};
use tonic_health::server::{HealthReporter, HealthService};

/// tonic-health's service whose watches end on drain and on connection age.
pub struct DrainingHealth {
    inner: HealthService,
    drain: watch::Receiver<bool>,
}

impl DrainingHealth {
    /// The service of `reporter`'s statuses; `drain` is the server's drain flag.
    pub fn new(reporter: HealthReporter, drain: watch::Receiver<bool>) -> Self {
        Self {
            inner: HealthService::from_health_reporter(reporter),
            drain,
        }
    }
}

type Watched = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = Watched;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Watched>, Status> {
        let ends = Connection::of(&request).streams_end;
        let mut statuses = self.inner.watch(request).await?.into_inner();
        let mut drain = self.drain.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let aged = async move {
                match ends {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(aged);
            loop {
                tokio::select! {
                    _ = crate::service::raised(&mut drain) => {
                        // The last word is NOT_SERVING, then the stream ends OK.
                        let last = HealthCheckResponse { status: ServingStatus::NotServing as i32 };
                        let _ = tx.send(Ok(last)).await;
                        return;
                    }
                    _ = &mut aged => return,
                    _ = tx.closed() => return,
                    status = statuses.next() => match status {
                        Some(status) => {
                            if tx.send(status).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
