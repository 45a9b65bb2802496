//! The decision log: one JSON line per decision ([`DecisionRecord`], the format
//! `warden policy diff` replays), to stdout or to a 0600 file rotated by size
//! (`file` -> `file.1` -> … -> `file.<keep>`).
//!
//! The request path never blocks on it: records go through a bounded channel to a writer
//! thread that serializes them into a buffered writer and flushes after each batch. When the
//! writer falls behind, records are dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use warden_policy::DecisionRecord;

use crate::config::{DecisionLogConfig, LogTarget};
use crate::metrics::Metrics;

/// Records that may wait for the writer.
const CHANNEL_CAPACITY: usize = 4096;
/// How long the writer waits between batches while records keep coming.
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
/// Writer buffer size.
const BUFFER_BYTES: usize = 64 * 1024;

/// A handle to send records to the writer; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct DecisionLog {
    tx: mpsc::Sender<DecisionRecord>,
    metrics: Arc<Metrics>,
}

/// Why the decision log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open decision log `{path}`: {source}")]
pub(crate) struct OpenError {
    path: PathBuf,
    source: io::Error,
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(Rotating),
}

struct Rotating {
    path: PathBuf,
    file: BufWriter<File>,
    written: u64,
    max_bytes: u64,
    keep: u32,
    /// One line, serialized here first: writes into a `Vec` are cheaper than serde_json's many
    /// small writes into the `BufWriter`, and the line's length is known without counting.
    line: Vec<u8>,
}

// === impl DecisionLog ===

impl DecisionLog {
    /// Opens the target (creating the file 0600) and starts the writer thread. The thread
    /// ends, after writing what is queued, when every handle is dropped.
    pub(crate) fn start(
        config: &DecisionLogConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenError> {
        let sink = match &config.target {
            LogTarget::Stdout => Sink::Stdout(BufWriter::with_capacity(BUFFER_BYTES, io::stdout())),
            LogTarget::File(path) => {
                Sink::File(Rotating::open(path, config.max_bytes, config.keep)?)
            }
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("decision-log".to_owned())
            .spawn(move || writer(sink, rx))
            .map_err(|source| OpenError {
                path: PathBuf::from("-"),
                source,
            })?;
        Ok(Self { tx, metrics })
    }

    /// Queues a record; drops (and counts) it when the writer is behind.
    pub(crate) fn record(&self, record: DecisionRecord) {
        if self.tx.try_send(record).is_err() {
            self.metrics.decision_log_dropped();
        }
    }
}

/// Writes records until every sender is gone. While records keep coming, the thread drains the
/// channel every [`BATCH_INTERVAL`] instead of being woken for each record (a wake-up per
/// request costs the request path a futex call); when a whole interval brings nothing it blocks
/// again until the next record.
fn writer(mut sink: Sink, mut rx: mpsc::Receiver<DecisionRecord>) {
    let write = |sink: &mut Sink, record: &DecisionRecord| {
        if let Err(e) = sink.write(record) {
            tracing::error!(error = %e, "decision log write failed");
        }
    };
    while let Some(first) = rx.blocking_recv() {
        write(&mut sink, &first);
        loop {
            while let Ok(record) = rx.try_recv() {
                write(&mut sink, &record);
            }
            if let Err(e) = sink.flush() {
                tracing::error!(error = %e, "decision log flush failed");
            }
            std::thread::sleep(BATCH_INTERVAL);
            if rx.is_empty() {
                break;
            }
        }
    }
    let _ = sink.flush();
}

// === impl Sink ===

impl Sink {
    fn write(&mut self, record: &DecisionRecord) -> io::Result<()> {
        match self {
            Self::Stdout(w) => {
                serde_json::to_writer(&mut *w, record)?;
                w.write_all(b"\n")
            }
            Self::File(r) => r.write(record),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::File(r) => r.file.flush(),
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
            file: BufWriter::with_capacity(BUFFER_BYTES, file),
            written,
            max_bytes,
            keep,
            line: Vec::with_capacity(1024),
        })
    }

    fn write(&mut self, record: &DecisionRecord) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.file.write_all(&self.line)?;
        self.written += self.line.len() as u64;
        if self.written >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// `file.<keep-1>` -> `file.<keep>`, …, `file` -> `file.1`, then a new empty `file`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            self.file.get_ref().set_len(0)?;
            let file = open_0600(&self.path)?;
            self.file = BufWriter::with_capacity(BUFFER_BYTES, file);
        } else {
            for n in (1..self.keep).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
            let file = open_0600(&self.path)?;
            self.file = BufWriter::with_capacity(BUFFER_BYTES, file);
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

    use warden_policy::Outcome;

    use super::*;

    fn record(n: usize) -> DecisionRecord {
        DecisionRecord {
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
        }
    }

    #[test]
    fn file_is_0600_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let mut r = Rotating::open(&path, 4096, 2).unwrap();
        for n in 0..200 {
            r.write(&record(n)).unwrap();
        }
        r.file.flush().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(numbered(&path, 1).exists());
        assert!(numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists());
        for p in [path.clone(), numbered(&path, 1)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 4096 + 1024, "{}", text.len());
            for line in text.lines() {
                let back: DecisionRecord = serde_json::from_str(line).unwrap();
                assert!(back.decision_id.starts_with('d'));
            }
        }
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.contains("\"d199\""));
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let err = Rotating::open(Path::new("/nonexistent/dir/decisions.log"), 4096, 1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/dir/decisions.log"));
    }
}
