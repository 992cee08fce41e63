//! Send times finer than tokio's timer.
//!
//! tokio's timer wheel has millisecond slots and rounds deadlines up, so an
//! open loop paced by `sleep_until` sends its requests in bursts once per
//! millisecond (≈ 13 at once at 13 k rps), each up to 1 ms late. Every
//! target is charged for the lateness, and the bursts queue at the target
//! as no steady arrival rate would. The pacer is one OS thread that sleeps
//! on the kernel's high-resolution timer and releases each waiting send at
//! its intended time, give or take the timer's slack (≈ 50 µs on Linux).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The pacer's longest sleep: a send registered while it sleeps waits at
/// most this long past its time.
const MAX_NAP: Duration = Duration::from_micros(100);

/// Sends waiting for their time: the earliest first (a sequence number
/// breaks ties), and each one's release.
#[derive(Default)]
struct Queue {
    times: BinaryHeap<Reverse<(Instant, u64)>>,
    releases: HashMap<u64, oneshot::Sender<()>>,
    next_seq: u64,
}

/// Releases sends at their intended times; stops when dropped.
pub struct Pacer {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    stop: AtomicBool,
}

impl Pacer {
    /// Start the pacer's thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            stop: AtomicBool::new(false),
        });
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || worker.run())?;
        Ok(Self { shared })
    }

    /// Wait until `at` (at once if it has passed).
    pub async fn until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let seq = q.next_seq;
            q.next_seq += 1;
            q.times.push(Reverse((at, seq)));
            q.releases.insert(seq, tx);
        }
        // The pacer only drops a sender after sending on it, or when it stops.
        let _ = rx.await;
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Shared {
    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                while q.times.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                    if let Some(Reverse((_, seq))) = q.times.pop() {
                        if let Some(tx) = q.releases.remove(&seq) {
                            let _ = tx.send(());
                        }
                    }
                }
                q.times.peek().map(|Reverse((at, _))| *at)
            };
            let nap = next.map_or(MAX_NAP, |at| at.saturating_duration_since(now).min(MAX_NAP));
            std::thread::sleep(nap);
        }
        // Release whatever still waits, so no sender hangs.
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.releases.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn sends_are_released_at_their_time_not_on_the_millisecond() {
        let pacer = Pacer::start().unwrap();
        let mut late = Vec::new();
        for i in 0..200u64 {
            // 250 µs apart: tokio's 1 ms timer could not keep these apart.
            let at = Instant::now() + Duration::from_micros(250 + i % 3);
            pacer.until(at).await;
            let now = Instant::now();
            assert!(now >= at, "released early");
            late.push(now - at);
        }
        late.sort();
        // The median release is well inside a millisecond of its time.
        assert!(
            late[100] < Duration::from_micros(500),
            "median lateness {:?}",
            late[100]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_past_time_does_not_wait() {
        let pacer = Pacer::start().unwrap();
        let started = Instant::now();
        pacer.until(started - Duration::from_millis(5)).await;
        assert!(started.elapsed() < Duration::from_millis(5));
    }
}
