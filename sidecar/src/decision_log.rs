//! The decision log: one JSON line per decision (the [`warden_policy::DecisionRecord`] format
//! `warden policy diff` replays), to stdout or to a 0600 file rotated by size
//! (`file` -> `file.1` -> … -> `file.<keep>`).
//!
//! The request path never blocks on it: each decision's line is written (from borrowed parts,
//! [`warden_policy::DecisionLine`]) on the request's own thread and appended to the shared
//! queue of waiting lines; a writer thread takes everything waiting at once and writes it,
//! batching up to [`BATCH_INTERVAL`] of lines, or [`BATCH_BYTES`] of them when they come
//! faster, per write. The queue is a list of fixed [`CHUNK_BYTES`] buffers, not one growing
//! buffer: when the writer gets a CPU late and lines pile up, what is held is what waits plus at
//! most one chunk's unused tail — a doubling buffer held up to twice what waited, and kept it
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
    /// Appends `line` unless that would pass [`MAX_PENDING_BYTES`] (then `None`).
    fn append(&mut self, line: &[u8]) -> Option<Appended> {
        let before = self.bytes;
        if before + line.len() > MAX_PENDING_BYTES {
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
            if let Err(e) = self.file.write_all(now) {
                self.cut_back();
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

    /// Cuts the file back to the whole lines `written` counts: a write that failed part-way
    /// leaves no partial line for the next one to follow (`warden policy diff` reads every line).
    fn cut_back(&mut self) {
        if let Err(e) = self.file.set_len(self.written) {
            tracing::error!(error = %e, "cannot cut the decision log back to its last whole line");
        }
    }

    /// `file.<keep-1>` -> `file.<keep>`, …, `file` -> `file.1`, then a new empty `file`.
    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.file = open_0600(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
            self.file = open_0600(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_0600(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: make sure it is private.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use warden_policy::{DecisionRecord, Outcome};

    use super::*;

    fn line(n: usize) -> Vec<u8> {
        let record = DecisionRecord {
            time: "2026-01-01T00:00:00.000Z".to_owned(),
            decision_id: format!("d{n}"),
            peer_spiffe_id: Some("spiffe://example.org/a".to_owned()),
            source_addr: "127.0.0.1:1".to_owned(),
            resource: "api".to_owned(),
            method: "GET".to_owned(),
            path: "/".to_owned(),
            query: String::new(),
            headers: vec![],
            action: "GET".to_owned(),
            tls_version: Some("TLSv1.3".to_owned()),
            decision: Outcome::Allow,
            policy_ids: vec!["p".to_owned()],
            policy_version: "v".to_owned(),
            eval_time_us: 1,
            upstream_status: Some(200),
            latency_us: 2,
            errors: vec![],
        };
        let mut line = serde_json::to_vec(&record).unwrap();
        line.push(b'\n');
        line
    }

    fn ids_in(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<DecisionRecord>(l)
                    .unwrap()
                    .decision_id
            })
            .collect()
    }

    #[test]
    fn file_is_0600_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let mut r = Rotating::open(&path, 4096, 2).unwrap();
        // Batches of several lines, as the writer hands them over.
        for batch in (0..200).collect::<Vec<_>>().chunks(7) {
            let lines: Vec<u8> = batch.iter().flat_map(|&n| line(n)).collect();
            r.write_lines(&lines).unwrap();
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(numbered(&path, 1).exists());
        assert!(numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists());
        let line_len = line(100).len() as u64;
        for p in [numbered(&path, 2), numbered(&path, 1)] {
            // A rotated file ends with the line that brought it to the limit: whole lines only.
            let len = std::fs::metadata(&p).unwrap().len();
            assert!((4096..4096 + line_len).contains(&len), "{len}");
        }
        // Every line is whole and in order across the files.
        let mut ids = ids_in(&numbered(&path, 2));
        ids.extend(ids_in(&numbered(&path, 1)));
        ids.extend(ids_in(&path));
        let numbers: Vec<usize> = ids.iter().map(|id| id[1..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert_eq!(numbers.last(), Some(&199));
    }

    #[test]
    fn keep_0_truncates_the_file_in_place_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let mut r = Rotating::open(&path, 4096, 0).unwrap();
        for n in 0..200 {
            r.write_lines(&line(n)).unwrap();
        }
        assert!(!numbered(&path, 1).exists());
        let ids = ids_in(&path);
        assert_eq!(ids.last().map(String::as_str), Some("d199"));
        assert!(ids.len() < 200, "never truncated: {} lines", ids.len());
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 4096 + line(199).len() as u64, "{len}");
    }

    #[test]
    fn a_failed_write_leaves_whole_lines_only_and_says_how_much_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let mut r = Rotating::open(&path, 1 << 20, 1).unwrap();
        r.write_lines(&[line(0), line(1)].concat()).unwrap();
        // A write that stopped part-way through a line…
        r.file.write_all(&line(2)[..40]).unwrap();
        // …is cut back to the last whole line.
        r.cut_back();
        assert_eq!(ids_in(&path), ["d0", "d1"]);
        // A file that cannot be written: nothing of the lines is in it, and it stays whole.
        r.file = File::open(&path).unwrap();
        let (_, done) = r.write_lines(&line(3)).unwrap_err();
        assert_eq!(done, 0);
        assert_eq!(ids_in(&path), ["d0", "d1"]);
    }

    #[test]
    fn lines_a_failed_write_lost_are_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let mut r = Rotating::open(&path, 1 << 20, 1).unwrap();
        r.file = File::open(&path).unwrap();
        let pending = Pending::default();
        {
            let mut state = pending.state.lock().unwrap();
            for n in 0..5 {
                assert!(state.append(&line(n)).is_some());
            }
            state.closed = true;
        }
        let metrics = Metrics::new();
        writer(Sink::File(r), &pending, &metrics);
        assert!(
            metrics
                .encode()
                .contains("warden_sidecar_decision_log_dropped_total 5"),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn lines_from_counts_the_unwritten_lines_of_a_batch() {
        let batch = vec![b"a\nb\n".to_vec(), b"c\nd\ne\n".to_vec(), b"f\n".to_vec()];
        assert_eq!(lines_from(&batch, 0, 0), 6);
        assert_eq!(lines_from(&batch, 0, 2), 5);
        assert_eq!(lines_from(&batch, 1, 4), 2);
        assert_eq!(lines_from(&batch, 2, 0), 1);
        assert_eq!(lines_from(&batch, 3, 0), 0);
    }

    #[test]
    fn every_pushed_line_is_written_by_the_time_the_last_handle_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let config = DecisionLogConfig {
            target: LogTarget::File(path.clone()),
            max_bytes: 64 * 1024 * 1024,
            keep: 1,
        };
        let log = DecisionLog::start(&config, Arc::new(Metrics::new())).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for n in 0..500 {
                        log.push(&line(t * 1000 + n));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(log);
        let ids = ids_in(&path);
        assert_eq!(ids.len(), 2000);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 2000);
    }

    /// Everything waiting, in order.
    fn waiting(state: &PendingState) -> Vec<u8> {
        state.chunks.concat()
    }

    #[test]
    fn lines_beyond_the_pending_limit_are_refused_whole() {
        let mut state = PendingState::default();
        assert_eq!(state.append(b"a\n"), Some(Appended::Wake));
        assert_eq!(state.append(b"b\n"), Some(Appended::Quiet));
        let filler = vec![b'x'; MAX_PENDING_BYTES - 3];
        assert_eq!(state.append(&filler), None, "one byte too many");
        assert_eq!(
            state.append(&filler[1..]),
            Some(Appended::Wake),
            "exactly at the limit (and past the batch size)"
        );
        assert_eq!(state.bytes, MAX_PENDING_BYTES);
        assert_eq!(waiting(&state).len(), MAX_PENDING_BYTES);
        assert_eq!(state.append(b"c\n"), None);
        assert!(waiting(&state).starts_with(b"a\nb\nx"));
    }

    #[test]
    fn the_writer_is_woken_by_the_first_line_and_by_the_line_that_fills_a_batch_only() {
        let mut state = PendingState::default();
        assert_eq!(state.append(b"a\n"), Some(Appended::Wake), "first line");
        let almost = vec![b'x'; BATCH_BYTES - 3];
        assert_eq!(
            state.append(&almost),
            Some(Appended::Quiet),
            "one byte short"
        );
        assert_eq!(
            state.append(b"b\n"),
            Some(Appended::Wake),
            "fills the batch"
        );
        assert_eq!(state.append(b"c\n"), Some(Appended::Quiet), "past it");
        // The writer took the batch: the next line starts a new one.
        state.take(&mut Vec::new());
        assert_eq!(state.append(b"d\n"), Some(Appended::Wake));
    }

    #[test]
    fn waiting_lines_hold_about_one_chunk_more_than_their_bytes_and_keep_their_order() {
        let mut state = PendingState::default();
        let lines: Vec<Vec<u8>> = (0..5000).map(line).collect();
        let longest = lines.iter().map(Vec::len).max().unwrap_or(0);
        let mut expected = Vec::new();
        for (n, l) in lines.iter().enumerate() {
            assert!(state.append(l).is_some());
            expected.extend_from_slice(l);
            // Each full chunk's tail is shorter than the line that did not fit in it.
            let held: usize = state.chunks.iter().map(Vec::capacity).sum();
            assert!(
                held <= state.bytes + CHUNK_BYTES + state.chunks.len() * longest,
                "after line {n}: {held} bytes held for {} waiting",
                state.bytes
            );
        }
        assert!(state.bytes > MAX_PENDING_BYTES / 4, "{}", state.bytes);
        assert_eq!(waiting(&state), expected);
        // A line longer than a chunk gets one of its own, exactly its size.
        let long = vec![b'y'; CHUNK_BYTES + 1];
        assert!(state.append(&long).is_some());
        assert_eq!(state.chunks.last().map(Vec::capacity), Some(long.len()));
        assert!(state.append(b"z\n").is_some());
        assert_eq!(state.chunks.last().map(Vec::as_slice), Some(&b"z\n"[..]));
    }

    #[test]
    fn written_chunks_are_reused_up_to_the_spare_limit_and_the_rest_freed() {
        let mut state = PendingState::default();
        let mut batch = Vec::new();
        let filler = vec![b'x'; CHUNK_BYTES];
        for _ in 0..3 * SPARE_CHUNKS {
            assert!(state.append(&filler).is_some());
        }
        assert!(state.append(&vec![b'y'; CHUNK_BYTES + 1]).is_some());
        state.take(&mut batch);
        assert_eq!((state.bytes, state.chunks.len()), (0, 0));
        assert_eq!(batch.len(), 3 * SPARE_CHUNKS + 1);
        let kept: Vec<*const u8> = batch
            .iter()
            .rev()
            .take(SPARE_CHUNKS + 1)
            .map(|c| c.as_ptr())
            .collect();
        state.recycle(&mut batch);
        // The oversized chunk (last) is not kept; the spares are emptied chunks of the usual size.
        assert_eq!(state.spare.len(), SPARE_CHUNKS);
        assert!(
            state
                .spare
                .iter()
                .all(|c| c.is_empty() && c.capacity() == CHUNK_BYTES)
        );
        assert_eq!(batch.len(), 2 * SPARE_CHUNKS, "left for the caller to free");
        // The next lines fill the spares before anything new is allocated.
        for _ in 0..SPARE_CHUNKS {
            assert!(state.append(&filler).is_some());
        }
        assert!(state.spare.is_empty());
        assert!(
            state.chunks.iter().all(|c| kept.contains(&c.as_ptr())),
            "a chunk was allocated while spares were left"
        );
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let err = Rotating::open(Path::new("/nonexistent/dir/decisions.log"), 4096, 1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/dir/decisions.log"));
    }
}
