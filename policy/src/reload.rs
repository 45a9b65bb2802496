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
    pub fn new(dir: &Path) -> Result<Self, LoadError> {
        let before = fingerprint(dir);
        let set = PolicySet::load(dir)?;
        let after = fingerprint(dir);
        // A set read while it changed is still the best there is at start; a watcher replaces it
        // at its first poll.
        let seen = settled(&before, Some(set.version()), &after).then_some(after);
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
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::SystemTime;

    use super::*;
    use crate::request::{Caller, Operation};

    const PERMIT: &str = "@id(\"allow-all\")\npermit(principal, action, resource);\n";
    const FORBID: &str = "@id(\"deny-all\")\nforbid(principal, action, resource);\n";

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/mesh.cedarschema");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(schema, dir.path().join("mesh.cedarschema")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn get() -> Request<'static> {
        Request {
            caller: Caller::Spiffe("spiffe://example.org/ns/prod/sa/a"),
            operation: Operation::Http("GET"),
            resource: "api",
            path: "/",
            query: "",
            headers: &[],
            source: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls: None,
            time: SystemTime::UNIX_EPOCH,
        }
    }

    /// An engine on an allow-all and a deny-all set whose `baseline.cedar` (the deny-all) has
    /// just been truncated, as the first half of a save; the path and the content it is being
    /// saved with.
    fn truncated_baseline() -> (tempfile::TempDir, Engine, PathBuf, String) {
        let dir = dir_with(&[("allow.cedar", PERMIT), ("baseline.cedar", FORBID)]);
        let engine = Engine::new(dir.path()).unwrap();
        let baseline = dir.path().join("baseline.cedar");
        std::fs::write(&baseline, "").unwrap();
        let saved = format!("// quarantine everything\n{FORBID}");
        (dir, engine, baseline, saved)
    }

    /// Polls as a watcher does until the content has been the same for [`QUIET`]: once to
    /// see it, and once more [`QUIET`] later (monotonic time made up, not slept).
    fn settled_poll(engine: &Engine) -> Option<Result<Reload, LoadError>> {
        let now = SystemTime::now();
        let start = Instant::now();
        if let Some(result) = engine.inner.poll_at(now, start) {
            return Some(result);
        }
        engine.inner.poll_at(now, start + QUIET)
    }

    /// `cp new.cedar baseline.cedar` truncates the file, then writes it: a poll between the
    /// two, before the write began, finds a valid set without the forbid, and the files stay
    /// the same while it loads. The watcher waits for the directory to be quiet.
    #[test]
    fn a_poll_just_after_a_file_was_truncated_waits_for_it_to_be_written() {
        let (_dir, engine, baseline, saved) = truncated_baseline();
        let old = engine.current().version().to_owned();
        let t0 = Instant::now();
        assert!(engine.inner.poll_at(SystemTime::now(), t0).is_none());
        assert_eq!(engine.current().version(), old);
        assert!(!engine.decide(&get()).is_allowed());
        std::fs::write(&baseline, &saved).unwrap();
        // A poll finding other content than the last one starts the wait again.
        assert!(
            engine
                .inner
                .poll_at(SystemTime::now(), t0 + QUIET)
                .is_none()
        );
        assert_eq!(engine.current().version(), old);
        let Some(Ok(Reload::Replaced { .. })) =
            engine.inner.poll_at(SystemTime::now(), t0 + QUIET * 2)
        else {
            panic!("the settled directory was not reloaded");
        };
        assert_eq!(engine.decide(&get()).policy_ids(), ["deny-all"]);
    }

    /// A file dated ahead of the clock (copied from a host whose clock runs fast, `touch -d`)
    /// is loaded like any other change.
    #[test]
    fn a_file_dated_in_the_future_is_still_reloaded() {
        let dir = dir_with(&[("set.cedar", PERMIT)]);
        let engine = Engine::new(dir.path()).unwrap();
        let path = dir.path().join("set.cedar");
        std::fs::write(&path, FORBID).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        drop(file);
        let Some(Ok(Reload::Replaced { .. })) = settled_poll(&engine) else {
            panic!("the change was not reloaded");
        };
        assert_eq!(engine.decide(&get()).policy_ids(), ["deny-all"]);
    }

    #[test]
    fn only_a_load_of_files_that_did_not_change_is_settled() {
        assert!(settled("a", Some("a"), "a"));
        // An invalid set read from files that did not change: its error stands.
        assert!(settled("a", None, "a"));
        // Changed between the first look and the load, after the load, or there and back.
        assert!(!settled("a", Some("b"), "b"));
        assert!(!settled("a", Some("a"), "b"));
        assert!(!settled("a", Some("b"), "a"));
        assert!(!settled("a", None, "b"));
    }

    #[test]
    fn the_fingerprint_of_a_valid_directory_is_its_version() {
        let dir = dir_with(&[("allow.cedar", PERMIT), ("notes.txt", "ignored")]);
        let set = PolicySet::load(dir.path()).unwrap();
        assert_eq!(fingerprint(dir.path()), set.version());
    }

    /// `cp new.cedar baseline.cedar` truncates and then writes; a load between the two read an
    /// empty file, a valid set without the forbid. It must not be put in force.
    #[test]
    fn a_set_read_while_a_file_was_being_saved_is_not_put_in_force() {
        let (dir, engine, baseline, saved) = truncated_baseline();
        let old = engine.current().version().to_owned();
        let result = engine
            .inner
            .reload_checked(None, || std::fs::write(&baseline, &saved).unwrap());
        assert_eq!(result.unwrap(), Reload::Unsettled);
        assert_eq!(engine.current().version(), old);
        assert!(!engine.decide(&get()).is_allowed());

        // The next poll reloads even though nothing changed since, and finds the whole file.
        let Some(Ok(Reload::Replaced { new, .. })) = settled_poll(&engine) else {
            panic!("the next poll did not reload");
        };
        assert_eq!(new, PolicySet::load(dir.path()).unwrap().version());
        let d = engine.decide(&get());
        assert_eq!(
            (d.is_allowed(), d.policy_ids()),
            (false, &["deny-all".to_owned()][..])
        );
        assert!(settled_poll(&engine).is_none());
    }

    /// An edit of the same size with the same modification time (within one tick of the file
    /// system's clock, or a restored mtime) is still a change.
    #[test]
    fn an_edit_keeping_size_and_mtime_is_reloaded() {
        let dir = dir_with(&[("set.cedar", PERMIT)]);
        let engine = Engine::new(dir.path()).unwrap();
        let path = dir.path().join("set.cedar");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let edited = PERMIT.replace("allow-all", "allow-any");
        assert_eq!(edited.len(), PERMIT.len());
        std::fs::write(&path, &edited).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);

        let Some(Ok(Reload::Replaced { .. })) = settled_poll(&engine) else {
            panic!("the edit was not reloaded");
        };
        assert_eq!(engine.decide(&get()).policy_ids(), ["allow-any"]);
    }

    #[test]
    fn a_poll_reads_no_file_while_the_stamp_stands_and_hashes_once_it_moves() {
        let dir = dir_with(&[("a.cedar", PERMIT)]);
        let engine = Engine::new(dir.path()).unwrap();
        let later = SystemTime::now() + Duration::from_secs(60);
        let real = engine.inner.fingerprint_by_stamp(later);
        assert_eq!(real, engine.current().version());
        // While the stamp stands, the fingerprint kept with it is the answer (here a made-up
        // one, to show that no file was hashed).
        if let Ok(mut stamped) = engine.inner.stamped.lock() {
            let (stamp, _) = stamped.take().unwrap();
            *stamped = Some((stamp, "sha256:kept".to_owned()));
        }
        assert_eq!(engine.inner.fingerprint_by_stamp(later), "sha256:kept");
        // A file changed: hashed again.
        std::fs::write(dir.path().join("a.cedar"), FORBID).unwrap();
        let moved = engine
            .inner
            .fingerprint_by_stamp(SystemTime::now() + Duration::from_secs(60));
        assert_ne!(moved, "sha256:kept");
        assert_ne!(moved, real);
        // Within the racy window nothing is kept: every poll hashes.
        let racy = engine.inner.fingerprint_by_stamp(SystemTime::now());
        assert_eq!(racy, moved);
        assert!(engine.inner.stamped.lock().unwrap().is_none());
    }
}
