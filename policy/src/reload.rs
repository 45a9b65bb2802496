//! Hot reload: an [`Engine`] holds the policy set in force and swaps in a new one atomically
//! when its directory changes and the new set loads and validates. A set that fails keeps the
//! old one in force, and the log says why. Every decision uses one set from start to end.
//!
//! A change is noticed by content: a poll hashes the files a load reads, the way the set's
//! version is computed, so an edit that keeps the size within one tick of the file system's clock
//! is seen too. It hashes only when the files' sizes, inodes or change times moved since the last
//! look, or changed within a few seconds of it ([`stamp`]); otherwise a poll reads no file. A set is put in force only if the files did
//! not change while they were read: the directory is hashed before and after the load, and both
//! must equal the loaded set's version. Otherwise (a file saved by truncating and then writing,
//! read between the two) nothing changes and the next poll tries again. A watcher also loads a
//! change only once polls at least [`QUIET`] apart have found the same content, so that a file
//! read after it was truncated and before its writing began is not put in force (the
//! before-and-after check cannot see a write that has not started).

mod stamp;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::decision::Decision;
use crate::error::LoadError;
use crate::loader::{is_set_file, version_of};
use crate::policy_set::PolicySet;
use crate::request::Request;

/// How often a watching engine looks at its directory.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a watching engine sees the directory's content unchanged before it loads a change:
/// a file saved by truncating and then writing it, read in between, is a valid set without that
/// file's policies (a `forbid` gone), and the check that the files did not change while they
/// were read cannot see a write that had not started. Editors and `cp` finish such a save
/// within milliseconds. With the default poll interval, a change loads at the second poll that
/// finds it.
pub(crate) const QUIET: Duration = Duration::from_millis(500);

/// How long [`Engine::new`] wants the files unchanged before it reads them: shorter than
/// [`QUIET`], which a running sidecar can afford, as the save it guards against (a truncate,
/// then a write) takes milliseconds.
pub(crate) const START_QUIET: Duration = Duration::from_millis(200);
/// Longest [`Engine::new`] waits for the files to be quiet before it reads them anyway.
pub(crate) const START_WAIT: Duration = Duration::from_secs(5);
/// How many times [`Engine::new`] reads files that change while it reads them.
pub(crate) const START_ATTEMPTS: usize = 10;
/// Pause between two such reads.
const START_RETRY: Duration = Duration::from_millis(100);

/// The policy set in force, reloadable.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    watcher: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The directory's content is the set already in force.
    Unchanged,
    /// A new set replaced the old one.
    Replaced {
        /// The version that was in force.
        old: String,
        /// The version now in force.
        new: String,
    },
    /// The files changed while they were read (a save in progress): the set in force stays, and
    /// a watching engine tries again at its next poll.
    Unsettled,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    /// The directory's [`fingerprint`] after the last attempt; `None` when the next poll must
    /// reload whatever it finds (the last attempt read files that were changing).
    seen: Mutex<Option<String>>,
    /// The last [`stamp::Stamp`] a poll took and the fingerprint hashed with it: while the
    /// stamp stays the same, the fingerprint is the same without reading the files.
    stamped: Mutex<Option<(stamp::Stamp, String)>>,
    /// A changed content a poll found, and when: it is loaded once a poll [`QUIET`] later or
    /// more finds it still.
    first_seen: Mutex<Option<(String, Instant)>>,
}

// === impl Engine ===

impl Engine {
    /// Loads `dir`; the engine does not watch it (call [`Engine::reload`] to pick up changes).
    ///
    /// The files are read once none has changed for [`START_QUIET`] (waiting [`START_WAIT`] at
    /// most), and read again while they change during the read ([`START_ATTEMPTS`] times at
    /// most, then it is an error): a set caught half saved (a file truncated and not yet
    /// written, a `forbid` missing) is never the first one in force.
    pub fn new(dir: &Path) -> Result<Self, LoadError> {
        Self::new_checked(dir, || {}, |_| {})
    }

    /// [`Engine::new`], running `waiting` each time it waits for the files to be quiet and
    /// `between(attempt)` after each load, before the second look at the directory (tests
    /// change files there).
    fn new_checked(
        dir: &Path,
        mut waiting: impl FnMut(),
        mut between: impl FnMut(usize),
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        while let Some(age) = stamp::last_change(dir).map(|at| {
            std::time::SystemTime::now()
                .duration_since(at)
                .unwrap_or_default()
        }) && age < START_QUIET
            && started.elapsed() < START_WAIT
        {
            tracing::debug!(dir = %dir.display(), "policy files changed just now; waiting for them to be quiet");
            waiting();
            std::thread::sleep(START_QUIET - age);
        }
        let mut attempt = 0;
        let (set, seen) = loop {
            let before = fingerprint(dir);
            let loaded = PolicySet::load(dir);
            between(attempt);
            let after = fingerprint(dir);
            if settled(
                &before,
                loaded.as_ref().ok().map(PolicySet::version),
                &after,
            ) {
                break (loaded?, after);
            }
            attempt += 1;
            if attempt >= START_ATTEMPTS {
                return Err(LoadError::new(vec![crate::error::Problem::in_file(
                    dir,
                    format!(
                        "policy files changed every time they were read ({START_ATTEMPTS} times); start again once they are written"
                    ),
                )]));
            }
            std::thread::sleep(START_RETRY);
        };
        let seen = Some(seen);
        let inner = Inner {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(set),
            seen: Mutex::new(seen),
            stamped: Mutex::new(None),
            first_seen: Mutex::new(None),
        };
        Ok(Self {
            inner: Arc::new(inner),
            watcher: None,
        })
    }

    /// Loads `dir` and starts a thread that reloads it whenever a file changes, checking every
    /// `interval`. The thread stops when the engine is dropped.
    pub fn watch(dir: &Path, interval: Duration) -> Result<Self, LoadError> {
        Self::watch_with(dir, interval, |_| {})
    }

    /// [`Engine::watch`], calling `on_reload` with the outcome of every reload the watcher
    /// attempts (after a file changed): for metrics.
    pub fn watch_with(
        dir: &Path,
        interval: Duration,
        on_reload: impl Fn(&Result<Reload, LoadError>) + Send + 'static,
    ) -> Result<Self, LoadError> {
        let mut engine = Self::new(dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (inner, flag) = (Arc::clone(&engine.inner), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name("policy-watch".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(interval);
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    if let Some(result) = inner.poll() {
                        // Errors are logged by `reload`; the old set stays in force.
                        on_reload(&result);
                    }
                }
            })
            .map_err(|e| {
                LoadError::new(vec![crate::error::Problem::in_file(
                    dir,
                    format!("cannot start watcher: {e}"),
                )])
            })?;
        engine.watcher = Some((stop, handle));
        Ok(engine)
    }

    /// The set in force. Hold the `Arc` for the whole of a request so that it sees one set.
    pub fn current(&self) -> Arc<PolicySet> {
        self.inner.current.load_full()
    }

    /// Decides with the set in force.
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        self.inner.current.load().decide(request)
    }

    /// Reloads the directory now. On error the old set stays in force and the error is logged
    /// and returned. [`Reload::Unsettled`] means a file changed while the set was read: call
    /// again (a watching engine does at its next poll).
    pub fn reload(&self) -> Result<Reload, LoadError> {
        self.inner.reload()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.watcher.take() {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

// === impl Inner ===

impl Inner {
    /// One poll of the watcher: reloads if the directory's content differs from what the last
    /// attempt saw (or that attempt was unsettled), and says what the reload did.
    fn poll(&self) -> Option<Result<Reload, LoadError>> {
        self.poll_at(std::time::SystemTime::now(), Instant::now())
    }

    /// [`Inner::poll`] at `now` (wall clock, for the files' times) and `mono`: a change is
    /// loaded once polls at least [`QUIET`] apart have found the same content. (Watched, not
    /// read from the files' times, which a clock stepped back or a file dated ahead would make
    /// look recent for ever.)
    fn poll_at(
        &self,
        now: std::time::SystemTime,
        mono: Instant,
    ) -> Option<Result<Reload, LoadError>> {
        let content = self.fingerprint_by_stamp(now);
        let changed = self
            .seen
            .lock()
            .map(|seen| seen.as_deref() != Some(content.as_str()))
            .unwrap_or(true);
        let Ok(mut first_seen) = self.first_seen.lock() else {
            return changed.then(|| self.reload_checked(Some(content), || {}));
        };
        if !changed {
            *first_seen = None;
            return None;
        }
        match first_seen.as_ref() {
            Some((seen, at)) if *seen == content && mono.duration_since(*at) >= QUIET => {
                *first_seen = None;
            }
            Some((seen, _)) if *seen == content => return None,
            _ => {
                tracing::debug!(dir = %self.dir.display(), "policy files changed; loading them once they stay the same");
                *first_seen = Some((content, mono));
                return None;
            }
        }
        drop(first_seen);
        Some(self.reload_checked(Some(content), || {}))
    }

    /// The directory's [`fingerprint`], hashed only when its [`stamp::stamp`] changed (or
    /// cannot stand for the content).
    fn fingerprint_by_stamp(&self, now: std::time::SystemTime) -> String {
        // Taken before the hash: a change while hashing moves the stamp for the next poll.
        let stamp = stamp::stamp(&self.dir, now);
        let Ok(mut stamped) = self.stamped.lock() else {
            return fingerprint(&self.dir);
        };
        if let (Some(stamp), Some((last, hashed))) = (&stamp, stamped.as_ref())
            && stamp == last
        {
            return hashed.clone();
        }
        let hashed = fingerprint(&self.dir);
        *stamped = stamp.map(|s| (s, hashed.clone()));
        hashed
    }

    fn reload(&self) -> Result<Reload, LoadError> {
        self.reload_checked(None, || {})
    }

    /// [`Inner::reload`] from the directory's fingerprint `before` the load (`None`: taken
    /// now), running `between` after the load and before the second look at the directory
    /// (tests change files there).
    fn reload_checked(
        &self,
        before: Option<String>,
        between: impl FnOnce(),
    ) -> Result<Reload, LoadError> {
        let before = before.unwrap_or_else(|| fingerprint(&self.dir));
        let loaded = PolicySet::load(&self.dir);
        between();
        let after = fingerprint(&self.dir);
        let version = loaded.as_ref().ok().map(PolicySet::version);
        let old = self.current.load().version().to_owned();
        if !settled(&before, version, &after) {
            if let Ok(mut last) = self.seen.lock() {
                *last = None;
            }
            tracing::info!(
                policy.version = %old,
                "policy files changed while they were read; the set in force stays until they settle"
            );
            return Ok(Reload::Unsettled);
        }
        if let Ok(mut last) = self.seen.lock() {
            *last = Some(after);
        }
        match loaded {
            Ok(set) if set.version() == old => Ok(Reload::Unchanged),
            Ok(set) => {
                let new = set.version().to_owned();
                self.current.store(Arc::new(set));
                tracing::info!(policy.version = %new, policy.old_version = %old, "policy set replaced");
                Ok(Reload::Replaced { old, new })
            }
            Err(e) => {
                tracing::error!(
                    policy.version = %old,
                    error = %e,
                    "new policy set is invalid; the old one stays in force"
                );
                Err(e)
            }
        }
    }
}

/// Whether a load is of files that did not change while they were read: the directory looked the
/// same before and after, and (when the load succeeded) the set's version is that content.
fn settled(before: &str, loaded_version: Option<&str>, after: &str) -> bool {
    before == after && loaded_version.is_none_or(|v| v == after)
}

/// The content of the files a load reads, hashed as the set's version is: equal to the version
/// of a set loaded from them (unless one is unreadable or not UTF-8, which a load refuses).
fn fingerprint(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return "unreadable directory".to_owned();
    };
    let files = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_set_file(p))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // An unreadable file counts by its error, so that becoming readable is a change.
            let content = std::fs::read(&p).unwrap_or_else(|e| format!("{e}").into_bytes());
            (name, content)
        })
        .collect::<Vec<_>>();
    version_of(files.iter().map(|(n, c)| (n.clone(), c.as_slice())))
}

#[cfg(test)]
mod tests;
