//! Leases and fencing tokens (I1, I2, I3). The decisions here run inside each backend's
//! write transaction, after the key's lock is held, with the transaction's own time.

use super::DomainError;
use super::names::{Holder, LeaseKey};
use super::time::Timestamp;
use std::time::Duration;

/// A lease time-to-live: 1 s to 1 h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(Duration);

impl Ttl {
    /// Shortest TTL accepted.
    pub const MIN: Duration = Duration::from_secs(1);
    /// Longest TTL accepted.
    pub const MAX: Duration = Duration::from_secs(3600);

    /// Parses a TTL; `None` (absent in the request) is an error: a lease must end.
    pub fn parse(field: &str, d: Option<Duration>) -> Result<Self, DomainError> {
        let d = d.ok_or_else(|| DomainError::invalid(field, "is required (1s to 1h)"))?;
        if d < Self::MIN || d > Self::MAX {
            return Err(DomainError::invalid(
                field,
                format!("must be between 1s and 1h, got {d:?}"),
            ));
        }
        Ok(Self(d))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// The longest `wait` an AcquireLease may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// A fencing token: >= 1 and strictly increasing per key (I2). Made only by [`parse`]
/// (requests, stored rows) and by [`decide_acquire`] (the next grant).
///
/// [`parse`]: FencingToken::parse
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct FencingToken(u64);

impl FencingToken {
    /// Parses a token (0 is never granted; tokens are stored as signed 64-bit integers).
    pub fn parse(field: &str, t: u64) -> Result<Self, DomainError> {
        if t == 0 || t > i64::MAX as u64 {
            return Err(DomainError::invalid(
                field,
                "must be a token returned by AcquireLease (>= 1)",
            ));
        }
        Ok(Self(t))
    }

    /// The token granted after this one (I2).
    fn next(this: Option<Self>) -> Self {
        Self(this.map_or(0, |t| t.0) + 1)
    }
}

counter!(FencingToken, "token");

/// `(key, token)` carried by a fenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease key.
    pub key: LeaseKey,
    /// The token the writer holds.
    pub token: FencingToken,
}

/// A live lease as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The key.
    pub key: LeaseKey,
    /// The holder.
    pub holder: Holder,
    /// Its fencing token.
    pub token: FencingToken,
    /// When this token was granted.
    pub acquired_at: Timestamp,
    /// When it expires unless renewed.
    pub expires_at: Timestamp,
}

/// A key's stored row. The row outlives every lease on the key, so its token counter does
/// too (I2): release and expiry clear the holder, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The key.
    pub key: LeaseKey,
    /// The last token granted.
    pub token: FencingToken,
    /// Present while granted and not released (it may still have expired).
    pub holder: Option<Holder>,
    /// When the last token was granted.
    pub acquired_at: Timestamp,
    /// Expiry of the last grant; meaningless once `holder` is `None`.
    pub expires_at: Timestamp,
}

impl LeaseRow {
    /// The row of a key just granted (or renewed) as `lease`.
    pub fn granted(lease: &Lease) -> Self {
        Self {
            key: lease.key.clone(),
            token: lease.token,
            holder: Some(lease.holder.clone()),
            acquired_at: lease.acquired_at,
            expires_at: lease.expires_at,
        }
    }

    /// The lease, if one is live at `now` (I1: expiry is judged by store time only).
    pub fn live(&self, now: Timestamp) -> Option<Lease> {
        let holder = self.holder.clone()?;
        (self.expires_at > now).then(|| Lease {
            key: self.key.clone(),
            holder,
            token: self.token,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
        })
    }
}

/// What an acquire does to the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireDecision {
    /// Write this lease: a new token, or the same token with a later expiry when the caller
    /// already holds the live lease.
    Grant(Lease),
    /// Someone else holds a live lease.
    Busy(Lease),
}

/// Decides an acquire. A free or expired key gets `last token + 1` (I2); the live holder
/// acquiring again keeps its token and extends its TTL.
pub fn decide_acquire(
    row: Option<&LeaseRow>,
    key: &LeaseKey,
    holder: &Holder,
    ttl: Ttl,
    now: Timestamp,
) -> AcquireDecision {
    let expires_at = now.plus(ttl.get());
    match row.and_then(|r| r.live(now)) {
        Some(live) if &live.holder == holder => AcquireDecision::Grant(Lease { expires_at, ..live }),
        Some(live) => AcquireDecision::Busy(live),
        None => AcquireDecision::Grant(Lease {
            key: key.clone(),
            holder: holder.clone(),
            token: FencingToken::next(row.map(|r| r.token)),
            acquired_at: now,
            expires_at,
        }),
    }
}

/// Checks that `(key, token)` is the key's current unexpired lease (I3); the error says
/// who holds the key now, so the loser need not re-read.
pub fn check_fence(
    row: Option<&LeaseRow>,
    key: &LeaseKey,
    token: FencingToken,
    now: Timestamp,
) -> Result<Lease, DomainError> {
    let live = row.and_then(|r| r.live(now));
    match live {
        Some(l) if l.token == token => Ok(l),
        _ => Err(DomainError::LeaseLost {
            key: key.to_string(),
            token: token.get(),
            current_token: live.as_ref().map(|l| l.token.get()).or(row.map(|r| r.token.get())),
            current_holder: live.map(|l| l.holder.to_string()),
        }),
    }
}

/// Decides a renew: the live lease with `token` gets `now + ttl`.
pub fn decide_renew(
    row: Option<&LeaseRow>,
    key: &LeaseKey,
    token: FencingToken,
    ttl: Ttl,
    now: Timestamp,
) -> Result<Lease, DomainError> {
    check_fence(row, key, token, now).map(|l| Lease {
        expires_at: now.plus(ttl.get()),
        ..l
    })
}

/// Decides a release: true when `token` is the live lease (which then ends).
pub fn decide_release(row: Option<&LeaseRow>, key: &LeaseKey, token: FencingToken, now: Timestamp) -> bool {
    check_fence(row, key, token, now).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LeaseKey {
        LeaseKey::parse("key", "k".into()).unwrap()
    }
    fn holder(s: &str) -> Holder {
        Holder::parse("holder", s.into()).unwrap()
    }
    fn ttl() -> Ttl {
        Ttl::parse("ttl", Some(Duration::from_secs(10))).unwrap()
    }
    fn row_from(l: &Lease) -> LeaseRow {
        LeaseRow {
            key: key(),
            token: l.token,
            holder: Some(l.holder.clone()),
            acquired_at: l.acquired_at,
            expires_at: l.expires_at,
        }
    }

    #[test]
    fn i2_tokens_increase_across_expiry_and_release() {
        let t0 = Timestamp(1_000_000);
        let AcquireDecision::Grant(a) = decide_acquire(None, &key(), &holder("a"), ttl(), t0) else {
            panic!()
        };
        assert_eq!(a.token.get(), 1);
        // b is refused while a is live
        let row = row_from(&a);
        assert!(matches!(
            decide_acquire(Some(&row), &key(), &holder("b"), ttl(), t0),
            AcquireDecision::Busy(_)
        ));
        // after expiry b gets token 2
        let later = t0.plus(Duration::from_secs(11));
        let AcquireDecision::Grant(b) = decide_acquire(Some(&row), &key(), &holder("b"), ttl(), later) else {
            panic!()
        };
        assert_eq!(b.token.get(), 2);
        // a released row still counts
        let released = LeaseRow {
            holder: None,
            ..row_from(&b)
        };
        let AcquireDecision::Grant(c) = decide_acquire(Some(&released), &key(), &holder("a"), ttl(), later) else {
            panic!()
        };
        assert_eq!(c.token.get(), 3);
    }

    #[test]
    fn reacquire_by_holder_extends_same_token() {
        let t0 = Timestamp(0);
        let AcquireDecision::Grant(a) = decide_acquire(None, &key(), &holder("a"), ttl(), t0) else {
            panic!()
        };
        let t1 = t0.plus(Duration::from_secs(5));
        let AcquireDecision::Grant(again) = decide_acquire(Some(&row_from(&a)), &key(), &holder("a"), ttl(), t1) else {
            panic!()
        };
        assert_eq!(again.token, a.token);
        assert_eq!(again.acquired_at, a.acquired_at);
        assert_eq!(again.expires_at, t1.plus(Duration::from_secs(10)));
    }

    #[test]
    fn i3_fence_rejects_expired_and_stale_tokens() {
        let t0 = Timestamp(0);
        let AcquireDecision::Grant(a) = decide_acquire(None, &key(), &holder("a"), ttl(), t0) else {
            panic!()
        };
        let row = row_from(&a);
        assert!(check_fence(Some(&row), &key(), a.token, t0).is_ok());
        assert!(check_fence(Some(&row), &key(), FencingToken::parse("t", 7).unwrap(), t0).is_err());
        let expired = t0.plus(Duration::from_secs(10));
        let err = check_fence(Some(&row), &key(), a.token, expired).unwrap_err();
        assert!(matches!(
            err,
            DomainError::LeaseLost {
                current_holder: None,
                current_token: Some(1),
                ..
            }
        ));
        assert!(!decide_release(Some(&row), &key(), a.token, expired));
        assert!(decide_renew(None, &key(), a.token, ttl(), t0).is_err());
    }

    #[test]
    fn ttl_bounds_name_the_field() {
        assert!(Ttl::parse("ttl", None).is_err());
        assert!(Ttl::parse("ttl", Some(Duration::from_millis(999))).is_err());
        assert!(Ttl::parse("ttl", Some(Duration::from_secs(3601))).is_err());
        assert!(Ttl::parse("ttl", Some(Duration::from_secs(3600))).is_ok());
    }
}
