//! The ClickHouse sink: a bounded queue fed with `try_send` from the
//! `logging` phase, a batcher (size or time), RowBinary inserts with retry
//! and backoff, and the [`Spool`] when ClickHouse is away.
//!
//! Order: while anything is spooled, new batches join the spool behind it
//! and the spool is replayed oldest first, so rows arrive in order.
//!
//! Degraded mode: until ClickHouse answers and its schema fits (checked, or
//! migrated when `--migrate` asked for it), no insert is tried; batches go
//! to the spool, and the schema is tried again at most once a second. A
//! gateway therefore starts and serves while ClickHouse is away, and a
//! failed insert puts it back in this mode until the schema answers again.
//!
//! Lifecycle: the sink does not stop with the shutdown signal. It keeps
//! taking events while the last requests drain, and flushes once when the
//! drain monitor says every connection is done (see [`Sink::run`]); what
//! ClickHouse does not take at once goes to the spool, which the next
//! process replays.
//!
//! Exactly once, as far as ClickHouse can tell us: an insert that fails may
//! still have been stored (the connection dropped after the body was sent).
//! Retries and spool replays therefore first look up which of the batch's
//! `request_id`s are stored and insert only the others. Two requests sent
//! with the same client `X-Request-Id` inside one failed batch count once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::event::RequestEvent;
use super::spool::{Spool, SpoolError};

/// Rows encoded between yields of the sink's thread (see [`Sink::insert`]).
const YIELD_EVERY_ROWS: usize = 64;

/// Sink settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// ClickHouse HTTP URL.
    pub url: String,
    /// Database.
    pub database: String,
    /// Rows per insert.
    pub batch_size: usize,
    /// Longest time a row waits for its batch.
    pub flush_interval: Duration,
    /// Queue capacity (rows); beyond it events are dropped and counted.
    pub queue_capacity: usize,
    /// Spool directory.
    pub spool_dir: std::path::PathBuf,
    /// Spool cap in bytes.
    pub spool_cap_bytes: u64,
    /// Create or upgrade the schema (instead of only checking it) when
    /// ClickHouse answers after an outage.
    pub migrate: bool,
}

/// Counters of the telemetry pipeline (exported on the admin listener).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events accepted into the queue.
    pub queued: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Events inserted into ClickHouse (replays included).
    pub inserted: AtomicU64,
    /// Events written to the spool.
    pub spooled: AtomicU64,
    /// Events lost because the spool was full (or unwritable).
    pub spool_lost: AtomicU64,
    /// Failed insert attempts.
    pub insert_failures: AtomicU64,
    /// Bytes waiting in the spool.
    pub spool_bytes: AtomicU64,
    /// Everything accepted so far has been inserted or spooled (set at shutdown).
    pub flushed: AtomicBool,
    /// ClickHouse answers and its schema fits, so rows are inserted; when
    /// `false` telemetry is degraded: every batch goes to the spool.
    pub connected: AtomicBool,
}

/// The producer side, cheap to clone into the proxy.
#[derive(Debug, Clone)]
pub struct Telemetry {
    tx: mpsc::Sender<RequestEvent>,
    /// Counters.
    pub stats: Arc<SinkStats>,
}

impl Telemetry {
    /// Hand an event to the sink without waiting; counts a drop when full.
    pub fn record(&self, event: RequestEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The consumer side, run by a background service.
pub struct Sink {
    rx: Option<mpsc::Receiver<RequestEvent>>,
    /// Breaker changes (`super::fence_events`).
    fences: Option<mpsc::Receiver<super::fence_events::FenceEvent>>,
    client: clickhouse::Client,
    config: SinkConfig,
    spool: std::sync::Mutex<Spool>,
    stats: Arc<SinkStats>,
    replay_failures: std::sync::atomic::AtomicU32,
    /// When the schema was last tried while degraded, and the error then
    /// (logged when it changes, not every second).
    schema_tried: std::sync::Mutex<(Option<std::time::Instant>, String)>,
}

/// Build the pair.
pub fn channel(config: SinkConfig) -> std::io::Result<(Telemetry, Sink)> {
    let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
    let stats = Arc::new(SinkStats::default());
    let spool = Spool::open(&config.spool_dir, config.spool_cap_bytes)?;
    stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
    let client = super::client(&config.url, &config.database);
    Ok((
        Telemetry {
            tx,
            stats: Arc::clone(&stats),
        },
        Sink {
            rx: Some(rx),
            fences: super::fence_events::receiver(),
            client,
            config,
            spool: std::sync::Mutex::new(spool),
            stats,
            replay_failures: std::sync::atomic::AtomicU32::new(0),
            schema_tried: std::sync::Mutex::new((None, String::new())),
        },
    ))
}

/// Take the breaker changes queued into `rows`, keeping the newest
/// [`super::fence_events::KEPT`].
fn take_fence_events(
    rx: &mut Option<mpsc::Receiver<super::fence_events::FenceEvent>>,
    rows: &mut Vec<super::fence_events::FenceEvent>,
) {
    if let Some(rx) = rx {
        while let Ok(e) = rx.try_recv() {
            rows.push(e);
        }
    }
    let over = rows.len().saturating_sub(super::fence_events::KEPT);
    rows.drain(..over);
}

/// How often the sink takes what the proxy queued.
const DRAIN_TICK: Duration = Duration::from_millis(10);
/// Request ids per lookup of the rows ClickHouse holds already: a request
/// id is at most 200 bytes (400 quoted), so the query text stays below
/// ClickHouse's 256 KiB `max_query_size`.
const LOOKUP_IDS: usize = 500;
/// How often a degraded sink asks ClickHouse for its schema again.
const SCHEMA_RETRY: Duration = Duration::from_secs(1);
/// Longest time the final flush inserts before spooling what is left
/// (the drain monitor keeps 2.5 s for it).
const FINAL_BUDGET: Duration = Duration::from_millis(1500);
/// Longest time one insert may take before it counts as failed.
const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

impl Sink {
    /// Run until `finish` resolves, then flush what is queued once. The
    /// server resolves `finish` after shutdown, once every connection has
    /// closed (or the drain deadline is near), so that the events of the
    /// last requests are in the queue by then.
    pub async fn run(mut self, mut finish: impl std::future::Future<Output = ()> + Unpin) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut fences = self.fences.take();
        let mut fence_rows = Vec::new();
        let mut batch = Vec::with_capacity(self.config.batch_size);
        // Events taken off the queue while an insert or a replay is under
        // way; sized like a batch so it is not regrown (and copied) per flush.
        let mut held = Vec::with_capacity(self.config.batch_size);
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.spool().is_empty() {
            tracing::info!(bytes = self.spool().bytes(), "telemetry spool holds batches from an earlier run; replaying when ClickHouse answers");
        }
        // The queue is drained on a short tick rather than awaited per
        // event: a receiver waiting on the queue would be woken by every
        // request (a cross-thread wake-up and a context switch on the
        // proxy's core each time); polling costs 1/DRAIN_TICK wake-ups a
        // second whatever the rate.
        let mut drain = tokio::time::interval(DRAIN_TICK.min(self.config.flush_interval));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closed = false;
        // Set when `finish` resolved in the middle of an insert or a
        // replay, which was then abandoned (it may or may not have stored
        // its rows).
        let mut interrupted = false;
        'run: while !closed {
            tokio::select! {
                _ = drain.tick() => {
                    closed = take_queued(&mut rx, &mut batch);
                    while batch.len() >= self.config.batch_size {
                        let mut rest = batch.split_off(self.config.batch_size);
                        let done = self.draining(self.flush(&mut batch), &mut rx, &mut held, &mut finish).await;
                        batch.append(&mut rest);
                        batch.append(&mut held);
                        if done.is_none() {
                            interrupted = true;
                            break 'run;
                        }
                    }
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        let done = self.draining(self.flush(&mut batch), &mut rx, &mut held, &mut finish).await;
                        batch.append(&mut held);
                        if done.is_none() {
                            interrupted = true;
                            break 'run;
                        }
                    }
                    let done = self.draining(self.replay(), &mut rx, &mut held, &mut finish).await;
                    batch.append(&mut held);
                    if done.is_none() {
                        break 'run;
                    }
                    take_fence_events(&mut fences, &mut fence_rows);
                    if !fence_rows.is_empty() && self.stats.connected.load(Ordering::Relaxed) {
                        let done = self.draining(self.insert_fences(&fence_rows), &mut rx, &mut held, &mut finish).await;
                        batch.append(&mut held);
                        match done {
                            None => break 'run,
                            Some(Ok(())) => fence_rows.clear(),
                            Some(Err(e)) => tracing::debug!(error = %e, rows = fence_rows.len(), "breaker changes not stored yet; trying again"),
                        }
                    }
                }
                _ = &mut finish => break,
            }
        }
        take_queued(&mut rx, &mut batch);
        self.final_flush(&batch, interrupted).await;
        take_fence_events(&mut fences, &mut fence_rows);
        if !fence_rows.is_empty() {
            let stored =
                tokio::time::timeout(Duration::from_millis(500), self.insert_fences(&fence_rows))
                    .await;
            if !matches!(stored, Ok(Ok(()))) {
                tracing::warn!(
                    rows = fence_rows.len(),
                    "breaker changes not stored in ClickHouse before exit (each is in the log)"
                );
            }
        }
        self.stats.flushed.store(true, Ordering::Relaxed);
        tracing::info!(spooled_bytes = self.spool().bytes(), "telemetry flushed");
        // Until the process exits: a request that finishes now (a
        // connection outlived the drain deadline) still has its event kept,
        // in the spool, for the next process to replay.
        batch.clear();
        loop {
            tokio::time::sleep(DRAIN_TICK).await;
            if take_queued(&mut rx, &mut batch) {
                return;
            }
            if !batch.is_empty() {
                self.spool_batch(&mut batch);
            }
        }
    }

    /// The last flush, within [`FINAL_BUDGET`]: insert while ClickHouse
    /// takes the rows in time, spool the rest (the spool is on disk at
    /// once; the next process replays it, skipping rows already stored).
    /// After an interrupted insert everything is spooled: the replay then
    /// stores each row once whatever that insert did.
    async fn final_flush(&self, rows: &[RequestEvent], interrupted: bool) {
        let deadline = tokio::time::Instant::now() + FINAL_BUDGET;
        let mut inserting =
            !interrupted && self.stats.connected.load(Ordering::Relaxed) && !self.backlog();
        for chunk in rows.chunks(self.config.batch_size.max(1)) {
            if inserting {
                match tokio::time::timeout_at(deadline, self.insert(chunk)).await {
                    Ok(Ok(())) => {
                        self.stats
                            .inserted
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(rows = chunk.len(), error = %e, "final telemetry insert failed; spooling the rest")
                    }
                    Err(_) => {
                        tracing::warn!(rows = chunk.len(), "final telemetry insert took too long; spooling the rest (the replay skips rows it stored)")
                    }
                }
                inserting = false;
            }
            self.spool_slice(chunk);
        }
    }

    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `work` (an insert or a replay) while still taking events off the
    /// queue every drain tick, into `held`; when a slow ClickHouse lets a
    /// whole batch pile up there, it goes to the spool. A slow ClickHouse
    /// thus never fills the queue (which would drop events); the spool is
    /// replayed once inserts go through again.
    ///
    /// `None` when `finish` resolved first: the work is abandoned.
    async fn draining<F: std::future::Future>(
        &self,
        work: F,
        rx: &mut mpsc::Receiver<RequestEvent>,
        held: &mut Vec<RequestEvent>,
        finish: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Option<F::Output> {
        tokio::pin!(work);
        let mut drain = tokio::time::interval(DRAIN_TICK.min(self.config.flush_interval));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        drain.tick().await;
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = &mut *finish => return None,
                _ = drain.tick() => {
                    take_queued(rx, held);
                    if held.len() >= self.config.batch_size {
                        self.spool_batch(held);
                    }
                }
            }
        }
    }

    async fn insert_fences(
        &self,
        rows: &[super::fence_events::FenceEvent],
    ) -> Result<(), clickhouse::error::Error> {
        let insert = async {
            let mut insert = self
                .client
                .insert::<super::fence_events::FenceEvent>("fence_events")
                .await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        tokio::time::timeout(INSERT_TIMEOUT, insert)
            .await
            .unwrap_or(Err(clickhouse::error::Error::TimedOut))
    }

    async fn insert(&self, rows: &[RequestEvent]) -> Result<(), clickhouse::error::Error> {
        tokio::time::timeout(INSERT_TIMEOUT, self.insert_rows(rows))
            .await
            .unwrap_or(Err(clickhouse::error::Error::TimedOut))
    }

    async fn insert_rows(&self, rows: &[RequestEvent]) -> Result<(), clickhouse::error::Error> {
        let mut insert = self.client.insert::<RequestEvent>("requests").await?;
        for (i, row) in rows.iter().enumerate() {
            insert.write(row).await?;
            // Linux (EEVDF) lets a running thread finish its slice, about
            // 2 ms here, before a woken one may preempt it. Encoding and
            // sending a batch was one such slice, and on a core shared with
            // the proxy, requests waited for it (`perf sched`: the proxy
            // thread off the CPU for the sink's whole 2.1 ms run). Yielding
            // every few rows hands the core back whenever the proxy is
            // runnable; when it is not, the yield returns at once.
            if i % YIELD_EVERY_ROWS == YIELD_EVERY_ROWS - 1 {
                std::thread::yield_now();
            }
        }
        insert.end().await
    }

    /// Insert the rows ClickHouse does not hold yet, judged by request id:
    /// the path for a batch whose earlier insert failed without saying
    /// whether ClickHouse kept it (the connection dropped after the body was
    /// sent). Costs one lookup over the batch's time range, never paid on
    /// the normal path. Returns how many rows were inserted.
    async fn insert_unseen(
        &self,
        rows: &[RequestEvent],
    ) -> Result<usize, clickhouse::error::Error> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Seen {
            request_id: String,
        }
        // The ids go into the query text, which ClickHouse caps
        // (`max_query_size`, 256 KiB by default): ask in chunks.
        let mut seen = std::collections::HashSet::new();
        for chunk in rows.chunks(LOOKUP_IDS) {
            let (lo, hi) = chunk
                .iter()
                .fold((u32::MAX, 0), |(l, h), r| (l.min(r.time), h.max(r.time)));
            let ids: Vec<&str> = chunk.iter().map(|r| r.request_id.as_str()).collect();
            let found = self
                .client
                .query(
                    "SELECT request_id FROM requests WHERE time >= toDateTime(?) AND time <= toDateTime(?) \
                     AND request_id IN (SELECT arrayJoin(?))",
                )
                .bind(lo)
                .bind(hi)
                .bind(ids)
                .fetch_all::<Seen>()
                .await?;
            seen.extend(found.into_iter().map(|s| s.request_id));
        }
        let fresh: Vec<RequestEvent> = rows
            .iter()
            .filter(|r| !seen.contains(&r.request_id))
            .cloned()
            .collect();
        if !seen.is_empty() {
            tracing::info!(
                already_stored = rows.len() - fresh.len(),
                "a failed insert had reached ClickHouse; not inserting those rows again"
            );
        }
        if !fresh.is_empty() {
            self.insert(&fresh).await?;
        }
        Ok(fresh.len())
    }

    /// Whether rows may be inserted: ClickHouse answered and its schema
    /// fits. While degraded, asks again (migrating when configured) at most
    /// once a second.
    async fn schema_ready(&self) -> bool {
        if self.stats.connected.load(Ordering::Relaxed) {
            return true;
        }
        {
            let mut tried = self.schema_tried.lock().unwrap_or_else(|e| e.into_inner());
            if tried.0.is_some_and(|t| t.elapsed() < SCHEMA_RETRY) {
                return false;
            }
            tried.0 = Some(std::time::Instant::now());
        }
        let url = &self.config.url;
        let prepared = super::schema::prepare(
            url,
            &self.config.database,
            self.config.migrate,
            SCHEMA_RETRY * 5,
        )
        .await;
        let error = match prepared {
            Ok(()) => {
                tracing::info!(url = %url, spooled_bytes = self.spool().bytes(), "ClickHouse answers and its schema fits: telemetry connected");
                self.stats.connected.store(true, Ordering::Relaxed);
                return true;
            }
            Err(e) => e.to_string(),
        };
        let mut tried = self.schema_tried.lock().unwrap_or_else(|e| e.into_inner());
        if tried.1 != error {
            tracing::warn!(%error, "telemetry degraded: batches go to the spool until ClickHouse answers");
            tried.1 = error;
        }
        false
    }

    /// Note a failed insert: degraded until the schema answers again.
    fn disconnected(&self) {
        if self.stats.connected.swap(false, Ordering::Relaxed) {
            let mut tried = self.schema_tried.lock().unwrap_or_else(|e| e.into_inner());
            *tried = (Some(std::time::Instant::now()), String::new());
        }
    }

    /// Does the spool hold batches that new ones must queue behind? Only
    /// for its owner: another process (the old one during an upgrade)
    /// replays its own backlog, so this one inserts directly.
    fn backlog(&self) -> bool {
        let spool = self.spool();
        spool.is_owner() && !spool.is_empty()
    }

    /// Insert with retries; spool when ClickHouse stays away.
    async fn flush(&self, batch: &mut Vec<RequestEvent>) {
        if !self.schema_ready().await {
            self.spool_batch(batch);
            return;
        }
        if self.backlog() {
            self.replay().await;
        }
        if !self.backlog() {
            for (attempt, backoff) in [0u64, 100, 400].into_iter().enumerate() {
                if backoff > 0 {
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                // After a failure the rows may be stored already.
                let result = if attempt == 0 {
                    self.insert(batch).await.map(|()| batch.len())
                } else {
                    self.insert_unseen(batch).await
                };
                match result {
                    Ok(n) => {
                        self.stats.inserted.fetch_add(n as u64, Ordering::Relaxed);
                        batch.clear();
                        return;
                    }
                    Err(e) => {
                        self.stats.insert_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(attempt = attempt + 1, rows = batch.len(), error = %e, "telemetry insert failed");
                    }
                }
            }
            self.disconnected();
        }
        self.spool_batch(batch);
    }

    fn spool_batch(&self, batch: &mut Vec<RequestEvent>) {
        self.spool_slice(batch);
        batch.clear();
    }

    fn spool_slice(&self, batch: &[RequestEvent]) {
        let n = batch.len() as u64;
        let mut spool = self.spool();
        match spool.push(batch) {
            Ok(()) => {
                self.stats.spooled.fetch_add(n, Ordering::Relaxed);
            }
            Err(e @ SpoolError::Full { .. }) | Err(e @ SpoolError::Io(_)) => {
                self.stats.spool_lost.fetch_add(n, Ordering::Relaxed);
                tracing::error!(events = n, error = %e, "telemetry events lost");
            }
        }
        self.stats
            .spool_bytes
            .store(spool.bytes(), Ordering::Relaxed);
    }

    /// Insert spooled batches oldest first until one fails (the owner of
    /// the spool only, and only while ClickHouse is connected).
    async fn replay(&self) {
        match self.spool().try_own() {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take over the telemetry spool");
                return;
            }
        }
        // Other writers (a predecessor, a successor) add batches too.
        if let Err(e) = self.spool().rescan() {
            tracing::warn!(error = %e, "cannot read the telemetry spool");
        }
        if self.spool().is_empty() || !self.schema_ready().await {
            return;
        }
        let Ok(files) = self.spool().files() else {
            return;
        };
        for (_, path) in files {
            let rows = match Spool::read(&path) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "unreadable spool file moved aside");
                    let _ = self.spool().quarantine(&path);
                    continue;
                }
            };
            // A spooled batch may have reached ClickHouse before its insert
            // failed; replay only what is missing.
            match self.insert_unseen(&rows).await {
                Ok(n) => {
                    self.replay_failures.store(0, Ordering::Relaxed);
                    self.stats.inserted.fetch_add(n as u64, Ordering::Relaxed);
                    if let Err(e) = self.spool().remove(&path) {
                        tracing::error!(file = %path.display(), error = %e, "cannot delete replayed spool file");
                    }
                    tracing::info!(rows = rows.len(), "replayed a spooled telemetry batch");
                }
                Err(e) => {
                    if matches!(
                        e,
                        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut
                    ) {
                        self.disconnected();
                    }
                    let failures = self.replay_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    // ClickHouse answers but refuses the rows (e.g. a schema
                    // error): do not retry forever, keep them aside.
                    if failures >= 20 && self.client.query("SELECT 1").execute().await.is_ok() {
                        let moved = self.spool().quarantine(&path);
                        if let Ok(to) = moved {
                            tracing::error!(file = %to.display(), error = %e, "spooled batch refused 20 times; moved aside");
                        }
                        self.replay_failures.store(0, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        let bytes = self.spool().bytes();
        self.stats.spool_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// Move what is queued into `into`; `true` when the queue is closed.
fn take_queued(rx: &mut mpsc::Receiver<RequestEvent>, into: &mut Vec<RequestEvent>) -> bool {
    loop {
        match rx.try_recv() {
            Ok(ev) => into.push(ev),
            Err(mpsc::error::TryRecvError::Empty) => return false,
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
        }
    }
}
