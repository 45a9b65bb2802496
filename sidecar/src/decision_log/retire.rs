//! Removing the decision-log file a rotation lets go of, away from the writer thread.
//!
//! Freeing a file is the filesystem's slowest step of a rotation: the last unlink of a
//! 100 MiB file (a `rename` over it, or a truncation to 0) drops its page cache and frees its
//! blocks before the call returns — 10–20 ms measured here on ext4 for 64 MiB. The writer thread
//! did that in its rotation, and every line that came meanwhile waited in memory: under the
//! bench's load (74 MB/s of lines) the inbound sidecar's private memory peaked 2–3 MB higher with
//! rotation than without (BENCHMARKS.md, the seventeenth session), and a slower disk would have
//! reached the pending limit and dropped lines.
//!
//! Now a rotation first renames the file it drops to a hidden name in the same directory
//! (`.<name>.retired.<pid>.<n>`, a rename to a free name: nothing is freed), and a remover thread,
//! started on the first rotation, unlinks it. Leftovers of a process that stopped before its
//! remover finished are removed when the log is opened again.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Moves files out of the way and has them removed on another thread.
pub(super) struct Retirer {
    /// The live log file, whose name the hidden names are made from.
    path: PathBuf,
    /// Files retired so far (the hidden names' numbers).
    count: u64,
    remover: Option<Remover>,
}

/// Where retired files go to be removed: the remover thread, started on first use.
struct Remover {
    to_remove: mpsc::Sender<PathBuf>,
    thread: Option<JoinHandle<()>>,
}

impl Retirer {
    /// A retirer for the log at `path`; removes what an earlier process left retired (best
    /// effort: what cannot be listed or removed stays, and is tried again on the next open).
    pub(super) fn new(path: &Path) -> Self {
        remove_leftovers(path);
        Self {
            path: path.to_owned(),
            count: 0,
            remover: None,
        }
    }

    /// A retirer whose retired files are handed to `to_remove` instead of a remover thread.
    #[cfg(test)]
    pub(super) fn handing_to(path: &Path, to_remove: mpsc::Sender<PathBuf>) -> Self {
        Self {
            path: path.to_owned(),
            count: 0,
            remover: Some(Remover {
                to_remove,
                thread: None,
            }),
        }
    }

    /// Moves `file` (one of the numbered files) to a hidden name and has it removed on the
    /// remover thread. A `file` that does not exist is nothing to do; one that cannot be moved
    /// is left for the rotation's rename over it to free, as before (with a warning).
    pub(super) fn retire(&mut self, file: &Path) {
        match self.set_aside(file) {
            Ok(Some(hidden)) => self.remove_later(hidden),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                path = %file.display(),
                error = %e,
                "cannot move a rotated decision log file aside; the rotation frees it itself"
            ),
        }
    }

    /// Moves `file` to a hidden name (a rename to a free name: nothing is freed) and returns
    /// that name, for [`Retirer::remove_later`] or to be moved back; `None` if there is no
    /// `file`. Each call takes a new name, also when it fails.
    pub(super) fn set_aside(&mut self, file: &Path) -> io::Result<Option<PathBuf>> {
        let hidden = self.hidden_name(self.count);
        self.count += 1;
        match std::fs::rename(file, &hidden) {
            Ok(()) => Ok(Some(hidden)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Has a file [`Retirer::set_aside`] moved removed on the remover thread (here, if there is
    /// none).
    pub(super) fn remove_later(&mut self, hidden: PathBuf) {
        let handed = match self.remover() {
            Some(remover) => remover.to_remove.send(hidden).map_err(|e| e.0),
            None => Err(hidden),
        };
        if let Err(hidden) = handed {
            remove(&hidden);
        }
    }

    /// `.<name>.retired.<pid>.<n>`, beside the live file (the process id keeps a sidecar that
    /// starts while its predecessor still rotates from taking its names).
    fn hidden_name(&self, n: u64) -> PathBuf {
        let mut name = OsString::from(".");
        name.push(self.path.file_name().unwrap_or_default());
        name.push(format!(".retired.{}.{n}", std::process::id()));
        self.path.with_file_name(name)
    }

    /// The remover, started if it was not.
    fn remover(&mut self) -> Option<&Remover> {
        if self.remover.is_none() {
            let (to_remove, removing) = mpsc::channel::<PathBuf>();
            let thread = std::thread::Builder::new()
                .name("decision-log-rm".to_owned())
                .spawn(move || removing.iter().for_each(|file| remove(&file)));
            match thread {
                Ok(thread) => {
                    self.remover = Some(Remover {
                        to_remove,
                        thread: Some(thread),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the decision log's remover thread");
                }
            }
        }
        self.remover.as_ref()
    }
}

impl Drop for Retirer {
    /// Waits for the remover to remove what it was handed, so a stopped log leaves no retired
    /// file behind.
    fn drop(&mut self) {
        if let Some(Remover { to_remove, thread }) = self.remover.take() {
            drop(to_remove);
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("the decision log's remover thread panicked");
            }
        }
    }
}

fn remove(file: &Path) {
    if let Err(e) = std::fs::remove_file(file) {
        tracing::warn!(path = %file.display(), error = %e, "cannot remove a rotated decision log file");
    }
}

/// Removes the `.<name>.retired.*` files beside `path`.
fn remove_leftovers(path: &Path) {
    let Some(name) = path.file_name() else {
        return;
    };
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".retired.");
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(prefix.as_encoded_bytes())
        {
            remove(&entry.path());
        }
    }
}
