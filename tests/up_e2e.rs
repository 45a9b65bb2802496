//! `warden up` driven as a user drives it: the built binary started as a process from the
//! repository root, the summary's two `curl` commands pasted into a shell, the decision logs and
//! the audit log checked, then Ctrl-C (SIGINT) — and nothing may be left running, listening, or
//! as a socket file. Also: a second run reuses the CA and survives `up` being SIGKILLed (the
//! children die with it), `--reset` starts a new CA, a taken port is named and nothing starts,
//! a failing step stops what was started and shows the child's log, and a reader of `up`'s
//! output that went away does not keep it from stopping cleanly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail fast, like the tests they serve"
)]

#[path = "up_e2e/demo_app.rs"]
mod demo_app;
#[path = "up_e2e/support.rs"]
mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use self::support::{
    START, STOP, Up, assert_nothing_left, bin, decision_lines, free_base, repo, sh, summary_value,
    up_command,
};

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
    // The decision log is written off the request path: poll (bounded) for both lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = decision_lines(&api_log);
        let has = |p: &str| records.iter().any(|r| r["path"] == p);
        if (has("/v1/orders") && has("/internal/debug")) || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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

    // One `up` per state directory: a second one says so (not just that its ports are busy).
    let second = up_command(&dir, base).output().unwrap();
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
    // A policy set that does not validate is invalid configuration too (3), named by the check.
    let invalid = tmp.path().join("invalid-policies");
    std::fs::create_dir(&invalid).unwrap();
    std::fs::write(
        invalid.join("x.cedar"),
        "permit(principal, action, resource);",
    )
    .unwrap();
    let (code, err) = run(&[
        "--dir",
        d,
        "--policies",
        invalid.to_str().unwrap(),
        "--base-port",
        &free_base(3).to_string(),
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("policy validate") && err.contains("x.cedar"),
        "{err}"
    );

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

    // The internal trampoline runs nothing for a parent that is not its parent.
    let marker = tmp.path().join("ran");
    let out = Command::new(bin())
        .args([
            "__up-child",
            "--parent-pid",
            "1",
            "--exe",
            "/usr/bin/touch",
            "--",
        ])
        .arg(&marker)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("(pid 1) is gone"), "{err}");
    assert!(!marker.exists());
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

/// The reader of `warden up`'s output goes away before `up` stops (a `tee` killed by the same
/// Ctrl-C): `up` neither panics on its next line nor leaves its mesh behind, and exits 0.
#[test]
fn up_whose_stdout_reader_went_away_still_stops_its_mesh() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let base = free_base(5);
    let (reader, writer) = std::io::pipe().unwrap();
    let stderr_path = tmp.path().join("stderr");
    let mut child = up_command(&dir, base)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdout(writer)
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(reader).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ready") => break,
            Some(Ok(_)) => {}
            other => panic!(
                "`warden up` ended before it was ready ({other:?}): {}",
                std::fs::read_to_string(&stderr_path).unwrap()
            ),
        }
    }
    // The reader goes: every line `up` writes from now on meets a closed pipe.
    drop(lines);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + STOP;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "`warden up` did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_nothing_left(&dir, base);
}
