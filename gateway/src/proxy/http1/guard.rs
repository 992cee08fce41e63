//! Time limits on a connection's I/O with one reusable timer per side.
//!
//! A per-call timeout (tokio's or Pingora's) registers a new timer with the
//! runtime every time an operation has to wait: a lock, a tree or wheel
//! insert and a clock reading, for the upstream read of every request. A
//! [`Guard`] keeps one registered `Sleep` for the connection's life and
//! arms it only when the operation is not ready at once; moving a
//! registered timer to a later instant is one compare-and-swap in tokio
//! (`TimerEntry::reset` extends the expiry in place), so the common case
//! costs no registration at all.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The operation did not finish within its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// One side's timer (client or upstream), reused by each of its operations.
pub struct Guard {
    timer: Pin<Box<Sleep>>,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            // Not polled until an operation waits, so it never fires unarmed.
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }
}

impl Guard {
    /// Run `op`, giving up once it has waited `limit` since it first had to
    /// wait. An operation that completes on its first poll reads no clock.
    pub async fn limit<F: Future>(&mut self, limit: Duration, op: F) -> Result<F::Output, Elapsed> {
        self.run(op, || Instant::now() + limit).await
    }

    /// Run `op`, giving up at `deadline` (from a clock reading the caller
    /// already has).
    pub async fn until<F: Future>(
        &mut self,
        deadline: std::time::Instant,
        op: F,
    ) -> Result<F::Output, Elapsed> {
        self.run(op, || deadline.into()).await
    }

    async fn run<F: Future>(
        &mut self,
        op: F,
        deadline: impl FnOnce() -> Instant,
    ) -> Result<F::Output, Elapsed> {
        let mut op = std::pin::pin!(op);
        let timer = &mut self.timer;
        let mut deadline = Some(deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = op.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            // Armed once, when the operation first has to wait.
            if let Some(at) = deadline.take() {
                timer.as_mut().reset(at());
            }
            timer.as_mut().poll(cx).map(|()| Err(Elapsed))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ready_operation_never_times_out() {
        let mut guard = Guard::default();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(guard.limit(Duration::ZERO, async { 7 }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_operation_gets_its_limit_from_when_it_first_waits() {
        let mut guard = Guard::default();
        let started = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(
            guard.limit(Duration::from_secs(2), slow).await,
            Err(Elapsed)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // The same timer serves the next operation, with its own limit.
        let quick = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(guard.limit(Duration::from_secs(5), quick).await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // A shorter limit than the timer's last one still holds.
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(
            guard.limit(Duration::from_millis(500), slow).await,
            Err(Elapsed)
        );
        assert_eq!(started.elapsed(), Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_counts_from_the_callers_reading() {
        let mut guard = Guard::default();
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let slow = tokio::time::sleep(Duration::from_secs(10));
        let deadline = (t0 + Duration::from_secs(3)).into_std();
        assert_eq!(guard.until(deadline, slow).await, Err(Elapsed));
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
    }
}
