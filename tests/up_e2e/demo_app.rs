//! `warden demo-app` on its own: answers, counts, logs the caller's `x-forwarded-client-cert`,
//! stops cleanly on SIGTERM, and refuses bad flags.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::support::bin;

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
