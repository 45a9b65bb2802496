//! Helpers of the `warden up` end-to-end tests: the binary, free port ranges, a running `up`
//! with its output on a channel, and checks that nothing of a mesh is left behind.

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Start-up is bounded by `up` itself; this only guards against a hung test.
pub(crate) const START: Duration = Duration::from_secs(300);
pub(crate) const STOP: Duration = Duration::from_secs(30);

pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A base port whose ten ports are free, distinct per test (`slot`) so tests may run together.
pub(crate) fn free_base(slot: u16) -> u16 {
    let mut base = 17_100 + slot * 200;
    loop {
        let all_free =
            (base..base + 10).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if all_free {
            return base;
        }
        base += 10;
        assert!(base < 17_100 + (slot + 1) * 200, "no free port range");
    }
}

/// `warden up --dir DIR --base-port BASE`, run from the repository root.
pub(crate) fn up_command(dir: &Path, base: u16) -> Command {
    let mut command = Command::new(bin());
    command
        .current_dir(repo())
        .arg("up")
        .arg("--dir")
        .arg(dir)
        .arg("--base-port")
        .arg(base.to_string());
    command
}

/// A running `warden up`: its stdout lines arrive on a channel.
pub(crate) struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Up {
    pub(crate) fn start(dir: &Path, base: u16, extra: &[&str]) -> Up {
        let mut child = up_command(dir, base)
            .args(extra)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {l}"));
            }
        });
        Up {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix`; fails with everything seen if `up` exits first.
    pub(crate) fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    let hit = l.starts_with(prefix);
                    self.seen.push(l.clone());
                    if hit {
                        return l;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!(
                        "`warden up` ended ({status}) before `{prefix}`:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "no `{prefix}` within {within:?}:\n{}",
                self.seen.join("\n")
            );
        }
    }

    pub(crate) fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(i32::try_from(self.child.id()).unwrap()), sig).unwrap();
    }

    /// Waits for the exit; returns the code and the rest of the output.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Drain what is left.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(300)) {
                    self.seen.push(l);
                }
                return (status.code(), self.seen.join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "`warden up` did not exit within {within:?}:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A failed assertion must not leave a mesh behind: SIGTERM stops the children too.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(Signal::SIGTERM);
            let _ = self.wait_exit(STOP);
        }
    }
}

/// Processes (other than this test) whose command line mentions `needle`.
pub(crate) fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

/// Socket files anywhere under `dir`.
pub(crate) fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_socket() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Asserts nothing of the mesh in `dir` is left: no process, no listener, no socket file.
/// Polls briefly: children killed by the parent-death signal stop asynchronously.
pub(crate) fn assert_nothing_left(dir: &Path, base: u16) {
    let deadline = Instant::now() + STOP;
    loop {
        let procs = processes_mentioning(dir);
        let listening: Vec<u16> = (base..base + 10)
            .filter(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_err())
            .collect();
        let sockets = sockets_under(dir);
        if procs.is_empty() && listening.is_empty() && sockets.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: processes {procs:#?}, listening ports {listening:?}, sockets {sockets:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command line from the summary through `sh`, as a user pasting it would.
pub(crate) fn sh(cmdline: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmdline).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmdline}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn summary_value<'a>(seen: &'a [String], label: &str) -> &'a str {
    seen.iter()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in the summary:\n{}", seen.join("\n")))
        .trim()
}

/// The complete JSON lines of a decision log (a line still being written is left out).
pub(crate) fn decision_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
