//! The decision log: one JSON line per decision (the [`warden_policy::DecisionRecord`] format
//! `warden policy diff` replays), to stdout or to a 0600 file rotated by size
//! (`file` -> `file.1` -> … -> `file.<keep>`).
//!
//! The request path never blocks on it: each decision's line is written (from borrowed parts,
//! [`warden_policy::DecisionLine`]) on the request's own thread and appended to the shared
//! queue of waiting lines; a writer thread takes everything waiting at once and writes it,
//! batching up to [`BATCH_INTERVAL`] of lines, or [`BATCH_BYTES`] of them when they come
//! faster, per write. The queue is a list of fixed [`CHUNK_BYTES`] buffers, not one growing
//! buffer: when the writer gets a CPU late and lines pile up, what is held grows with what waits
//! (each chunk's unused tail is shorter than the line that did not fit in it; a longer line gets
//! a chunk of its own size) — a doubling buffer held up to twice what waited, and kept it
//! (measured with heaptrack under the bench's load: the largest peak consumer of the inbound
//! sidecar's heap). Written chunks go back to a small spare list ([`SPARE_CHUNKS`]); past it
//! they are freed. Nothing is allocated per line or per field, and nothing is freed on another
//! thread while the load is steady. When the writer falls behind and [`MAX_PENDING_BYTES`] are
//! waiting, lines are dropped and counted. When the last handle is dropped, the writer writes
//! what is pending and ends, and the drop waits for it, so a clean shutdown loses no line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{DecisionLogConfig, LogTarget};
use crate::metrics::Metrics;
use retire::Retirer;

/// Most bytes of lines waiting for the writer; past it lines are dropped (and counted).
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// How long the writer lets lines gather before it writes them (at most: see [`BATCH_BYTES`]).
const BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// Bytes of waiting lines that wake the writer before [`BATCH_INTERVAL`] is up.
const BATCH_BYTES: usize = 128 * 1024;
/// The size of each buffer of the queue of waiting lines (a longer line gets one of its own).
const CHUNK_BYTES: usize = 32 * 1024;
/// Empty chunks kept for reuse: a steady load's batches, with one being written while the next
/// fills, take no allocation.
const SPARE_CHUNKS: usize = 2 * BATCH_BYTES / CHUNK_BYTES;

/// A handle to append lines for the writer; cheap to clone. The writer ends when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct DecisionLog {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    pending: Arc<Pending>,
    metrics: Arc<Metrics>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Lines waiting for the writer.
#[derive(Debug, Default)]
struct Pending {
    state: Mutex<PendingState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct PendingState {
    /// Waiting lines, in order, in chunks of whole lines; only the last has room left.
    chunks: Vec<Vec<u8>>,
    /// Bytes in `chunks`.
    bytes: usize,
    /// Empty chunks of [`CHUNK_BYTES`] capacity to fill before allocating (≤ [`SPARE_CHUNKS`]).
    spare: Vec<Vec<u8>>,
    closed: bool,
}

/// Why the decision log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open decision log `{path}`: {source}")]
pub(crate) struct OpenError {
    path: PathBuf,
    source: io::Error,
}

/// Where lines go, a chunk of whole lines per write (the chunks are the buffer: nothing is
/// buffered again here, so a failed write loses exactly what it reports).
enum Sink {
    Stdout(io::Stdout),
    File(Rotating),
}

struct Rotating {
    path: PathBuf,
    file: File,
    /// Bytes of whole lines in `file`.
    written: u64,
    max_bytes: u64,
    keep: u32,
    /// Removes the files rotations let go of, on another thread.
    retire: Retirer,
}

// === impl DecisionLog ===

impl DecisionLog {
    /// Opens the target (creating the file 0600) and starts the writer thread.
    pub(crate) fn start(
        config: &DecisionLogConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenError> {
        let sink = match &config.target {
            LogTarget::Stdout => Sink::Stdout(io::stdout()),
            LogTarget::File(path) => {
                Sink::File(Rotating::open(path, config.max_bytes, config.keep)?)
            }
        };
        let pending = Arc::new(Pending::default());
        let writer_pending = Arc::clone(&pending);
        let writer_metrics = Arc::clone(&metrics);
        let writer = std::thread::Builder::new()
            .name("decision-log".to_owned())
            .spawn(move || writer(sink, &writer_pending, &writer_metrics))
            .map_err(|source| OpenError {
                path: PathBuf::from("-"),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Handle {
                pending,
                metrics,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Appends one whole line (ending in a newline); drops (and counts) it when the writer is
    /// [`MAX_PENDING_BYTES`] behind.
    pub(crate) fn push(&self, line: &[u8]) {
        let pending = &self.inner.pending;
        let appended = pending
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(line);
        match appended {
            Some(Appended::Wake) => pending.wake.notify_one(),
            Some(Appended::Quiet) => {}
            None => self.inner.metrics.decision_log_dropped(),
        }
    }
}

// === impl PendingState ===

/// What appending a line asks of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    /// Wake it: it waits for a first line, or for [`BATCH_BYTES`], and this line is one of those.
    Wake,
    /// It is gathering, or already awake.
    Quiet,
}

impl PendingState {
    /// Appends `line` unless that would pass [`MAX_PENDING_BYTES`] (then `None`). A line longer
    /// than the limit on its own (a request with megabytes of headers, which
    /// `limits.max_header_bytes` allows up to 8 MiB, and JSON escaping can double) is taken
    /// when nothing waits: it is held once more, for the time it takes to write it, where it
    /// would otherwise never be logged.
    fn append(&mut self, line: &[u8]) -> Option<Appended> {
        let before = self.bytes;
        if before > 0 && before + line.len() > MAX_PENDING_BYTES {
            return None;
        }
        let fits = self
            .chunks
            .last()
            .is_some_and(|last| last.capacity() - last.len() >= line.len());
        if !fits {
            let chunk = if line.len() <= CHUNK_BYTES {
                self.spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES))
            } else {
                Vec::with_capacity(line.len())
            };
            self.chunks.push(chunk);
        }
        if let Some(last) = self.chunks.last_mut() {
            last.extend_from_slice(line);
        }
        self.bytes += line.len();
        // A notify is a system call: only on the two lines the writer can be waiting for.
        if before == 0 || (before < BATCH_BYTES && self.bytes >= BATCH_BYTES) {
            Some(Appended::Wake)
        } else {
            Some(Appended::Quiet)
        }
    }

    /// Hands every waiting chunk over to the writer (swapped with its empty list).
    fn take(&mut self, into: &mut Vec<Vec<u8>>) {
        std::mem::swap(&mut self.chunks, into);
        self.bytes = 0;
    }

    /// Takes back written chunks for reuse, emptied: up to [`SPARE_CHUNKS`] of the usual size.
    /// The rest stay in `written`, for the caller to free once the lock is released.
    fn recycle(&mut self, written: &mut Vec<Vec<u8>>) {
        while self.spare.len() < SPARE_CHUNKS {
            let Some(mut chunk) = written.pop() else {
                break;
            };
            if chunk.capacity() == CHUNK_BYTES {
                chunk.clear();
                self.spare.push(chunk);
            }
        }
    }
}

// === impl Handle ===

impl Drop for Handle {
    fn drop(&mut self) {
        self.pending
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.pending.wake.notify_one();
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the decision log writer panicked");
        }
    }
}

/// Writes pending lines until the log is closed and nothing is pending. When nothing is pending
/// it sleeps until a line arrives; then it lets lines gather for [`BATCH_INTERVAL`], or until
/// [`BATCH_BYTES`] are waiting, and takes them all (one write and flush per batch, no wake-up per
/// line).
///
/// When a write fails, the lines of the batch it did not write are lost: logged, and counted as
/// dropped; a file is cut back to its last whole line first.
fn writer(mut sink: Sink, pending: &Pending, metrics: &Metrics) {
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        {
            let mut state = pending.state.lock().unwrap_or_else(PoisonError::into_inner);
            while state.bytes == 0 && !state.closed {
                state = pending
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let gathered = Instant::now() + BATCH_INTERVAL;
            while state.bytes < BATCH_BYTES && !state.closed {
                let Some(left) = gathered.checked_duration_since(Instant::now()) else {
                    break;
                };
                state = pending
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if state.bytes == 0 {
                break;
            }
            state.take(&mut batch);
        }
        let written = batch
            .iter()
            .enumerate()
            .try_for_each(|(n, chunk)| sink.write_lines(chunk).map_err(|(e, done)| (e, n, done)));
        match written {
            Ok(()) => {
                if let Err(e) = sink.flush() {
                    tracing::error!(error = %e, "decision log flush failed");
                }
            }
            Err((e, chunk, done)) => {
                let lost = lines_from(&batch, chunk, done);
                tracing::error!(error = %e, lines = lost, "decision log write failed: lines lost");
                metrics.decision_log_lost(u64::try_from(lost).unwrap_or(u64::MAX));
            }
        }
        pending
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recycle(&mut batch);
        // What the spare list had no room for is freed here, outside the lock.
        batch.clear();
    }
    let _ = sink.flush();
}

/// The lines of `batch` from byte `done` of chunk `chunk` on.
fn lines_from(batch: &[Vec<u8>], chunk: usize, done: usize) -> usize {
    let newlines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
    let first = batch
        .get(chunk)
        .and_then(|c| c.get(done..))
        .map_or(0, newlines);
    first
        + batch
            .get(chunk + 1..)
            .map_or(0, |rest| rest.iter().map(|c| newlines(c)).sum())
}

// === impl Sink ===

impl Sink {
    /// Writes whole lines; on failure, how many bytes of `lines` were written (whole lines).
    fn write_lines(&mut self, lines: &[u8]) -> Result<(), (io::Error, usize)> {
        match self {
            Self::Stdout(w) => w.write_all(lines).map_err(|e| (e, 0)),
            Self::File(r) => r.write_lines(lines),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::File(_) => Ok(()),
        }
    }
}

// === impl Rotating ===

impl Rotating {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self, OpenError> {
        let file = open_0600(path).map_err(|source| OpenError {
            path: path.to_owned(),
            source,
        })?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path: path.to_owned(),
            file,
            written,
            max_bytes,
            keep,
            retire: Retirer::new(path),
        })
    }

    /// Writes whole lines, rotating right after the line that brings the file to `max_bytes`
    /// (so no line is split between files). On failure the file is cut back to its last whole
    /// line, and the error comes with how many bytes of `lines` are in the files.
    fn write_lines(&mut self, lines: &[u8]) -> Result<(), (io::Error, usize)> {
        let mut done = 0;
        while let Some(rest) = lines.get(done..).filter(|rest| !rest.is_empty()) {
            let room = usize::try_from(self.max_bytes.saturating_sub(self.written))
                .unwrap_or(usize::MAX)
                .max(1);
            // All of it, or up to the end of the line that reaches `max_bytes` (the first
            // newline at or after `room - 1`).
            let cut = if rest.len() < room {
                rest.len()
            } else {
                rest.get(room - 1..)
                    .and_then(|tail| tail.iter().position(|&b| b == b'\n'))
                    .map_or(rest.len(), |i| room + i)
            };
            let now = rest.get(..cut).unwrap_or(rest);
            // The length to cut back to if this write fails: the file's own (it may have been
            // truncated from outside, by `logrotate`'s `copytruncate` say), else our count.
            let before = self.file.metadata().map_or(self.written, |m| m.len());
            if let Err(e) = self.file.write_all(now) {
                self.cut_back(before);
                return Err((e, done));
            }
            self.written += now.len() as u64;
            done += now.len();
            if self.written >= self.max_bytes {
                self.rotate().map_err(|e| (e, done))?;
            }
        }
        Ok(())
    }

    /// Cuts the file back to `len`, its length before a write that failed part-way: no partial
    /// line is left for the next one to follow (`warden policy diff` reads every line).
    fn cut_back(&mut self, len: u64) {
        if let Err(e) = self.file.set_len(len) {
            tracing::error!(error = %e, "cannot cut the decision log back to its last whole line");
        }
    }

    /// `file.<keep-1>` -> `file.<keep>`, …, `file` -> `file.1`, then a new empty `file`; with
    /// `keep` 0, the file is replaced by a new empty one. The file let go of (`file.<keep>`, or
    /// the live file with `keep` 0) is moved aside and removed on another thread (`retire`):
    /// every rename here is to a free name, so none of them frees a file (unless the move aside
    /// fails: then the rotation frees it as before).
    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.start_again()?;
        } else {
            self.retire.retire(&numbered(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            match std::fs::rename(&self.path, numbered(&self.path, 1)) {
                Ok(()) => {}
                // Removed from outside (`rm` to free disk, a tool that moved it): nothing to
                // rotate, the lines go to a new file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(path = %self.path.display(), "decision log file was removed; starting a new one");
                }
                Err(e) => return Err(e),
            }
            self.file = open_0600(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }

    /// With `keep` 0: the live file moved aside (and removed on another thread), a new one in
    /// its place. If it cannot be moved, or no new file can be opened (it is then moved back),
    /// it is truncated in place, as before, and written on: a rotation that fails would fail
    /// again at every batch.
    fn start_again(&mut self) -> io::Result<()> {
        let aside = match self.retire.set_aside(&self.path) {
            Ok(aside) => aside,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot move the decision log file aside; truncating it in place");
                return self.file.set_len(0);
            }
        };
        match open_0600(&self.path) {
            Ok(file) => {
                self.file = file;
                if let Some(aside) = aside {
                    self.retire.remove_later(aside);
                }
                Ok(())
            }
            // The file was removed from outside and no new one can be made: as before, the
            // rotation fails (and is tried again), rather than writing to a removed file.
            Err(e) if aside.is_none() => Err(e),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot start a new decision log file; truncating the old one in place");
                if let Some(aside) = &aside
                    && let Err(back) = std::fs::rename(aside, &self.path)
                {
                    tracing::error!(path = %self.path.display(), moved_to = %aside.display(), error = %back, "cannot move the decision log file back; lines go on to the moved file until the next rotation");
                }
                self.file.set_len(0)
            }
        }
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Opens (or creates) the log file for appending, mode 0600. A symbolic link or anything but a
/// regular file is refused: whoever can write in the log directory could otherwise point the
/// log (and the `chmod` below) at another file of the sidecar's user.
fn open_0600(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other("is a symbolic link, which is refused"),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("is not a regular file"));
    }
    // An existing file keeps its mode on open: make sure it is private.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

mod retire;
#[cfg(test)]
mod tests;
