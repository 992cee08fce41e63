//! What a compile reuses from the compiles before it in this process:
//! parsed documents (by path and the digest of their text) and compiled
//! apps (by the digest of everything they are compiled from: the app's
//! settings and every document they name, directly or through `$ref`s).
//! So a new version of a large estate compiles only what changed, and
//! shares the rest — in memory too — with the version it replaces.
//!
//! Content-addressed, so reuse never changes a result: compiling is still
//! a pure function of the files. Entries used neither by the last two
//! compiles nor in the last 30 seconds are dropped when a compile ends
//! (the version being replaced, and the one a reviewer compares it with,
//! stay warm).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::contract::documents::Document;
use crate::policy::bundle::App;
use crate::policy::model::PolicyFile;
use crate::source::PolicyError;

/// Policy files larger than this, or declaring consumers, are read afresh
/// by every compile rather than kept (a million consumers are not held
/// twice).
pub const MAX_CACHED_TEXT: usize = 1 << 20;

/// A policy file as a compile reads it: parsed and checked against the
/// policy schema, with what the version and the apps' digests need.
pub struct PolicySource {
    /// The file.
    pub file: PolicyFile,
    /// Its canonical JSON (what the policy version is the digest of);
    /// empty for a large file read one consumer at a time
    /// (`compile::bulk`), whose digest was written as it was read.
    pub canonical: Vec<u8>,
    /// Per app of the file, in order: the digest of its settings, and the
    /// strings in them (the documents they may name); `None` when they
    /// cannot be written out (the app is then compiled every time).
    pub apps: Vec<Option<(Digest32, Vec<String>)>>,
}

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

struct Entry<T> {
    item: T,
    /// The last compile that used it.
    used: u64,
    /// When.
    at: Instant,
}

/// Entries used this recently are kept whatever compiled since.
const KEEP_FOR: Duration = Duration::from_secs(30);

/// Things of one kind, by the digest of what they were made from.
struct Shelf<K, T> {
    entries: HashMap<K, Entry<Arc<T>>>,
}

impl<K, T> Default for Shelf<K, T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, T> Shelf<K, T> {
    /// The thing under `key`, used by `compile`.
    fn take(&mut self, key: &K, compile: u64) -> Option<Arc<T>> {
        let e = self.entries.get_mut(key)?;
        (e.used, e.at) = (compile, Instant::now());
        Some(Arc::clone(&e.item))
    }

    /// Keep `item` under `key`, made by `compile`.
    fn keep(&mut self, key: K, item: &Arc<T>, compile: u64) {
        let entry = Entry {
            item: Arc::clone(item),
            used: compile,
            at: Instant::now(),
        };
        self.entries.insert(key, entry);
    }

    /// Drop what neither a compile since `oldest` nor anyone in the last
    /// [`KEEP_FOR`] used.
    fn forget_unused(&mut self, oldest: u64, now: Instant) {
        self.entries
            .retain(|_, e| e.used >= oldest || now.duration_since(e.at) < KEEP_FOR);
    }
}

#[derive(Default)]
struct Cache {
    /// Compiles begun.
    compiles: u64,
    documents: Shelf<(String, Digest32), Document>,
    files: Shelf<(String, Digest32), PolicySource>,
    apps: Shelf<Digest32, App>,
}

fn cache() -> MutexGuard<'static, Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let lock = CACHE.get_or_init(Mutex::default);
    // The cache holds no invariant a panic elsewhere could break.
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// One compile's use of the cache. Dropping it ends the compile: entries
/// neither it nor the compile before it used are dropped.
pub struct Session {
    compile: u64,
}

impl Session {
    /// Begin a compile.
    pub fn begin() -> Self {
        let mut c = cache();
        c.compiles += 1;
        Self {
            compile: c.compiles,
        }
    }

    /// The document at `path` with `text`: parsed before, or now.
    pub fn document(&self, path: &str, text: &str) -> Result<Arc<Document>, PolicyError> {
        let digest: Digest32 = Sha256::digest(text).into();
        let key = (path.to_string(), digest);
        if let Some(doc) = cache().documents.take(&key, self.compile) {
            return Ok(doc);
        }
        // Parsed without the lock: another compile may parse it too.
        let value = crate::contract::documents::parse_text(path, text)?;
        let doc = Arc::new(Document::with_digest(path, value, digest));
        cache().documents.keep(key, &doc, self.compile);
        Ok(doc)
    }

    /// The policy file at `path` with `text`: read before, or now with
    /// `read` (kept when it has no errors, is not too large and declares
    /// no consumers).
    pub fn policy_file(
        &self,
        path: &str,
        text: &str,
        read: impl FnOnce() -> Result<PolicySource, Vec<PolicyError>>,
    ) -> Result<Arc<PolicySource>, Vec<PolicyError>> {
        if text.len() > MAX_CACHED_TEXT {
            return read().map(Arc::new);
        }
        let key = (path.to_string(), Sha256::digest(text).into());
        if let Some(source) = cache().files.take(&key, self.compile) {
            return Ok(source);
        }
        let source = Arc::new(read()?);
        if !source.file.consumers.is_empty() {
            // Consumers are many and compiled whole each time: their
            // declarations are not held between compiles.
            return Ok(source);
        }
        cache().files.keep(key, &source, self.compile);
        Ok(source)
    }

    /// The app compiled from inputs with `digest`, if one was.
    pub fn app(&self, digest: &Digest32) -> Option<Arc<App>> {
        cache().apps.take(digest, self.compile)
    }

    /// Keep `app`, compiled from inputs with `digest`, for later compiles.
    pub fn keep_app(&self, digest: Digest32, app: &Arc<App>) {
        cache().apps.keep(digest, app, self.compile);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let oldest = self.compile.saturating_sub(1);
        let now = Instant::now();
        let mut c = cache();
        c.documents.forget_unused(oldest, now);
        c.files.forget_unused(oldest, now);
        c.apps.forget_unused(oldest, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path no other test uses.
    const PATH: &str = "schemas/cache-test.json";

    #[test]
    fn a_document_is_parsed_once_per_text_and_dropped_when_unused() {
        let first = Session::begin();
        let a = first
            .document(PATH, "{\"type\": \"object\"}")
            .expect("parses");
        let again = first
            .document(PATH, "{\"type\": \"object\"}")
            .expect("parses");
        assert!(Arc::ptr_eq(&a, &again), "the same text is parsed once");
        let other = first
            .document(PATH, "{\"type\": \"array\"}")
            .expect("parses");
        assert!(!Arc::ptr_eq(&a, &other), "another text is another document");
        assert!(first.document("schemas/y.json", "{nope").is_err());
        drop(first);
        let key = (PATH.to_string(), *a.digest());
        // Kept for a while whatever compiles; once that has passed, two
        // more compiles that do not use it drop it.
        drop(Session::begin());
        drop(Session::begin());
        assert!(
            cache().documents.entries.contains_key(&key),
            "kept for a while"
        );
        let long_ago = Instant::now().checked_sub(KEEP_FOR * 2).expect("an uptime");
        if let Some(e) = cache().documents.entries.get_mut(&key) {
            e.at = long_ago;
        }
        drop(Session::begin());
        drop(Session::begin());
        assert!(
            !cache().documents.entries.contains_key(&key),
            "then dropped"
        );
    }
}
