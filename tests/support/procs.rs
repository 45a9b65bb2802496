//! Running the built `warden` binary in tests: long-running processes stopped when dropped,
//! one-shot commands that must succeed or fail, and a CA started and waited for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use warden_identity::test_util::free_port;

/// How long a process may take to be ready.
pub(crate) const WAIT: Duration = Duration::from_secs(120);

pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

/// A long-running process, stopped with SIGTERM (then killed) when dropped.
pub(crate) struct Proc(pub(crate) Child, pub(crate) PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn(exe: &Path, args: &[&str], log: &Path) -> Proc {
    spawn_with(exe, args, &[], log)
}

/// [`spawn`] with `env` set too.
pub(crate) fn spawn_with(exe: &Path, args: &[&str], env: &[(&str, &Path)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Proc(child, log.to_path_buf())
}

/// `warden ARGS`, which must succeed; returns stdout.
pub(crate) fn warden(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("WARDEN_ADMIN_SOCKET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`warden {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `ok` until it holds; fails naming `what` and showing the process's log, at once when
/// the process has exited (a failed bind, a bad flag) rather than after the whole wait.
pub(crate) fn wait_until(what: &str, proc: &mut Proc, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        let exited = proc.0.try_wait().ok().flatten();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "{what} not within {WAIT:?} (process exit: {exited:?}); log:\n{}",
            std::fs::read_to_string(&proc.1).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn http_ok(port: u16, path: &str) -> bool {
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .is_ok_and(|o| o.stdout == b"200")
}

pub(crate) fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `warden ARGS`, which must fail with exit status 1; returns stderr.
pub(crate) fn warden_fails(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .env_remove("WARDEN_ADMIN_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "`warden {}`", args.join(" "));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CA for `td` in `dir`, serving its bundle endpoint on `bundle_port` when given, with
/// `extra` flags and `env`; returns the process (ready) and its admin socket.
pub(crate) fn start_ca(
    t: &Path,
    td: &str,
    bundle_port: Option<u16>,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> (Proc, PathBuf) {
    let dir = t.join(td);
    let dir_text = dir.to_str().unwrap().to_owned();
    warden(&["ca", "init", "--trust-domain", td, "--data-dir", &dir_text]);
    let (listen, http) = (free_port(), free_port());
    let mut args = vec![
        "ca".to_owned(),
        "serve".to_owned(),
        "--data-dir".to_owned(),
        dir_text,
        "--listen".to_owned(),
        format!("127.0.0.1:{listen}"),
        "--http-listen".to_owned(),
        format!("127.0.0.1:{http}"),
    ];
    if let Some(port) = bundle_port {
        args.extend([
            "--bundle-endpoint-listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ]);
    }
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(extra);
    let mut ca = spawn_with(&bin(), &args, env, &t.join(format!("{td}.log")));
    let socket = dir.join("admin.sock");
    wait_until(&format!("the {td} CA ready"), &mut ca, || {
        http_ok(http, "/readyz") && socket.exists()
    });
    (ca, socket)
}
