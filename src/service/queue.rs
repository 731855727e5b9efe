//! Per-key turns inside one replica. Writers of one key would serialize on the key's
//! database lock anyway; taking turns here first makes them wait in memory, in arrival
//! order, instead of each holding a pooled connection blocked on that lock (a hot key
//! would otherwise take the whole pool and starve every other key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// The queues of keys with a writer in flight on this replica.
#[derive(Default)]
pub struct KeyQueue {
    keys: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

/// The right to write a key on this replica; the next writer goes when it drops.
pub struct Turn<'a> {
    queue: &'a KeyQueue,
    key: i64,
    slot: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyQueue {
    /// Waits for this key's turn (first come, first served: tokio's mutex is fair).
    pub async fn turn(&self, key: i64) -> Turn<'_> {
        let slot = self.lock().entry(key).or_default().clone();
        let guard = slot.clone().lock_owned().await;
        Turn {
            queue: self,
            key,
            slot,
            guard: Some(guard),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<tokio::sync::Mutex<()>>>> {
        // A panic elsewhere cannot leave the map half-updated: every change is one call.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut keys = self.queue.lock();
        // Waiters clone the slot under the map lock, so two references (the map's and
        // ours) mean nobody else is queued and the entry can go.
        if Arc::strong_count(&self.slot) == 2 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writers_of_one_key_take_turns_in_arrival_order_and_leave_no_entry() {
        let queue = Arc::new(KeyQueue::default());
        let first = queue.turn(7).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (queue, order) = (queue.clone(), order.clone());
            let (queued_tx, queued_rx) = tokio::sync::oneshot::channel();
            waiters.push(tokio::spawn(async move {
                let fut = queue.turn(7);
                tokio::pin!(fut);
                // Poll once so this waiter is in the mutex's queue before the next starts.
                assert!(futures::poll!(fut.as_mut()).is_pending());
                queued_tx.send(()).unwrap();
                let _turn = fut.await;
                order.lock().unwrap().push(i);
            }));
            queued_rx.await.unwrap();
        }
        // Another key is not held up by key 7.
        drop(queue.turn(8).await);
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(queue.lock().is_empty(), "no entry left behind");
    }
}
