//! AcquireLease, RenewLease, ReleaseLease, GetLease, and the fence check every fenced
//! write runs inside its own transaction (I1, I2, I3).

use super::idempotency::{call_id, remember, replay};
use super::{Coordinator, Error, Result};
use crate::domain::command::{AcquireLease, GetLease, ReleaseLease, RenewLease};
use crate::domain::lease::{self, AcquireDecision, Fence, Lease};
use crate::domain::names::{LeaseKey, Namespace, lock_key, lock_space};
use crate::domain::time::Timestamp;
use crate::storage::{Change, First, WriteTx};
use std::time::Duration;
use tokio::time::Instant;

/// Outcome of an acquire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcquireOutcome {
    /// True when the caller holds the lease.
    pub acquired: bool,
    /// The current lease (the caller's or the other holder's).
    pub lease: Lease,
    /// Store time of the decision (to time the wait for expiry).
    pub now: Timestamp,
}

/// GetLease's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The live lease, if any.
    pub lease: Option<Lease>,
    /// Highest token ever granted (0 when never leased).
    pub last_token: u64,
}

fn lease_lock(ns: &Namespace, key: &LeaseKey) -> i64 {
    lock_key(ns, lock_space::LEASE, key.as_str())
}

impl Coordinator {
    /// The fence check of a fenced write (I3): inside the write's transaction, with a share
    /// lock on the lease row so a takeover waits until the write has committed.
    pub(super) async fn check_fence(&self, tx: &mut dyn WriteTx, ns: &Namespace, fence: Option<&Fence>) -> Result<()> {
        if let Some(f) = fence {
            let row = tx.lease_row(ns, &f.key, true).await?;
            if self.config.faults.skip_fence_check {
                return Ok(()); // the canary: a broken build the fault suite must catch
            }
            lease::check_fence(row.as_ref(), &f.key, f.token, tx.now())?;
        }
        Ok(())
    }

    /// AcquireLease: tries, then (with `wait`) sleeps until a release on any replica or the
    /// holder's expiry time, whichever comes first, and tries again. No polling loop.
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
            // Each attempt is detached (a grant that committed is announced and recorded
            // even if the caller left); the wait between attempts is not: a caller that
            // went away stops waiting.
            let attempt = cmd.clone();
            let out = self
                .detached(move |this| async move { this.try_acquire(&attempt).await })
                .await?;
            let now = Instant::now();
            if out.acquired || now >= deadline {
                return Ok(out);
            }
            // Wake just after the holder's expiry, by the store's own clock.
            let expiry = now + out.now.until(out.lease.expires_at) + Duration::from_millis(1);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(expiry.min(deadline)) => {}
                _ = super::raised(&mut shutdown) => return Err(Error::ShuttingDown { last_seq: None }),
            }
        }
    }

    async fn try_acquire(&self, cmd: &AcquireLease) -> Result<AcquireOutcome> {
        let call = call_id("AcquireLease", cmd.key.as_str(), &(&cmd.holder, cmd.ttl));
        let lock = lease_lock(&cmd.ns, &cmd.key);
        let _turn = self.queue.turn(lock).await;
        let mut tx = self.store.begin_at(lock, First::Lease(&cmd.ns, &cmd.key)).await?;
        if let Some(out) = replay(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), &call).await? {
            return Ok(out);
        }
        let row = tx.lease_row(&cmd.ns, &cmd.key, false).await?;
        let now = tx.now();
        match lease::decide_acquire(row.as_ref(), &cmd.key, &cmd.holder, cmd.ttl, now) {
            AcquireDecision::Busy(lease) => Ok(AcquireOutcome {
                acquired: false,
                lease,
                now,
            }),
            AcquireDecision::Grant(lease) => {
                tx.put_lease(&cmd.ns, &lease).await?;
                let out = AcquireOutcome {
                    acquired: true,
                    lease,
                    now,
                };
                remember(&mut *tx, &cmd.ns, cmd.request_id.as_ref(), &call, &out).await?;
                tx.commit().await?;
                Ok(out)
            }
        }
    }

    /// RenewLease: the live lease with `token` gets `now + ttl`, else LEASE_LOST.
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, key = %cmd.key))]
    pub async fn renew_lease(&self, cmd: RenewLease) -> Result<Lease> {
        self.detached(move |this| async move { this.renew_once(&cmd).await })
            .await
    }

    async fn renew_once(&self, cmd: &RenewLease) -> Result<Lease> {
        let RenewLease {
            ns,
            key,
            token,
            ttl,
            request_id,
        } = cmd;
        let call = call_id("RenewLease", key.as_str(), &(token, ttl));
        let lock = lease_lock(ns, key);
        let _turn = self.queue.turn(lock).await;
        let mut tx = self.store.begin_at(lock, First::Lease(ns, key)).await?;
        if let Some(out) = replay(&mut *tx, ns, request_id.as_ref(), &call).await? {
            return Ok(out);
        }
        let row = tx.lease_row(ns, key, false).await?;
        let lease = lease::decide_renew(row.as_ref(), key, *token, *ttl, tx.now())?;
        tx.put_lease(ns, &lease).await?;
        remember(&mut *tx, ns, request_id.as_ref(), &call, &lease).await?;
        tx.commit().await?;
        Ok(lease)
    }

    /// ReleaseLease: idempotent; true when this call ended the live lease.
    #[tracing::instrument(skip_all, fields(ns = %cmd.ns, key = %cmd.key))]
    pub async fn release_lease(&self, cmd: ReleaseLease) -> Result<bool> {
        self.detached(move |this| async move { this.release_once(&cmd).await })
            .await
    }

    async fn release_once(&self, cmd: &ReleaseLease) -> Result<bool> {
        let ReleaseLease {
            ns,
            key,
            token,
            request_id,
        } = cmd;
        let call = call_id("ReleaseLease", key.as_str(), token);
        let lock = lease_lock(ns, key);
        let _turn = self.queue.turn(lock).await;
        let mut tx = self.store.begin_at(lock, First::Lease(ns, key)).await?;
        if let Some(out) = replay(&mut *tx, ns, request_id.as_ref(), &call).await? {
            return Ok(out);
        }
        let row = tx.lease_row(ns, key, false).await?;
        if !lease::decide_release(row.as_ref(), key, *token, tx.now()) {
            return Ok(false);
        }
        tx.end_lease(ns, key).await?;
        tx.publish(Change::LeaseFreed {
            ns: ns.clone(),
            key: key.clone(),
        })
        .await?;
        remember(&mut *tx, ns, request_id.as_ref(), &call, &true).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// GetLease.
    pub async fn get_lease(&self, cmd: GetLease) -> Result<LeaseView> {
        let row = self.store.lease_row(&cmd.ns, &cmd.key).await?;
        let now = self.store.now().await?;
        Ok(LeaseView {
            lease: row.as_ref().and_then(|r| r.live(now)),
            last_token: row.map_or(0, |r| r.token.get()),
        })
    }
}
