//! Fan-out accounting shared by baton's streams and etcd's watches: which deliveries fall
//! in the measured window, their append-to-delivery latency, and whether a subscriber saw
//! every seq and exactly one `final`.

use super::Fanout;
use super::checks::Findings;
use super::load::{self, Timing};
use super::stats::Latency;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long subscribers may take to drain after the writer's last event.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A subscriber says through this that its stream is established (or why it is not).
pub type Ready = mpsc::Sender<Result<(), String>>;

/// Spawns `n` subscribers, `spawn(i, ready)` each, and waits until every one has said
/// its stream is established, so the writer cannot start before anyone listens.
pub async fn start<F, Fut>(n: usize, mut spawn: F) -> Result<Vec<JoinHandle<Seen>>, String>
where
    F: FnMut(usize, Ready) -> Fut,
    Fut: Future<Output = Seen> + Send + 'static,
{
    let (ready, mut established) = mpsc::channel(n.max(1));
    let tasks = (0..n).map(|i| tokio::spawn(spawn(i, ready.clone()))).collect();
    drop(ready);
    for _ in 0..n {
        match established.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("a subscriber could not start: {e}")),
            None => return Err("subscribers ended before they started".into()),
        }
    }
    Ok(tasks)
}

/// Waits for every subscriber to end and adds up what they saw; the findings name those
/// that missed something.
pub async fn finish(tasks: Vec<JoinHandle<Seen>>, final_seq: u64) -> Result<(Fanout, Findings), String> {
    let results = tokio::time::timeout(DRAIN_TIMEOUT, futures::future::join_all(tasks))
        .await
        .map_err(|_| format!("subscribers did not reach final seq {final_seq} within {DRAIN_TIMEOUT:?}"))?;
    let seen = results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("subscriber task failed: {e}"))?;
    Ok(summarize(seen, final_seq))
}

/// The measured window in nanoseconds since the bench started; set when the writer starts,
/// after every subscriber is established.
#[derive(Debug, Clone, Default)]
pub struct Window(Arc<OnceLock<(u64, u64)>>);

impl Window {
    /// Opens the window: warm-up from now, then the measured duration.
    pub fn open(&self, timing: Timing) {
        let from = load::now_nanos().saturating_add(u64::try_from(timing.warmup.as_nanos()).unwrap_or(u64::MAX));
        let to = from.saturating_add(u64::try_from(timing.duration.as_nanos()).unwrap_or(u64::MAX));
        let _ = self.0.set((from, to));
    }
}

/// What one fan-out subscriber saw.
#[derive(Default)]
pub struct Seen {
    pub last_seq: u64,
    pub finals: u32,
    pub closed: bool,
    pub error: Option<String>,
    pub deliveries: u64,
    pub latency: Latency,
}

impl Seen {
    /// Ok when the subscriber saw 1..=final_seq in order, one `final`, then the end.
    pub fn verdict(&self, final_seq: u64) -> Result<(), String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.last_seq != final_seq || self.finals != 1 || !self.closed {
            return Err(format!(
                "last seq {} of {final_seq}, {} final(s), closed: {}",
                self.last_seq, self.finals, self.closed
            ));
        }
        Ok(())
    }

    /// Records a stamped payload delivered now, when it was sent inside the window.
    pub fn delivered(&mut self, payload: &[u8], window: &Window) {
        if let (Some(sent), Some(&(from, to))) = (load::read_stamp(payload), window.0.get())
            && (from..to).contains(&sent)
        {
            self.deliveries += 1;
            self.latency.record(load::since(sent));
        }
    }
}

/// Adds up what every subscriber saw; the findings name those that missed something.
fn summarize(seen: Vec<Seen>, final_seq: u64) -> (Fanout, Findings) {
    let mut fan = Fanout {
        subscribers: seen.len() as u32,
        ..Fanout::default()
    };
    let mut incomplete = Findings::new("subscriber missed an event, saw a duplicate final or did not end");
    for (n, s) in seen.into_iter().enumerate() {
        fan.deliveries += s.deliveries;
        fan.latency.merge(&s.latency);
        match s.verdict(final_seq) {
            Ok(()) => fan.complete += 1,
            Err(e) => incomplete.add(format!("subscriber {n}: {e}")),
        }
    }
    (fan, incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_stamps_inside_the_window_count() {
        let window = Window::default();
        let mut seen = Seen::default();
        seen.delivered(&load::stamp(), &window);
        assert_eq!(seen.deliveries, 0, "no window yet");
        window.open(Timing {
            warmup: Duration::ZERO,
            duration: Duration::from_secs(60),
        });
        seen.delivered(&load::stamp(), &window);
        seen.delivered(b"not a stamp", &window);
        assert_eq!((seen.deliveries, seen.latency.count()), (1, 1));
    }

    #[test]
    fn verdict_needs_every_seq_one_final_and_the_end() {
        let complete = Seen {
            last_seq: 7,
            finals: 1,
            closed: true,
            ..Seen::default()
        };
        assert!(complete.verdict(7).is_ok());
        assert!(complete.verdict(8).is_err(), "missed the last event");
        let twice = Seen { finals: 2, ..complete };
        assert!(twice.verdict(7).is_err());
    }
}
