//! The on-disk spool: batches that could not be inserted wait here, in
//! order, until ClickHouse is back.
//!
//! Format: one file per batch, `<sequence, 20 digits>-<writer>.jsonl`, one
//! [`RequestEvent`] per line. Invariants:
//!
//! - a file is complete or absent: it is written as `.tmp`, fsynced, then
//!   renamed (and the directory fsynced), so a crash never leaves half a
//!   batch;
//! - sequence numbers only grow (the next one is one past the largest file
//!   found at start), so replay in file-name order is oldest first; the
//!   writer's id in the name (random per opened spool) keeps two processes
//!   sharing the directory (the old and the new one during an upgrade)
//!   from ever writing the same file;
//! - one process at a time *owns* the spool (an advisory lock on
//!   `.owner`): only the owner replays and removes batches and discards
//!   `.tmp` leftovers. Another process only adds batches; it takes over
//!   when the owner exits (a graceful upgrade, or a crash: the kernel
//!   drops the lock with the process);
//! - the spool never exceeds its byte cap: a batch that would not fit is
//!   dropped whole, counted and logged — the only way events are lost;
//! - a file is deleted only after its events were inserted; a crash between
//!   the two replays it again, and replay inserts only the rows whose
//!   `request_id` ClickHouse does not hold yet (the sink's `insert_unseen`),
//!   so the replay stores each event once.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::event::RequestEvent;

/// A spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    cap_bytes: u64,
    next_seq: u64,
    /// Bytes of every batch in the directory (whoever wrote them), as of
    /// the last scan plus what this process added and removed since.
    bytes: u64,
    /// The lock file, once this process owns the spool.
    owner: Option<fs::File>,
    /// This writer's id in file names.
    writer: u32,
}

/// Why a batch was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The batch does not fit under the cap.
    #[error("spool full ({used} of {cap} bytes); batch of {events} events dropped")]
    Full {
        /// Bytes in use.
        used: u64,
        /// Cap.
        cap: u64,
        /// Events dropped.
        events: usize,
    },
    /// File system trouble.
    #[error("spool I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Spool {
    /// Open (creating) `dir`, finding batches left by an earlier run, and
    /// take ownership unless another process holds it.
    pub fn open(dir: &Path, cap_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut spool = Self {
            dir: dir.to_path_buf(),
            cap_bytes,
            next_seq: 0,
            bytes: 0,
            owner: None,
            writer: rand::random(),
        };
        spool.rescan()?;
        spool.try_own()?;
        Ok(spool)
    }

    /// Count what the directory holds (every writer's batches) and move
    /// the next sequence number past it.
    pub fn rescan(&mut self) -> std::io::Result<()> {
        self.bytes = 0;
        for (seq, path) in self.files()? {
            self.next_seq = self.next_seq.max(seq + 1);
            self.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        }
        Ok(())
    }

    /// Does this process own the spool (replay, remove)?
    pub fn is_owner(&self) -> bool {
        self.owner.is_some()
    }

    /// Take ownership when no other process holds it (cheap: one
    /// non-blocking lock attempt). Returns whether this process owns it.
    /// On taking over, the batches other processes left are counted and
    /// their half-written `.tmp` files discarded.
    pub fn try_own(&mut self) -> std::io::Result<bool> {
        if self.owner.is_some() {
            return Ok(true);
        }
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".owner"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(false),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        self.owner = Some(lock);
        for entry in fs::read_dir(&self.dir)?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        self.rescan()?;
        Ok(true)
    }

    /// Spooled batches, oldest first.
    pub fn files(&self) -> std::io::Result<Vec<(u64, PathBuf)>> {
        let mut files: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let stem = p.file_name()?.to_str()?.strip_suffix(".jsonl")?;
                let seq = stem.split_once('-').map_or(stem, |(seq, _pid)| seq);
                let seq = seq.parse().ok()?;
                Some((seq, p))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Is anything waiting?
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append a batch (the cap counts every writer's batches, read afresh).
    pub fn push(&mut self, batch: &[RequestEvent]) -> Result<(), SpoolError> {
        self.rescan()?;
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for ev in batch {
            serde_json::to_writer(&mut buf, ev).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        if self.bytes + buf.len() as u64 > self.cap_bytes {
            return Err(SpoolError::Full {
                used: self.bytes,
                cap: self.cap_bytes,
                events: batch.len(),
            });
        }
        let name = format!("{:020}-{:08x}.jsonl", self.next_seq, self.writer);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(&name))?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.next_seq += 1;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Read a spooled batch.
    pub fn read(path: &Path) -> std::io::Result<Vec<RequestEvent>> {
        let text = fs::read_to_string(path)?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }

    /// Forget a batch that was inserted.
    pub fn remove(&mut self, path: &Path) -> std::io::Result<()> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path)?;
        self.bytes = self.bytes.saturating_sub(len);
        Ok(())
    }

    /// Move a batch that keeps failing aside (`dead/`), out of the replay order.
    pub fn quarantine(&mut self, path: &Path) -> std::io::Result<PathBuf> {
        let dead = self.dir.join("dead");
        fs::create_dir_all(&dead)?;
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let to = dead.join(path.file_name().unwrap_or_default());
        fs::rename(path, &to)?;
        self.bytes = self.bytes.saturating_sub(len);
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(i: u64) -> RequestEvent {
        RequestEvent {
            time: 1_800_000_000,
            time_us: 1_800_000_000_000_000 + i,
            request_id: format!("r{i}"),
            trace_id: String::new(),
            instance: "t".into(),
            policy_version: "v".into(),
            app: "a".into(),
            route: "r".into(),
            method: "GET".into(),
            status: 200,
            consumer: String::new(),
            outcome: "ok".into(),
            rejected_by: String::new(),
            request_verdict: "unchecked".into(),
            response_verdict: "unchecked".into(),
            violations: String::new(),
            bytes_in: 0,
            bytes_out: 10,
            client_ip: "127.0.0.1".into(),
            upstream: "http://127.0.0.1:1".into(),
            attempts: 1,
            total_us: 100,
            gateway_us: 10,
            auth_us: 0,
            limits_us: 0,
            request_validation_us: 0,
            upstream_connect_us: 0,
            upstream_ttfb_us: 80,
            upstream_total_us: 90,
            response_validation_us: 0,
        }
    }

    #[test]
    fn batches_survive_reopen_in_order_and_the_cap_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(&[event(1), event(2)]).unwrap();
        s.push(&[event(3)]).unwrap();
        std::fs::write(dir.path().join("junk.jsonl.tmp"), "half").unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let files = s.files().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(Spool::read(&files[0].1).unwrap(), vec![event(1), event(2)]);
        assert!(
            !dir.path().join("junk.jsonl.tmp").exists(),
            "partial files are discarded"
        );
        s.push(&[event(4)]).unwrap();
        assert_eq!(
            s.files().unwrap().last().unwrap().0,
            2,
            "sequence continues after reopen"
        );
        for (_, p) in s.files().unwrap() {
            s.remove(&p).unwrap();
        }
        assert!(s.is_empty());

        drop(s);

        let mut tiny = Spool::open(&dir.path().join("tiny"), 600).unwrap();
        tiny.push(&[event(1)]).unwrap();
        assert!(matches!(
            tiny.push(&[event(2), event(3)]),
            Err(SpoolError::Full { events: 2, .. })
        ));
    }

    #[test]
    fn two_processes_share_a_spool_and_one_owns_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(old.is_owner());
        old.push(&[event(1)]).unwrap();
        // A second writer (a new process during an upgrade) adds batches
        // but neither replays nor discards.
        let mut new = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!new.is_owner());
        assert!(!new.try_own().unwrap());
        std::fs::write(dir.path().join("x.jsonl.tmp"), "being written").unwrap();
        new.push(&[event(2)]).unwrap();
        old.push(&[event(3)]).unwrap();
        let names: std::collections::HashSet<_> =
            old.files().unwrap().into_iter().map(|(_, p)| p).collect();
        assert_eq!(names.len(), 3, "no batch overwrote another: {names:?}");
        assert!(dir.path().join("x.jsonl.tmp").exists());
        // The owner leaves: the other takes over and counts every batch.
        drop(old);
        assert!(new.try_own().unwrap());
        assert!(!dir.path().join("x.jsonl.tmp").exists());
        let mut events: Vec<_> = new
            .files()
            .unwrap()
            .iter()
            .flat_map(|(_, p)| Spool::read(p).unwrap())
            .collect();
        events.sort_by_key(|e| e.time_us);
        assert_eq!(events, vec![event(1), event(2), event(3)]);
        let on_disk: u64 = new
            .files()
            .unwrap()
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(new.bytes(), on_disk);
    }
}
