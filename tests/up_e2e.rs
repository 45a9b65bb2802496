//! `warden up` driven as a user drives it: the built binary started as a process from the
//! repository root, the summary's two `curl` commands pasted into a shell, the decision logs and
//! the audit log checked, then Ctrl-C (SIGINT) — and nothing may be left running, listening, or
//! as a socket file. Also: a second run reuses the CA and survives `up` being SIGKILLed (the
//! children die with it), `--reset` starts a new CA, a taken port is named and nothing starts,
//! and a failing step stops what was started and shows the child's log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

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
const START: Duration = Duration::from_secs(300);
const STOP: Duration = Duration::from_secs(30);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A base port whose ten ports are free, distinct per test (`slot`) so tests may run together.
fn free_base(slot: u16) -> u16 {
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

/// A running `warden up`: its stdout lines arrive on a channel.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(dir: &Path, base: u16, extra: &[&str]) -> Up {
        let mut child = Command::new(bin())
            .current_dir(repo())
            .arg("up")
            .arg("--dir")
            .arg(dir)
            .arg("--base-port")
            .arg(base.to_string())
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
    fn wait_for(&mut self, prefix: &str, within: Duration) -> String {
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

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(i32::try_from(self.child.id()).unwrap()), sig).unwrap();
    }

    /// Waits for the exit; returns the code and the rest of the output.
    fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
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
fn processes_mentioning(needle: &Path) -> Vec<String> {
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
fn sockets_under(dir: &Path) -> Vec<PathBuf> {
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
fn assert_nothing_left(dir: &Path, base: u16) {
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
fn sh(cmdline: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmdline).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmdline}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn summary_value<'a>(seen: &'a [String], label: &str) -> &'a str {
    seen.iter()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in the summary:\n{}", seen.join("\n")))
        .trim()
}

fn decision_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn up_serves_the_readme_requests_and_ctrl_c_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let base = free_base(0);
    let mut up = Up::start(&dir, base, &[]);
    up.wait_for("ready", START);
    let seen = up.seen.clone();
    let text = seen.join("\n");
    for step in 1..=9 {
        assert!(text.contains(&format!("[{step}/9] ")), "{text}");
    }
    assert!(text.contains("new root CA created"), "{text}");
    assert_eq!(summary_value(&seen, "trust domain"), "example.org");
    assert!(
        text.contains("spiffe://example.org/ns/prod/sa/api"),
        "{text}"
    );
    assert!(
        text.contains("spiffe://example.org/ns/prod/sa/frontend"),
        "{text}"
    );

    // The two commands exactly as printed.
    let curls: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.trim_start().starts_with("curl ").then_some(l.trim()))
        .collect();
    assert_eq!(curls.len(), 2, "{text}");
    let (allowed, denied) = (curls[0], curls[1]);
    assert_eq!(
        allowed,
        format!("curl -s http://127.0.0.1:{}/v1/orders", base + 1)
    );
    assert_eq!(
        denied,
        format!("curl -s http://127.0.0.1:{}/internal/debug", base + 1)
    );
    let answer = sh(&format!("{allowed} -w '\\n%{{http_code}}'"));
    let (body, code) = answer.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{answer}");
    let orders: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(orders["service"], "api");
    assert!(!orders["orders"].as_array().unwrap().is_empty());
    let answer = sh(&format!("{denied} -w '\\n%{{http_code}}'"));
    let (body, code) = answer.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{answer}");
    assert!(
        body.contains("decision"),
        "the 403 names the decision: {body}"
    );

    // The api sidecar's decision log: one allow and one deny, with the deciding policy ids.
    let api_log = dir.join("logs/decisions-api.jsonl");
    assert!(text.contains(&api_log.display().to_string()), "{text}");
    let records = decision_lines(&api_log);
    let find = |path: &str| {
        records
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no decision for {path}: {records:#?}"))
    };
    let allow = find("/v1/orders");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(
        allow["peer_spiffe_id"],
        "spiffe://example.org/ns/prod/sa/frontend"
    );
    assert!(
        allow["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&"frontend-reads-api".into())
    );
    let deny = find("/internal/debug");
    assert_eq!(deny["decision"], "deny");
    assert!(
        deny["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&"frontend-never-internal".into())
    );
    let id = deny["decision_id"].as_str().unwrap();
    assert!(body.contains(id), "403 body `{body}` names decision `{id}`");

    // The api app saw the caller's identity that its sidecar vouched for.
    let app_log = std::fs::read_to_string(dir.join("logs/app-api.log")).unwrap();
    assert!(
        app_log.contains("/v1/orders")
            && app_log.contains("URI=spiffe://example.org/ns/prod/sa/frontend"),
        "{app_log}"
    );
    assert!(
        !app_log.contains("/internal/debug"),
        "a denied request never reaches the app"
    );

    // The audit log command from the summary, and its verification.
    let audit_cmd = summary_value(&seen, "audit log");
    let audit = sh(audit_cmd);
    assert!(audit.contains("entry"), "{audit}");
    let verify = sh(&format!(
        "{} verify --admin-socket {}",
        audit_cmd.split(" list ").next().unwrap(),
        dir.join("ca/admin.sock").display()
    ));
    assert!(verify.contains("chain intact"), "{verify}");

    // Attestation means something: this test's own `warden` (not a sidecar binary) gets nothing.
    let fetch = Command::new(bin())
        .args(["svid", "fetch", "--socket"])
        .arg(dir.join("agent/agent.sock"))
        .output()
        .unwrap();
    let fetched = String::from_utf8_lossy(&fetch.stdout);
    assert!(!fetched.contains("spiffe://"), "{fetched}");

    // One `up` per state directory, even on other ports.
    let second = Command::new(bin())
        .current_dir(repo())
        .arg("up")
        .arg("--dir")
        .arg(&dir)
        .arg("--base-port")
        .arg(free_base(5).to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("another `warden up` is running"), "{err}");

    up.signal(Signal::SIGINT);
    let (code, out) = up.wait_exit(STOP);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("stopping the CA"), "{out}");
    assert_nothing_left(&dir, base);
}

#[test]
fn up_reuses_its_ca_dies_with_its_children_on_sigkill_and_reset_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let base = free_base(1);
    let root = dir.join("ca/root.crt.pem");

    let mut up = Up::start(&dir, base, &[]);
    up.wait_for("ready", START);
    let first_root = std::fs::read(&root).unwrap();
    up.signal(Signal::SIGTERM);
    assert_eq!(up.wait_exit(STOP).0, Some(0));
    assert_nothing_left(&dir, base);

    // Second run: same CA; then `up` is killed outright and its children must still go.
    let mut up = Up::start(&dir, base, &[]);
    up.wait_for("ready", START);
    let text = up.seen.join("\n");
    assert!(text.contains("reusing the existing CA"), "{text}");
    assert!(text.contains("evicted 1 agent(s)"), "{text}");
    assert_eq!(std::fs::read(&root).unwrap(), first_root);
    let curl = sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{}/v1/orders",
        base + 1
    ));
    assert_eq!(curl, "200");
    up.signal(Signal::SIGKILL);
    let _ = up.wait_exit(STOP);
    assert_nothing_left(&dir, base);

    // --reset: a new CA.
    let mut up = Up::start(&dir, base, &["--reset"]);
    up.wait_for("ready", START);
    assert!(up.seen.join("\n").contains("new root CA created"));
    assert_ne!(std::fs::read(&root).unwrap(), first_root);
    up.signal(Signal::SIGINT);
    assert_eq!(up.wait_exit(STOP).0, Some(0));
    assert_nothing_left(&dir, base);
}

#[test]
fn up_names_a_taken_port_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let base = free_base(2);
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, base + 2)).unwrap();
    let out = Command::new(bin())
        .current_dir(repo())
        .arg("up")
        .arg("--dir")
        .arg(&dir)
        .arg("--base-port")
        .arg(base.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {}", base + 2))
            && stderr.contains("the api sidecar's mTLS listener")
            && stderr.contains("--base-port"),
        "{stderr}"
    );
    assert!(!dir.exists(), "nothing is created when a port is taken");
    drop(squatter);
    assert_nothing_left(&dir, base);
}

#[test]
fn up_refuses_bad_flags_and_foreign_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .current_dir(repo())
            .arg("up")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let d = tmp.path().join("x");
    let d = d.to_str().unwrap();
    let (code, err) = run(&["--dir", d, "--trust-domain", "Not A Domain"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("invalid --trust-domain `Not A Domain`"),
        "{err}"
    );
    let (code, err) = run(&["--dir", d, "--base-port", "80"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("--base-port `80`"), "{err}");
    let (code, err) = run(&["--dir", d, "--policies", "no-such-policies"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("`no-such-policies` does not exist"), "{err}");

    // A directory that `up` did not make is neither used nor deleted by --reset.
    let foreign = tmp.path().join("home");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    let base = free_base(3);
    let (code, err) = run(&[
        "--dir",
        foreign.to_str().unwrap(),
        "--reset",
        "--base-port",
        &base.to_string(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("was not made by `warden up`"), "{err}");
    assert!(foreign.join("precious.txt").exists());
}

#[test]
fn a_failing_step_names_itself_shows_the_childs_log_and_stops_what_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let base = free_base(4);
    // A CA exists (made by `up` through `ca init`), but its root certificate is garbage:
    // `ca serve` (step 3) fails after starting.
    let mut up = Up::start(&dir, base, &[]);
    up.wait_for("[3/9]", START);
    up.signal(Signal::SIGINT);
    assert_eq!(up.wait_exit(START).0, Some(0));
    assert_nothing_left(&dir, base);
    std::fs::write(dir.join("ca/root.crt.pem"), "not a certificate").unwrap();

    let mut up = Up::start(&dir, base, &[]);
    let (code, out) = up.wait_exit(START);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("[3/9] starting the CA … failed"), "{out}");
    assert!(out.contains("the CA exited while starting"), "{out}");
    assert!(
        out.contains(&format!(
            "last lines of {}",
            dir.join("logs/ca.log").display()
        )),
        "{out}"
    );
    assert_nothing_left(&dir, base);

    // The agent's step fails after the CA runs: the CA must be stopped again.
    std::fs::remove_dir_all(dir.join("ca")).unwrap();
    std::fs::remove_dir_all(dir.join("agent")).ok();
    std::fs::write(dir.join("agent"), "a file where the agent's dir goes").unwrap();
    let mut up = Up::start(&dir, base, &[]);
    let (code, out) = up.wait_exit(START);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("[6/9] starting the node agent … failed"),
        "{out}"
    );
    assert!(out.contains("cannot clear"), "{out}");
    assert!(out.contains("stopping the CA"), "{out}");
    assert_nothing_left(&dir, base);
}

#[test]
fn demo_app_answers_counts_logs_the_caller_and_rejects_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = tmp.path().join("app.log");
    let mut app = Command::new(bin())
        .args([
            "demo-app",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            "orders",
        ])
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&[&url("/healthz")]).0 != "200" {
        assert!(Instant::now() < deadline, "demo-app never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let xfcc = "By=spiffe://example.org/api;URI=spiffe://example.org/frontend";
    let (code, body) = curl(&[
        "-H",
        &format!("x-forwarded-client-cert: {xfcc}"),
        &url("/v1/orders"),
    ]);
    assert_eq!(code, "200");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"], "orders");
    let post = |data: &str| {
        curl(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            data,
            &url("/v1/orders"),
        ])
    };
    assert_eq!(post("{\"item\":\"widget\"}").0, "201");
    let (code, body) = post("not json");
    assert_eq!(code, "400");
    assert!(body.contains("not JSON"), "{body}");
    assert_eq!(curl(&[&url("/nope")]).0, "404");
    let (_, body) = curl(&[&url("/internal/debug")]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["orders_placed"], 1);
    assert!(v["requests"].as_u64().unwrap() >= 6, "{v}");

    kill(
        Pid::from_raw(i32::try_from(app.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = app.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("path=/v1/orders") && logged.contains(xfcc),
        "each request is logged with the caller's xfcc: {logged}"
    );

    for (args, named) in [
        (
            vec!["--listen", "localhost"],
            "invalid --listen `localhost`",
        ),
        (vec!["--name", ""], "--name must be 1 to 64 characters"),
    ] {
        let out = Command::new(bin())
            .arg("demo-app")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains(named), "{err}");
    }
}
