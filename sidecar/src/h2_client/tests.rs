//! Tests of how a shared HTTP/2 connection gives up on requests (lingering, `linger.rs`) and how
//! more connections are opened when the peer's stream limit is reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::linger::{LINGER, MAX_LINGERING};
use super::*;

/// An h2c server on loopback for one connection: it answers `/warm` and holds every other
/// request unanswered, reporting when the client resets each held stream.
async fn holding_server() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reset_tx, resets) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::Builder::new()
            .max_concurrent_streams(1000)
            .handshake::<_, Bytes>(io)
            .await
            .unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            if req.uri().path() == "/warm" {
                let _ = respond.send_response(Response::new(()), true);
                continue;
            }
            let reset_tx = reset_tx.clone();
            tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                let _ = reset_tx.send(Instant::now());
            });
        }
    });
    (addr, resets)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://127.0.0.1{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Requests given up on at once (their futures dropped before first polled, as when the
/// caller's connection ends in the read that brought them) are not reset at once: at most
/// `MAX_LINGERING` of them linger, each for at most `LINGER` after it was sent; the rest are
/// reset at once.
#[tokio::test]
async fn young_requests_given_up_on_linger_up_to_the_cap_and_for_at_most_a_second() {
    let (addr, mut resets) = holding_server().await;
    let shared = SharedH2::new(Duration::from_secs(60), None, Duration::from_secs(1));
    let dial = || async move { TcpStream::connect(addr).await.map_err(|e| e.to_string()) };
    shared.send(get("/warm"), dial).await.unwrap();
    let (_, state) = shared.open().unwrap();

    const ABANDONED: usize = MAX_LINGERING + 2;
    let started = Instant::now();
    for n in 0..ABANDONED {
        // The HEADERS are queued by `send` itself; the future is dropped unpolled.
        drop(shared.send(get(&format!("/held/{n}")), dial));
    }
    assert_eq!(state.lingering.load(Ordering::Relaxed), MAX_LINGERING);

    let mut after = Vec::new();
    while after.len() < ABANDONED {
        let reset = tokio::time::timeout(Duration::from_secs(10), resets.recv())
            .await
            .expect("every abandoned stream is reset within 10 s")
            .unwrap();
        after.push(reset.duration_since(started));
    }
    // Each lingering one was reset once its second was up (with slack for a busy machine).
    assert!(
        after.iter().all(|d| *d < LINGER + Duration::from_secs(4)),
        "{after:?}"
    );
    // Only the two past the cap were reset before the lingering ones' second was up.
    let early = after
        .iter()
        .filter(|d| **d < LINGER - Duration::from_millis(50))
        .count();
    assert!(early <= 2, "{early} reset early: {after:?}");
    assert_eq!(state.lingering.load(Ordering::Relaxed), 0);
}

/// An h2c server on loopback that lets each connection open `max_streams` streams at once,
/// numbers its connections in the order accepted, reports each request as (connection, path)
/// and answers it only when `release` is signalled (one answer per signal).
async fn limited_server(
    max_streams: u32,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(usize, String)>,
    Arc<tokio::sync::Semaphore>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&release);
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let (seen_tx, held) = (seen_tx.clone(), Arc::clone(&held));
            tokio::spawn(async move {
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(max_streams)
                    .handshake::<_, Bytes>(io)
                    .await
                    .unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let _ = seen_tx.send((n, req.uri().path().to_owned()));
                    let held = Arc::clone(&held);
                    tokio::spawn(async move {
                        held.acquire().await.unwrap().forget();
                        let _ = respond.send_response(Response::new(()), true);
                    });
                }
            });
        }
    });
    (addr, seen, release)
}

/// The next request the server saw, within 10 s.
async fn next_seen(seen: &mut mpsc::UnboundedReceiver<(usize, String)>) -> (usize, String) {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the server sees the request within 10 s")
        .unwrap()
}

/// Sends `path` in a task of its own; returns once the server has seen it, with the
/// connection it came on and the task that gets its answer.
async fn send_held(
    shared: &Arc<SharedH2>,
    addr: std::net::SocketAddr,
    seen: &mut mpsc::UnboundedReceiver<(usize, String)>,
    path: String,
) -> (usize, tokio::task::JoinHandle<http::StatusCode>) {
    let dial = move || async move { TcpStream::connect(addr).await.map_err(|e| e.to_string()) };
    let shared = Arc::clone(shared);
    let sent = path.clone();
    let answer = tokio::spawn(async move { shared.send(get(&sent), dial).await.unwrap().status() });
    let (conn, got) = next_seen(seen).await;
    assert_eq!(got, path);
    (conn, answer)
}

/// Waits until every open connection has its peer's SETTINGS (its stream limit is `limit`).
async fn settled(shared: &SharedH2, limit: usize) {
    let limits = || -> Vec<usize> {
        let current = shared.current.lock().unwrap();
        current
            .iter()
            .map(|o| o.sender.current_max_send_streams())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while limits().iter().any(|l| *l != limit) {
        assert!(
            Instant::now() < deadline,
            "SETTINGS not applied: {:?}",
            limits()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Requests past the peer's concurrent-stream limit open another connection instead of
/// queueing behind the held ones; once the load is gone, requests go to the first connection
/// again.
#[tokio::test]
async fn a_connection_at_its_peers_stream_limit_gets_a_second_one_beside_it() {
    let (addr, mut seen, release) = limited_server(2).await;
    let shared = Arc::new(SharedH2::new(
        Duration::from_secs(60),
        None,
        Duration::from_secs(1),
    ));
    let mut conns = Vec::new();
    let mut answers = Vec::new();
    for n in 0..5 {
        let (conn, answer) = send_held(&shared, addr, &mut seen, format!("/held/{n}")).await;
        conns.push(conn);
        answers.push(answer);
        settled(&shared, 2).await;
    }
    // All five reached the server while none was answered: 2 + 2 + 1 on three connections.
    assert_eq!(conns, [0, 0, 1, 1, 2]);
    release.add_permits(5);
    for answer in answers {
        assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
    }
    // Idle again: the next request takes the first connection.
    release.add_permits(1);
    let (conn, answer) = send_held(&shared, addr, &mut seen, "/after".to_owned()).await;
    assert_eq!(conn, 0);
    assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
}

/// Past `MAX_CONNECTIONS` full connections a request waits for a stream to end on one of them
/// (it is not refused, and no further connection is opened).
#[tokio::test]
async fn past_the_most_connections_a_request_waits_for_a_stream() {
    let (addr, mut seen, release) = limited_server(1).await;
    let shared = Arc::new(SharedH2::new(
        Duration::from_secs(60),
        None,
        Duration::from_secs(1),
    ));
    let mut answers = Vec::new();
    for n in 0..MAX_CONNECTIONS {
        let (conn, answer) = send_held(&shared, addr, &mut seen, format!("/held/{n}")).await;
        assert_eq!(conn, n);
        answers.push(answer);
        settled(&shared, 1).await;
    }
    let dial = move || async move { TcpStream::connect(addr).await.map_err(|e| e.to_string()) };
    for n in 0..2 {
        let shared = Arc::clone(&shared);
        answers.push(tokio::spawn(async move {
            shared
                .send(get(&format!("/waits/{n}")), dial)
                .await
                .unwrap()
                .status()
        }));
    }
    // The two past the limit wait: the server sees nothing more until a stream ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err(), "a request went past the limit");
    release.add_permits(MAX_CONNECTIONS + 2);
    for _ in 0..2 {
        let (conn, path) = next_seen(&mut seen).await;
        assert!(path.starts_with("/waits/"), "{path}");
        assert!(
            conn < MAX_CONNECTIONS,
            "a connection past the most was opened"
        );
    }
    for answer in answers {
        assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
    }
}
