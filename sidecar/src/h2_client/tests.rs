//! Tests of how a shared HTTP/2 connection gives up on requests: lingering (`linger.rs`).

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
