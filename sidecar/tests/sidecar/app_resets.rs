//! The inbound's shared h2c connection to the app outlives its callers' cancellations: the
//! app's answers to streams the inbound has just reset (they cross on the wire, which is
//! routine under load) must not add up to the connection being torn down, which would fail
//! every other caller's request in flight on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::raw_http::{frame, h2_sender};
use crate::support::*;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// An HPACK header block of `:status: 200` alone (static table index 8).
const STATUS_200: &[u8] = &[0x88];

/// Cancelled streams the app answers late: more than h2's lifetime limit on streams a
/// connection resets for frames it no longer expects (1024 by default), beyond the resets it
/// remembers.
const CANCELLED: usize = 1500;

/// What the racing app has seen.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    resets: AtomicUsize,
    /// The first stream's id once it has arrived.
    victim: AtomicUsize,
}

/// An h2c app written frame by frame. The first stream it gets (the victim) is answered last;
/// every later one gets its response headers at once, and once the inbound has reset
/// [`CANCELLED`] of them, each gets a DATA frame, as if the app had written it just before
/// reading the reset. Then the victim gets its answer.
async fn racing_app(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((io, _)) = listener.accept().await else {
            return;
        };
        seen.connections.fetch_add(1, Ordering::SeqCst);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let _ = serve(io, &seen).await;
        });
    }
}

async fn serve(mut io: TcpStream, seen: &Seen) -> std::io::Result<()> {
    io.set_nodelay(true)?;
    let mut preface = [0u8; 24];
    io.read_exact(&mut preface).await?;
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    let mut victim = None;
    let mut cancelled = Vec::new();
    loop {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await?;
        match kind {
            SETTINGS if flags & ACK == 0 => io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?,
            PING if flags & ACK == 0 => io.write_all(&frame(PING, ACK, 0, &payload)).await?,
            HEADERS if victim.is_none() => {
                victim = Some(stream);
                seen.victim.store(stream as usize, Ordering::SeqCst);
            }
            HEADERS => {
                io.write_all(&frame(HEADERS, END_HEADERS, stream, STATUS_200))
                    .await?;
            }
            RST_STREAM if Some(stream) != victim => {
                cancelled.push(stream);
                seen.resets.fetch_add(1, Ordering::SeqCst);
                if cancelled.len() == CANCELLED {
                    let mut late = Vec::new();
                    for s in &cancelled {
                        late.extend_from_slice(&frame(DATA, 0, *s, b"late"));
                    }
                    io.write_all(&late).await?;
                    if let Some(v) = victim {
                        let answer = frame(HEADERS, END_HEADERS | END_STREAM, v, STATUS_200);
                        io.write_all(&answer).await?;
                    }
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn app_answers_crossing_cancellations_do_not_tear_down_the_shared_app_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    tokio::spawn(racing_app(listener, Arc::clone(&seen)));
    let f = Fixture::start(Options {
        app_addr: Some(app_addr),
        ..Options::default()
    })
    .await;
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let mut sender = h2_sender(tls).await;
    let victim = tokio::spawn(sender.send_request(get_h2("/victim")));
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.victim.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim never reached the app"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Each caller stream gets its response headers, then the caller gives up on it: the inbound
    // resets the app's stream.
    for _ in 0..CANCELLED {
        let resp = sender.send_request(get_h2("/gone")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        drop(resp);
    }
    let resp = tokio::time::timeout(WAIT, victim)
        .await
        .expect("the victim got no answer")
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the victim's request failed with the shared app connection"
    );
    // Every cancellation reached the app (and some late DATA got a reset of its own).
    assert!(seen.resets.load(Ordering::SeqCst) >= CANCELLED);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}
