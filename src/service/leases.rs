//! AcquireLease, RenewLease, ReleaseLease and GetLease (I1, I2, I3). The writes go through
//! the commit pipeline; the fence check of fenced writes is the domain's, inside their batch.

use super::{Coordinator, Error, Result};
use crate::domain::batch::Command;
use crate::domain::command::{AcquireLease, GetLease, ReleaseLease, RenewLease};
use crate::domain::lease::Lease;
use crate::domain::outcome::{AcquireOutcome, LeaseView, Outcome};
use std::time::Duration;
use tokio::time::Instant;

fn unexpected(what: &str) -> Error {
    Error::Internal(format!("the pipeline answered {what} with another call's outcome"))
}

impl Coordinator {
    /// AcquireLease: tries, then (with `wait`) sleeps until a release on any replica or the
    /// holder's expiry time, whichever comes first, and tries again. No polling loop. Each
    /// try is a command of the pipeline (it commits and is recorded whether or not the caller
    /// is still there); the wait between tries is not: a caller that left stops waiting.
    ///
    /// Each try carries the wait still left; the last try carries none, so its answer,
    /// busy or not, is the one recorded under the request id (an earlier busy try is not:
    /// the wait goes on).
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, key = %cmd.key))]
    pub async fn acquire_lease(&self, cmd: AcquireLease) -> Result<AcquireOutcome> {
        let deadline = Instant::now() + cmd.wait;
        let mut shutdown = self.shutdown.clone();
        loop {
            // Register before trying, so a release between our try and our wait wakes us.
            let waiter = self.hub.lease_waiter(&cmd.ns, &cmd.key);
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = AcquireLease {
                wait: left,
                ..cmd.clone()
            };
            let Outcome::Acquire(out) = self.pipeline.submit(Command::Acquire(attempt)).await? else {
                return Err(unexpected("AcquireLease"));
            };
            if out.acquired || left.is_zero() {
                return Ok(out);
            }
            // Wake just after the holder's expiry, by the store's own clock; at the deadline,
            // the last try.
            let now = Instant::now();
            let expiry = now + out.now.until(out.lease.expires_at) + Duration::from_millis(1);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(expiry.min(deadline)) => {}
                _ = super::raised(&mut shutdown) => return Err(Error::ShuttingDown { last_seq: None }),
            }
        }
    }

    /// RenewLease: the live lease with `token` gets `now + ttl`, else LEASE_LOST.
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, key = %cmd.key))]
    pub async fn renew_lease(&self, cmd: RenewLease) -> Result<Lease> {
        match self.pipeline.submit(Command::Renew(cmd)).await? {
            Outcome::Renew(lease) => Ok(lease),
            _ => Err(unexpected("RenewLease")),
        }
    }

    /// ReleaseLease: idempotent; true when this call ended the live lease.
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, key = %cmd.key))]
    pub async fn release_lease(&self, cmd: ReleaseLease) -> Result<bool> {
        match self.pipeline.submit(Command::Release(cmd)).await? {
            Outcome::Release(released) => Ok(released),
            _ => Err(unexpected("ReleaseLease")),
        }
    }

    /// GetLease.
    pub async fn get_lease(&self, cmd: GetLease) -> Result<LeaseView> {
        let row = crate::telemetry::db_read("lease", self.store.lease_row(&cmd.ns, &cmd.key)).await?;
        let now = crate::telemetry::db_read("now", self.store.now()).await?;
        Ok(LeaseView {
            lease: row.as_ref().and_then(|r| r.live(now)),
            last_token: row.map_or(0, |r| r.token.get()),
        })
    }
}
