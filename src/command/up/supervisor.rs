//! The children of `warden up`: started from its own binary, each in its own process group with
//! its output in a log file, stopped in reverse order (SIGTERM, a bounded wait, then SIGKILL) on
//! every exit path, and — through the `__up-child` trampoline, which sets the parent-death signal
//! before it `exec`s — terminated by the kernel even if `up` itself is killed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::super::Exit;

/// How long a child gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Environment variables of the user's shell that must not leak into the children's settings.
const SCRUBBED_ENV: [&str; 6] = [
    "SPIFFE_ENDPOINT_SOCKET",
    "WARDEN_CA_CONFIG",
    "WARDEN_AGENT_CONFIG",
    "WARDEN_ADMIN_SOCKET",
    "WARDEN_JOIN_TOKEN",
    "WARDEN_SIDECAR_CONFIG",
];

/// `warden __up-child`: set by `warden up` only (hidden). Sets the parent-death signal to
/// SIGTERM, checks the parent is still `--parent-pid`, then becomes `--exe ARGS...`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChildArgs {
    /// The `warden up` process that must be alive.
    #[arg(long)]
    parent_pid: i32,
    /// The program to become.
    #[arg(long)]
    exe: PathBuf,
    /// Its arguments.
    #[arg(last = true)]
    args: Vec<OsString>,
}

/// A long-running child process.
#[derive(Debug)]
pub(crate) struct Running {
    /// What it is, for messages: "the CA", "the api sidecar".
    pub(crate) what: String,
    child: Child,
    log: PathBuf,
    log_start: u64,
}

/// The running children, in start order.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    children: Vec<Running>,
    /// Socket files to remove after everything stopped.
    sockets: Vec<PathBuf>,
}

/// What a one-shot command answered.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

// === impl ChildArgs ===

/// Runs the trampoline: returns only on failure.
pub(crate) fn exec_child(args: ChildArgs) -> anyhow::Result<Exit> {
    // The kernel sends SIGTERM to this process (and, after exec, to the program it becomes) when
    // the thread that forked it — `up`'s main thread — ends, however it ends.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .context("cannot set the parent-death signal")?;
    // `up` may have died between fork and prctl: then nobody would ever signal us.
    if nix::unistd::getppid() != Pid::from_raw(args.parent_pid) {
        eprintln!("error: `warden up` (pid {}) is gone", args.parent_pid);
        return Ok(Exit::Error);
    }
    let err = Command::new(&args.exe).args(&args.args).exec();
    Err(anyhow::anyhow!(
        "cannot execute `{}`: {err}",
        args.exe.display()
    ))
}

// === impl Running ===

impl Running {
    /// The log file.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines this run wrote to its log.
    pub(crate) fn tail(&self, n: usize) -> Vec<String> {
        tail_file(&self.log, self.log_start, n)
    }

    fn pgid(&self) -> Option<Pid> {
        i32::try_from(self.child.id()).ok().map(Pid::from_raw)
    }

    /// SIGTERM to its process group, a bounded wait, then SIGKILL.
    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let Some(pgid) = self.pgid() else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        };
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            // Once reaped, its pid (= the group id) may be reused: no signal after this.
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        say!(
            "  {} did not stop within {} s of SIGTERM: killing it",
            self.what,
            STOP_GRACE.as_secs()
        );
        // Not reaped yet, so the group id is still this child's.
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

// === impl Supervisor ===

impl Supervisor {
    /// Removes these socket files once everything stopped.
    pub(crate) fn remove_on_stop(&mut self, sockets: impl IntoIterator<Item = PathBuf>) {
        self.sockets.extend(sockets);
    }

    /// Starts `exe args...` through the trampoline, in its own process group, output appended to
    /// `log`.
    ///
    /// INVARIANT: called on `up`'s main thread (the parent-death signal follows the thread that
    /// forked, not the process); `up` drives everything from a current-thread runtime.
    pub(crate) fn start(
        &mut self,
        what: &str,
        exe: &Path,
        args: &[OsString],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<&mut Running> {
        let me = std::env::current_exe().context("cannot find the `warden` binary")?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .with_context(|| format!("cannot open the log file `{}`", log.display()))?;
        let log_start = file.seek(SeekFrom::End(0)).unwrap_or(0);
        let err = file
            .try_clone()
            .with_context(|| format!("cannot open the log file `{}`", log.display()))?;
        let mut cmd = Command::new(me);
        cmd.arg("__up-child")
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .arg("--exe")
            .arg(exe)
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .env("WARDEN_LOG", "info")
            // Plain text in the log files.
            .env("NO_COLOR", "1");
        for key in SCRUBBED_ENV {
            cmd.env_remove(key);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        self.children.push(Running {
            what: what.to_owned(),
            child,
            log: log.to_path_buf(),
            log_start,
        });
        self.children
            .last_mut()
            .ok_or_else(|| anyhow::anyhow!("internal: no child after start"))
    }

    /// The first child that has exited, with its status.
    pub(crate) fn first_exited(&mut self) -> Option<(&Running, ExitStatus)> {
        let idx = self
            .children
            .iter_mut()
            .position(|c| c.exited().is_some())?;
        let c = self.children.get_mut(idx)?;
        let status = c.exited()?;
        Some((c, status))
    }

    /// Stops every child, newest first, then removes the sockets they left behind.
    pub(crate) fn stop_all(&mut self, announce: bool) {
        while let Some(mut c) = self.children.pop() {
            if announce && c.exited().is_none() {
                say!("  stopping {}", c.what);
            }
            c.stop();
        }
        for s in self.sockets.drain(..) {
            let _ = std::fs::remove_file(s);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all(false);
    }
}

/// Runs a one-shot `warden ARGS...` (`ca init`, `token create`...) with a deadline; it is killed
/// if it takes longer.
pub(crate) async fn one_shot(args: &[OsString], timeout: Duration) -> anyhow::Result<Output> {
    let me = std::env::current_exe().context("cannot find the `warden` binary")?;
    let mut cmd = tokio::process::Command::new(me);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env("WARDEN_LOG", "warn")
        .env("NO_COLOR", "1");
    for key in SCRUBBED_ENV {
        cmd.env_remove(key);
    }
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("`warden {shown}` did not finish within {timeout:?}"))?
        .with_context(|| format!("cannot run `warden {shown}`"))?;
    Ok(Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The last `n` lines of `path` after byte `from`.
pub(crate) fn tail_file(path: &Path, from: u64, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // Read at most the last 64 KiB of this run's output.
    let start = from.max(len.saturating_sub(64 * 1024));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .skip(lines.len().saturating_sub(n))
        .map(|l| strip_ansi(l))
        .collect()
}

/// Removes ANSI colour sequences (the children's tracing output may carry them).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_only_this_runs_lines_without_colours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "old run\n").unwrap();
        let from = std::fs::metadata(&p).unwrap().len();
        let mut text = String::new();
        for i in 0..30 {
            text.push_str(&format!("\u{1b}[32mline {i}\u{1b}[0m\n"));
        }
        std::fs::write(&p, format!("old run\n{text}")).unwrap();
        let t = tail_file(&p, from, 3);
        assert_eq!(t, vec!["line 27", "line 28", "line 29"]);
        let all = tail_file(&p, from, 100);
        assert_eq!(all.len(), 30, "the previous run's lines are not shown");
        assert!(tail_file(&dir.path().join("missing"), 0, 3).is_empty());
    }
}
