//! I10: a mutating call retried with the same request id returns its first outcome. The
//! lookup and the record happen inside the call's own transaction, after its key lock, so
//! two concurrent retries serialize and the second reads the first's outcome.

use super::{Error, Result};
use crate::domain::DomainError;
use crate::domain::names::{Namespace, RequestId, stable_hash};
use crate::storage::WriteTx;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

/// Names one logical call: its method, target, and a fingerprint of everything else it
/// asked for (request id excluded). A retry matches it exactly; a different request under
/// the same id does not, and is refused instead of answered with someone else's outcome.
pub fn call_id(method: &str, target: &str, request: &impl Debug) -> String {
    let h = stable_hash(format!("{request:?}").into_bytes());
    format!("{method} {target} {h:016x}")
}

/// The stored outcome of `rid`, if this call already ran. `call` identifies the call
/// (method and target), so an id reused for a different call is refused.
pub async fn replay<T: DeserializeOwned>(
    tx: &mut dyn WriteTx,
    ns: &Namespace,
    rid: Option<&RequestId>,
    call: &str,
) -> Result<Option<T>> {
    let Some(rid) = rid else { return Ok(None) };
    match tx.request(ns, rid).await? {
        None => Ok(None),
        Some((stored, json)) if stored == call => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| Error::Internal(format!("stored outcome of {rid} is unreadable: {e}"))),
        Some((stored, _)) => Err(DomainError::RequestIdReused {
            request_id: rid.to_string(),
            method: stored,
        }
        .into()),
    }
}

/// Records the outcome of `rid` in the same transaction as the change it describes.
pub async fn remember<T: Serialize>(
    tx: &mut dyn WriteTx,
    ns: &Namespace,
    rid: Option<&RequestId>,
    call: &str,
    outcome: &T,
) -> Result<()> {
    let Some(rid) = rid else { return Ok(()) };
    let json = serde_json::to_string(outcome).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(tx.put_request(ns, rid, call, &json).await?)
}
