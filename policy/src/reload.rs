//! Hot reload: an [`Engine`] holds the policy set in force and swaps in a new one atomically
//! when its directory changes and the new set loads and validates. A set that fails keeps the
//! old one in force, and the log says why. Every decision uses one set from start to end.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::decision::Decision;
use crate::error::LoadError;
use crate::policy_set::PolicySet;
use crate::request::Request;

/// How often a watching engine looks at its directory.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

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
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    /// File names, sizes and modification times seen at the last attempt.
    seen: Mutex<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

// === impl Engine ===

impl Engine {
    /// Loads `dir`; the engine does not watch it (call [`Engine::reload`] to pick up changes).
    pub fn new(dir: &Path) -> Result<Self, LoadError> {
        let seen = fingerprint(dir);
        let set = PolicySet::load(dir)?;
        let inner = Inner {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(set),
            seen: Mutex::new(seen),
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
                    let now = fingerprint(&inner.dir);
                    let changed = inner.seen.lock().map(|seen| *seen != now).unwrap_or(true);
                    if changed {
                        // Errors are logged by `reload`; the old set stays in force.
                        on_reload(&inner.reload());
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
    /// and returned.
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
    fn reload(&self) -> Result<Reload, LoadError> {
        let seen = fingerprint(&self.dir);
        if let Ok(mut last) = self.seen.lock() {
            *last = seen;
        }
        let old = self.current.load().version().to_owned();
        match PolicySet::load(&self.dir) {
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

fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    out.sort();
    out
}
