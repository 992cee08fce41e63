//! Idle upstream connections for the lean engine, one pool per proxy thread.
//!
//! Each proxy thread runs its own single-threaded runtime, so a per-thread
//! pool needs no lock and keeps a connection on the reactor that registered
//! it. Taking a connection checks it is still open without a system call
//! in the common case (the reactor already knows whether the upstream
//! closed it); the most recently used connection is taken first. For a
//! request that may not be sent twice the check is always made, since a
//! connection that then fails cannot be told from an app that failed
//! after acting on the request.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::pipeline::fence::{AppFence, IdleSlot};

/// Idle connections older than this are closed instead of reused (below the
/// usual upstream keep-alive timeouts, so the upstream rarely closes first).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Connections idle for less than this are taken without the open check
/// for a request that may be sent again: upstreams close idle connections
/// after seconds, and a connection that fails before any response byte is
/// replaced once by a new one (`pipeline::upstream::resend_on_new_connection`).
pub const CHECK_AFTER: Duration = Duration::from_secs(2);
/// Most idle connections kept per instance and thread.
pub const MAX_IDLE: usize = 256;

struct Idle {
    stream: TcpStream,
    since: Instant,
    /// Counts the connection against its app's cap while it is idle.
    slot: IdleSlot,
}

thread_local! {
    /// Per instance address, its idle connections (oldest first). A thread
    /// talks to a handful of instances, so a scan beats hashing.
    static IDLE: RefCell<Vec<(SocketAddr, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
    /// When this thread's pool was last swept.
    static SWEPT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// This thread has a task sweeping its pool while it is not empty.
    static SWEEPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While this thread's pool holds connections, sweep it every
/// [`SWEEP_EVERY`] even if the thread serves nothing meanwhile, so an
/// idle connection of an app that went over its cap on another thread is
/// closed within a sweep. The task runs on this thread's runtime (each
/// proxy thread has its own), so it sees this thread's pool.
fn keep_swept() {
    if SWEEPER.with(|s| s.replace(true)) {
        return;
    }
    tokio::spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let empty = IDLE.with(|pool| {
                let mut pool = pool.borrow_mut();
                sweep(&mut pool, Instant::now());
                pool.is_empty()
            });
            if empty {
                SWEEPER.with(|s| s.set(false));
                return;
            }
        }
    });
}

/// How often a thread sweeps its whole pool.
pub const SWEEP_EVERY: Duration = Duration::from_millis(20);

/// At most every [`SWEEP_EVERY`]: close this thread's idle connections that
/// expired (those to instances no longer in the bundle among them), and
/// those of an app whose requests in flight and idle connections have
/// grown over its cap (connections idle here while another thread opened
/// new ones).
fn sweep(pool: &mut Vec<(SocketAddr, Vec<Idle>)>, now: Instant) {
    let due = SWEPT.with(|s| {
        let due = s
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
        if due {
            s.set(Some(now));
        }
        due
    });
    if !due {
        return;
    }
    for (_, idle) in pool.iter_mut() {
        idle.retain(|c| now.saturating_duration_since(c.since) < IDLE_TIMEOUT && !c.slot.over());
    }
    pool.retain(|(_, idle)| !idle.is_empty());
}

/// An idle, still-open connection to `addr`, if there is one (`now`: a
/// clock reading the caller has). `resendable`: the request may be sent
/// again on a new connection should this one turn out dead; when it may
/// not, every connection is checked before it is handed out.
pub fn take(addr: SocketAddr, now: Instant, resendable: bool) -> Option<TcpStream> {
    let check_after = if resendable {
        CHECK_AFTER
    } else {
        Duration::ZERO
    };
    take_checking_after(addr, check_after, now)
}

fn take_checking_after(addr: SocketAddr, check_after: Duration, now: Instant) -> Option<TcpStream> {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        sweep(&mut pool, now);
        let idle = &mut pool.iter_mut().find(|(a, _)| *a == addr)?.1;
        while let Some(conn) = idle.pop() {
            let idle = now.duration_since(conn.since);
            if idle < check_after || (idle < IDLE_TIMEOUT && open(&conn.stream)) {
                return Some(conn.stream);
            }
        }
        None
    })
}

/// Close one of this thread's idle connections to `fence`'s app, if it
/// has one: room for a new connection within the app's cap.
pub fn evict_one(fence: &Arc<AppFence>) -> bool {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        for (_, idle) in pool.iter_mut() {
            if let Some(at) = idle.iter().position(|c| c.slot.of(fence)) {
                idle.remove(at);
                return true;
            }
        }
        false
    })
}

/// Keep `stream` (which just finished a response cleanly, at `now`) for
/// reuse, while its app's fence ([`AppFence::keep_idle`]) allows it.
pub fn give(addr: SocketAddr, stream: TcpStream, now: Instant, fence: &Arc<AppFence>) {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        sweep(&mut pool, now);
        let at = match pool.iter().position(|(a, _)| *a == addr) {
            Some(at) => at,
            None => {
                pool.push((addr, Vec::new()));
                pool.len() - 1
            }
        };
        let idle = &mut pool[at].1;
        // Oldest first: drop the expired ones and any over the cap.
        let expired = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
            .count();
        let over = (idle.len() - expired + 1).saturating_sub(MAX_IDLE);
        idle.drain(..expired + over);
        // Within the app's cap and the gateway's share of idle upstream
        // connections, else closed.
        if let Some(slot) = fence.keep_idle() {
            idle.push(Idle {
                stream,
                since: now,
                slot,
            });
        }
    });
    keep_swept();
}

/// Whether an idle connection is still open and silent: an upstream that
/// closed it (or sent something unasked) makes it readable.
fn open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_open_connections_and_drops_closed_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fence = Arc::new(AppFence::new(std::iter::empty()));
        assert!(take(addr, Instant::now(), true).is_none());
        let a = TcpStream::connect(addr).await.unwrap();
        let (mut server_a, _) = listener.accept().await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        let (_server_b, _) = listener.accept().await.unwrap();
        let b_port = b.local_addr().unwrap().port();
        give(addr, a, Instant::now(), &fence);
        give(addr, b, Instant::now(), &fence);
        // The most recent first.
        let got = take(addr, Instant::now(), true).unwrap();
        assert_eq!(got.local_addr().unwrap().port(), b_port);
        // The upstream closes `a` while it idles: it is not handed out.
        server_a.shutdown().await.unwrap();
        drop(server_a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(addr, Instant::now(), false).is_none());
        give(addr, got, Instant::now(), &fence);
        assert!(take(addr, Instant::now(), false).is_some());
    }
}
