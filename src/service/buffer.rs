//! Bounded buffers of stream data (issue 13). A stream's events wait for its client in a
//! [`channel`] of at most `stream_buffer` bytes (always room for one event): a client that
//! reads slower than its events come makes its subscriber wait, and catch up from the table
//! later — nothing is lost, nothing piles up. Every queued byte is also taken from the
//! replica's [`Budget`]; when that runs out, the stream furthest behind (the most bytes
//! queued) is cut off: its queue is dropped at once and it ends with `RESOURCE_EXHAUSTED`
//! and the `last_seq` its client was handed, to resume from.

use super::error::Error;
use super::tape::StreamItem;
use crate::domain::tape::Seq;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;
use tokio_stream::Stream;

/// Bytes a replica may hold for one purpose (queued stream data, the hub's recent events).
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// The queues drawing on it, to find the one furthest behind when it runs out.
    queues: Mutex<HashMap<u64, Weak<Shared>>>,
    next_queue: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            queues: Mutex::default(),
            next_queue: AtomicU64::new(0),
        })
    }

    /// Takes `n` bytes, or `None` when fewer are left.
    pub fn try_take(self: &Arc<Self>, n: usize) -> Option<Held> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&after| after <= self.limit)
            })
            .ok()
            .map(|_| Held {
                budget: self.clone(),
                n,
            })
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Cuts off the queue with the most bytes queued; false when every queue is empty.
    fn cut_most_behind(&self) -> bool {
        let queues: Vec<Arc<Shared>> = lock(&self.queues).values().filter_map(Weak::upgrade).collect();
        let victim = queues
            .iter()
            .map(|q| (lock(&q.state).bytes, q))
            .filter(|(bytes, _)| *bytes > 0)
            .max_by_key(|(bytes, _)| *bytes);
        match victim {
            Some((bytes, q)) => {
                q.cut(&mut lock(&q.state), bytes);
                true
            }
            None => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes taken from a [`Budget`], given back when dropped.
pub struct Held {
    budget: Arc<Budget>,
    n: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// Roughly what one item holds in memory.
fn size(item: &StreamItem) -> usize {
    match item {
        StreamItem::Event(e) => 64 + e.payload.len() + e.event_type.len() + e.content_type.len(),
        StreamItem::Heartbeat(_) => 64,
    }
}

struct Shared {
    id: u64,
    /// What the stream is (for the log line of a cut).
    label: String,
    budget: Arc<Budget>,
    /// The stream's own bound, in bytes.
    limit: usize,
    state: Mutex<State>,
    /// Notified when the queue has room again, and when the stream ends (cut off, client
    /// gone).
    room: Notify,
}

struct State {
    items: VecDeque<(super::Result<StreamItem>, usize, Option<Held>)>,
    /// Bytes queued.
    bytes: usize,
    /// The last event handed to the client (the cursor the stream started at before any).
    sent: Seq,
    /// Cut off: the queue holds the error that ends the stream.
    cut: bool,
    /// The subscriber finished: nothing more will be queued.
    done: bool,
    /// The client's side is gone.
    gone: bool,
    consumer: Option<Waker>,
}

impl State {
    fn wake(&mut self) {
        if let Some(w) = self.consumer.take() {
            w.wake();
        }
    }
}

impl Shared {
    fn cut(&self, st: &mut State, bytes: usize) {
        if st.cut || st.done || st.gone {
            return;
        }
        tracing::warn!(
            stream = %self.label, last_seq = %st.sent, queued_bytes = bytes,
            "stream cut off: the replica's stream memory is spent and its client is furthest behind"
        );
        st.items.clear();
        st.bytes = 0;
        st.items
            .push_back((Err(Error::StreamBehind { last_seq: st.sent }), 0, None));
        st.cut = true;
        st.wake();
        self.room.notify_waiters();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        lock(&self.budget.queues).remove(&self.id);
    }
}

/// A bounded queue of `limit` bytes drawing on `budget`, for the stream `label` that starts
/// after `start`: the subscriber's end, and the client's.
pub fn channel(budget: &Arc<Budget>, limit: usize, label: String, start: Seq) -> (Feed, EventStream) {
    let shared = Arc::new(Shared {
        id: budget.next_queue.fetch_add(1, Ordering::Relaxed),
        label,
        budget: budget.clone(),
        limit,
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            sent: start,
            cut: false,
            done: false,
            gone: false,
            consumer: None,
        }),
        room: Notify::new(),
    });
    lock(&budget.queues).insert(shared.id, Arc::downgrade(&shared));
    (Feed(shared.clone()), EventStream(shared))
}

/// Why a stream takes no more items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client went away.
    Gone,
    /// Cut off; the error that ends the stream is queued.
    Cut,
}

/// The subscriber's end of a stream's queue.
pub struct Feed(Arc<Shared>);

impl Feed {
    /// Queues `item` once there is room for it: in the stream's own bound (waiting for the
    /// client to read), and in the replica's (cutting off the stream furthest behind).
    pub async fn send(&self, item: StreamItem) -> Result<(), Ended> {
        let n = size(&item);
        let mut item = Some(item);
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let full = {
                let mut st = lock(&self.0.state);
                if st.gone {
                    return Err(Ended::Gone);
                }
                if st.cut {
                    return Err(Ended::Cut);
                }
                let full = !st.items.is_empty() && st.bytes + n > self.0.limit;
                if !full && let Some(held) = self.0.budget.try_take(n) {
                    st.items.push_back((Ok(item.take().expect("sent once")), n, Some(held)));
                    st.bytes += n;
                    st.wake();
                    return Ok(());
                }
                full
            };
            if full {
                // Wait for the client to read.
                room.await;
                continue;
            }
            // The replica's budget is spent: free the stream furthest behind (maybe this one).
            if !self.0.budget.cut_most_behind() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Ends the stream with `error` (queued past any bound: it is the last item).
    pub fn fail(self, error: Error) {
        let mut st = lock(&self.0.state);
        if !st.cut && !st.gone {
            st.items.push_back((Err(error), 0, None));
            st.wake();
        }
    }

    /// Resolves once the stream takes no more items (its client is gone, or it was cut off).
    pub async fn closed(&self) {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let st = lock(&self.0.state);
                if st.gone || st.cut {
                    return;
                }
            }
            room.await;
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.done = true;
        st.wake();
    }
}

/// The client's end of a stream's queue: its items in order, then the end.
pub struct EventStream(Arc<Shared>);

impl Stream for EventStream {
    type Item = super::Result<StreamItem>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut st = lock(&self.0.state);
        if let Some((item, n, held)) = st.items.pop_front() {
            st.bytes -= n;
            if let Ok(StreamItem::Event(e)) = &item {
                st.sent = e.seq;
            }
            drop(held);
            drop(st);
            self.0.room.notify_waiters();
            return Poll::Ready(Some(item));
        }
        if st.done || st.cut {
            return Poll::Ready(None);
        }
        st.consumer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.gone = true;
        st.items.clear();
        st.bytes = 0;
        drop(st);
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tape::StoredEvent;
    use crate::domain::time::Timestamp;
    use tokio_stream::StreamExt;

    fn event(seq: u64, bytes: usize) -> StreamItem {
        StreamItem::Event(Arc::new(StoredEvent {
            seq: Seq::parse("seq", seq).unwrap(),
            event_type: "e".into(),
            payload: vec![0; bytes],
            content_type: String::new(),
            state: None,
            created_at: Timestamp(0),
        }))
    }

    fn seq_of(item: Option<crate::service::Result<StreamItem>>) -> u64 {
        match item {
            Some(Ok(StreamItem::Event(e))) => e.seq.get(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_its_client_and_always_takes_one() {
        let budget = Budget::new(1 << 20);
        let (feed, mut stream) = channel(&budget, 1000, "t".into(), Seq::ZERO);
        // Bigger than the bound, but the queue is empty: it goes in.
        feed.send(event(1, 5000)).await.unwrap();
        let blocked = feed.send(event(2, 10));
        tokio::pin!(blocked);
        assert!(futures::poll!(blocked.as_mut()).is_pending(), "the queue is full");
        assert_eq!(seq_of(stream.next().await), 1);
        blocked.await.unwrap();
        assert_eq!(seq_of(stream.next().await), 2);
        drop(stream);
        assert_eq!(feed.send(event(3, 10)).await, Err(Ended::Gone));
        assert_eq!(budget.used(), 0, "every byte is given back");
    }

    #[tokio::test]
    async fn a_spent_budget_cuts_off_the_stream_furthest_behind() {
        let budget = Budget::new(3000);
        let (behind, mut behind_rx) = channel(&budget, 10_000, "behind".into(), Seq::parse("s", 4).unwrap());
        let (reader, mut reader_rx) = channel(&budget, 10_000, "reader".into(), Seq::ZERO);
        for seq in 5..8 {
            behind.send(event(seq, 600)).await.unwrap();
        }
        assert_eq!(seq_of(behind_rx.next().await), 5);
        behind.send(event(8, 600)).await.unwrap();
        // 3 × 664 queued for `behind`; the reader's 1,100 do not fit beside them.
        reader.send(event(1, 1100)).await.unwrap();
        assert_eq!(behind.send(event(9, 10)).await, Err(Ended::Cut));
        match behind_rx.next().await {
            Some(Err(Error::StreamBehind { last_seq })) => assert_eq!(last_seq.get(), 5),
            other => panic!("{other:?}"),
        }
        assert!(behind_rx.next().await.is_none());
        assert_eq!(seq_of(reader_rx.next().await), 1);
        assert_eq!(budget.used(), 0);
    }
}
