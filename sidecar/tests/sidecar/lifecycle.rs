//! Readiness, SVID rotation under load, limits (slow clients, idle and connection limits).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_identity::test_util::TestCa;
use warden_sidecar::{Config, Overrides, Sidecar};

use crate::lapse::closed_sender;
use crate::support::*;

fn free_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], warden_identity::test_util::free_port()))
}

/// A config for `api` with the inbound listener on `inbound`.
async fn config(dir: &std::path::Path, api: &WorkloadApi, inbound: std::net::SocketAddr) -> Config {
    let app = App::start().await;
    let policies = policy_dir(dir, POLICIES);
    let text = format!(
        "workload_api_socket = \"{}\"\n[inbound]\nlisten = \"{inbound}\"\napp = \"{}\"\nservice = \"api\"\n[policy]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[decision_log]\npath = \"{}\"\n",
        api.socket.display(),
        app.addr,
        policies.display(),
        dir.join("d.log").display()
    );
    Config::from_toml(
        &text,
        "t",
        &Overrides::default(),
        &HashMap::<String, String>::new(),
    )
    .unwrap()
}

#[tokio::test]
async fn no_listener_and_not_ready_until_the_first_svid_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(TD);
    let api = WorkloadApi::start(dir.path()).await;
    let inbound = free_port();
    let config = config(dir.path(), &api, inbound).await;
    let sidecar = Sidecar::start(config).await.unwrap();
    let (status, body) = admin_get(sidecar.admin_addr(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no svid"), "{body}");
    assert_eq!(admin_get(sidecar.admin_addr(), "/healthz").await.0, 200);
    assert!(
        TcpStream::connect(inbound).await.is_err(),
        "inbound bound before any svid"
    );
    api.set(
        &ca.issue_svid(&id(SIDECAR_ID), Duration::from_secs(600)),
        &ca,
        &[],
    );
    let bound = tokio::time::timeout(WAIT, sidecar.bound())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bound.inbound, Some(inbound));
    assert_eq!(admin_get(sidecar.admin_addr(), "/readyz").await.0, 200);
    let m = admin_get(sidecar.admin_addr(), "/metrics").await.1;
    assert!(m.contains("warden_sidecar_svid_expiry_seconds 5"), "{m}");
    sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_argument_or_unimplemented_from_the_workload_api_stops_the_sidecar_without_retry_w5()
 {
    for (code, named) in [
        (tonic::Code::InvalidArgument, "refused"),
        (tonic::Code::Unimplemented, "Unimplemented"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let api = WorkloadApi::start_with(dir.path(), Some(code)).await;
        let config = config(dir.path(), &api, free_port()).await;
        let sidecar = Sidecar::start(config).await.unwrap();
        let err = tokio::time::timeout(WAIT, sidecar.wait())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains(named), "{code:?}: {err}");
    }
}

#[tokio::test]
async fn svid_rotation_under_continuous_load_loses_no_request() {
    let f = Fixture::start(Options::default()).await;
    let web = Arc::new(f.client(WEB_ID));
    let first_leaf = {
        let tls = web.connect(f.inbound).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (web, stop, ok, addr) = (
            Arc::clone(&web),
            Arc::clone(&stop),
            Arc::clone(&ok),
            f.inbound,
        );
        workers.push(tokio::spawn(async move {
            // Half the workers keep one HTTP/2 connection (it must survive rotation), half
            // open a new connection per request (each must get the current SVID).
            let mut failures = Vec::new();
            if w % 2 == 0 {
                let tls = web.connect(addr).await.unwrap();
                let mut sender = crate::raw_http::h2_sender(tls).await;
                while !stop.load(Ordering::SeqCst) {
                    match sender.send_request(get_h2("/load")).await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                }
            } else {
                while !stop.load(Ordering::SeqCst) {
                    match web.request(addr, get("/load")).await {
                        Ok((StatusCode::OK, _, _)) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                }
            }
            failures
        }));
    }
    let mut last = first_leaf.clone();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.api.set(
            &f.ca.issue_svid(&id(SIDECAR_ID), Duration::from_secs(600)),
            &f.ca,
            &[],
        );
        // New handshakes see the new SVID soon after it is published.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let tls = web.connect(f.inbound).await.unwrap();
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            if leaf != last {
                last = leaf;
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "new svid never presented"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let failures = w.await.unwrap();
        assert!(
            failures.is_empty(),
            "requests failed during rotation: {failures:?}"
        );
    }
    assert!(
        ok.load(Ordering::SeqCst) > 20,
        "too little load: {}",
        ok.load(Ordering::SeqCst)
    );
    assert_ne!(last, first_leaf);
}

#[tokio::test]
async fn silent_and_slow_clients_are_disconnected() {
    let f = Fixture::start_with_limits("handshake_timeout = \"1s\"\nidle_timeout = \"2s\"\n").await;
    // No ClientHello at all.
    let mut tcp = TcpStream::connect(f.inbound).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "silent client kept its connection");
    let m = wait_for_metric(&f, r#"reason="timeout"} 1"#).await;
    assert!(m.contains(r#"reason="timeout"} 1"#), "{m}");
    // A TLS client that sends half a request head.
    let web = f.client(WEB_ID);
    let c = web.http1();
    let mut tls = c.connect(f.inbound).await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "slow client kept its connection");
    // An idle HTTP/2 connection is closed after idle_timeout.
    let tls = web.connect(f.inbound).await.unwrap();
    let (_sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Full<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, conn).await;
    assert!(r.is_ok(), "idle connection kept open");
    assert_eq!(f.app.seen(), 0);
}

#[tokio::test]
async fn an_http2_caller_that_only_pings_is_sent_away_after_the_idle_timeout() {
    let f = Fixture::start_with_limits("idle_timeout = \"2s\"\n").await;
    let web = f.client(WEB_ID);
    let tls = web.connect(f.inbound).await.unwrap();
    // Pings every 300 ms keep bytes moving both ways, well within the idle timeout.
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(300))
            .keep_alive_while_idle(true)
            .handshake::<_, http_body_util::Full<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // A request first: the connection is in use, then idle.
    let req = http::Request::get(format!("https://{}/x", f.inbound))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    let started = tokio::time::Instant::now();
    let r = tokio::time::timeout(WAIT, conn).await;
    assert!(
        r.is_ok(),
        "a connection without streams was kept open by its pings"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(f.app.seen(), 1);
}

#[tokio::test]
async fn an_http2_caller_that_never_acknowledges_the_goaway_is_closed_anyway() {
    let f = Fixture::start_with_limits("idle_timeout = \"1s\"\n").await;
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut reader, mut writer) = tokio::io::split(tls);
    // The preface, empty SETTINGS and the ACK of the server's; then a PING of its own every
    // 200 ms (bytes both ways), never an answer to the server's PINGs.
    writer
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0")
        .await
        .unwrap();
    let pinging = tokio::spawn(async move {
        loop {
            let ping = b"\0\0\x08\x06\0\0\0\0\0pingpong";
            if writer.write_all(ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(WAIT, reader.read_to_end(&mut buf)).await;
    pinging.abort();
    assert!(
        closed.is_ok(),
        "a client ignoring the GOAWAY kept its connection"
    );
    // It was sent a GOAWAY (frame type 7) first.
    let mut types = Vec::new();
    let mut rest = &buf[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push(rest[3]);
        rest = rest.get(9 + len..).unwrap_or(&[]);
    }
    assert!(types.contains(&7), "no GOAWAY among frame types {types:?}");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_and_counted() {
    let f = Fixture::start_with_limits("max_connections = 2\n").await;
    let web = f.client(WEB_ID);
    let held1 = web.connect(f.inbound).await.unwrap();
    let held2 = web.connect(f.inbound).await.unwrap();
    let mut third = TcpStream::connect(f.inbound).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, third.read_to_end(&mut buf)).await;
    assert!(r.is_ok() && buf.is_empty(), "third connection was served");
    let m = wait_for_metric(&f, "warden_sidecar_connections_refused_total 1").await;
    assert!(
        m.contains("warden_sidecar_connections_refused_total 1"),
        "{m}"
    );
    drop(held1);
    drop(held2);
    // Slots are released when connections end.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok((StatusCode::OK, _, _)) = web.request(f.inbound, get("/x")).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn workload_api_stream_loss_is_retried_and_established_connections_stay() {
    let f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID);
    let leaf = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let tls = web.connect(f.inbound).await.unwrap();
    let first = leaf(&tls);
    let mut sender = crate::raw_http::h2_sender(tls).await;
    // The agent goes away and comes back with a new SVID.
    f.api.break_streams();
    f.api.set(
        &f.ca.issue_svid(&id(SIDECAR_ID), Duration::from_secs(600)),
        &f.ca,
        &[],
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tls = web.connect(f.inbound).await.unwrap();
        if leaf(&tls) != first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sidecar never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = sender.send_request(get_h2("/still-here")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_closes_open_connections_gracefully() {
    let mut f = Fixture::start(Options::default()).await;
    let web = f.client(WEB_ID).http1();
    let tls = web.connect(f.inbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Full<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tls))
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(get("/before")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    // A kept-alive, idle connection: shutdown must close it and return.
    tokio::time::timeout(WAIT, f.shutdown()).await.unwrap();
    let ended = tokio::time::timeout(WAIT, conn).await;
    assert!(ended.is_ok(), "connection still open after shutdown");
    assert!(
        TcpStream::connect(f.inbound).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn start_fails_clearly_on_a_bad_policy_dir_or_decision_log_path() {
    let dir = tempfile::tempdir().unwrap();
    let api = WorkloadApi::start(dir.path()).await;
    let text = |policies: &str, log: &str| {
        format!(
            "workload_api_socket = \"{}\"\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:1\"\nservice = \"api\"\n[policy]\ndir = \"{policies}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[decision_log]\npath = \"{log}\"\n",
            api.socket.display()
        )
    };
    let good = policy_dir(dir.path(), POLICIES);
    let env = HashMap::<String, String>::new();
    for (policies, log, needle) in [
        ("/nonexistent/policies", "-", "/nonexistent/policies"),
        (
            good.to_str().unwrap(),
            "/nonexistent/dir/decisions.log",
            "/nonexistent/dir/decisions.log",
        ),
    ] {
        let config =
            Config::from_toml(&text(policies, log), "t", &Overrides::default(), &env).unwrap();
        let err = Sidecar::start(config).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[tokio::test]
async fn trust_bundle_swapped_live_applies_to_new_handshakes_and_closes_connections_it_no_longer_trusts()
 {
    let f = Fixture::start(Options::default()).await;
    // The trust domain moves to a new root, as after a CA rotation. Clients trust both roots
    // for the server, so what is tested is the sidecar's view of them.
    let new_ca = TestCa::new(TD);
    let mut both = f.ca.bundle();
    both.add_x509_authority(new_ca.root_cert().clone());
    let client_of = |ca: &TestCa| {
        let svid = ca.issue_svid(&id(WEB_ID), Duration::from_secs(600));
        Client::new(Some(svid), std::iter::once(both.clone()).collect()).http1()
    };
    let (old_client, new_client) = (client_of(&f.ca), client_of(&new_ca));
    let (status, _, _) = old_client.request(f.inbound, get("/x")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(new_client.request(f.inbound, get("/x")).await.is_err());
    wait_for_metric(&f, r#"reason="untrusted"} 1"#).await;
    let mut kept = old_client.http1_sender(f.inbound).await;
    assert_eq!(
        kept.send_request(get("/x")).await.unwrap().status(),
        StatusCode::OK
    );

    // The Workload API now sends an SVID and bundle of the new root only.
    let svid = new_ca.issue_svid(&id(SIDECAR_ID), Duration::from_secs(3600));
    f.api.set(&svid, &new_ca, &[]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while new_client.request(f.inbound, get("/x")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new root was never trusted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New handshakes: the old root is no longer trusted, and the server presents the new SVID.
    assert!(old_client.request(f.inbound, get("/x")).await.is_err());
    let tls = new_client.connect(f.inbound).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(leaf.as_ref(), svid.cert_chain()[0].as_ref());
    // The connection made under the old bundle is closed: its caller's CA is no longer
    // trusted. (A rotation that keeps the old root keeps it: the next test.)
    closed_sender(&mut kept).await;
}

#[tokio::test]
async fn silent_admin_connections_neither_stay_nor_keep_the_probes_out() {
    let f = Fixture::start(Options::default()).await;
    // 32 connections that never send a request fill every slot.
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(TcpStream::connect(f.admin).await.unwrap());
    }
    // A probe is still answered, well before the silent ones' 5 s head deadline: it takes the
    // slot of the oldest silent connection, which is closed.
    let probe = tokio::time::timeout(Duration::from_secs(4), admin_get(f.admin, "/healthz")).await;
    assert_eq!(
        probe.expect("a probe waited behind silent connections"),
        (200, "ok\n".to_owned())
    );
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(4), silent[0].read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "the oldest silent connection was not closed for the probe"
    );
    // The others are closed at the head deadline.
    for s in &mut silent[1..] {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "a silent admin connection was kept open");
    }
}
