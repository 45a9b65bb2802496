//! The inbound's shared h2c connection to the app outlives its callers' cancellations: the
//! app's answers to streams the inbound has just reset (they cross on the wire, which is
//! routine under load) must not add up to the connection being torn down, which would fail
//! every other caller's request in flight on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::raw_http::h2frame::*;
use crate::raw_http::{frame, h2_sender};
use crate::support::*;

/// An HPACK header block of `:status: 200` alone (static table index 8).
const STATUS_200: &[u8] = &[0x88];

/// Cancelled streams the app answers late: more than h2's lifetime limit on streams a
/// connection resets for frames it no longer expects (1024 by default), beyond the resets it
/// remembers.
const CANCELLED: usize = 1500;

/// What the racing app has seen.
#[derive(Default)]
struct Seen {
    /// How many streams the app lets the inbound reset before it answers them all late.
    batch: usize,
    connections: AtomicUsize,
    resets: AtomicUsize,
    /// The first stream's id once it has arrived.
    victim: AtomicUsize,
}

/// An h2c app written frame by frame. The first stream it gets (the victim) is answered last;
/// every later one gets its response headers at once, and once the inbound has reset
/// `batch` of them, each gets a DATA frame, as if the app had written it just before
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
                let batch = if seen.batch == 0 {
                    CANCELLED
                } else {
                    seen.batch
                };
                if cancelled.len() == batch {
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

/// A sidecar in front of the app at `app_addr`, a caller connection, and a request on it to
/// `path` (the victim) that the app has (`reached` says so).
async fn victim_in_flight(
    app_addr: std::net::SocketAddr,
    path: &str,
    reached: impl Fn() -> bool,
) -> (
    Fixture,
    hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>,
) {
    let f = Fixture::start(Options {
        app_addr: Some(app_addr),
        ..Options::default()
    })
    .await;
    let tls = f.client(WEB_ID).connect(f.inbound).await.unwrap();
    let mut sender = h2_sender(tls).await;
    let victim = tokio::spawn(sender.send_request(get_h2(path)));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !reached() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim never reached the app"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (f, sender, victim)
}

/// The victim's request got its 200.
async fn assert_victim_answered(
    victim: tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>,
) {
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
}

/// A racing app answering `batch` cancelled streams late, a sidecar in front of it, a caller
/// connection and the victim's request in flight on it.
async fn racing(
    batch: usize,
) -> (
    Arc<Seen>,
    Fixture,
    hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen {
        batch,
        ..Seen::default()
    });
    tokio::spawn(racing_app(listener, Arc::clone(&seen)));
    let (f, sender, victim) = victim_in_flight(app_addr, "/victim", || {
        seen.victim.load(Ordering::SeqCst) != 0
    })
    .await;
    (seen, f, sender, victim)
}

/// A burst of cancellations (200, as when a caller with that many requests in flight goes
/// away) whose answers cross them: the inbound remembers the streams it reset, so the late
/// frames are dropped quietly instead of each drawing a reset of its own (h2 remembers 50 by
/// default).
#[tokio::test]
async fn app_answers_crossing_a_burst_of_cancellations_draw_no_resets_of_their_own() {
    const BURST: usize = 200;
    let (seen, _f, mut sender, victim) = racing(BURST).await;
    for _ in 0..BURST {
        let resp = sender.send_request(get_h2("/gone")).await.unwrap();
        drop(resp);
    }
    assert_victim_answered(victim).await;
    // Any reset for a late DATA frame was written before the victim's answer was read.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(seen.resets.load(Ordering::SeqCst), BURST);
}

#[tokio::test]
async fn app_answers_crossing_cancellations_do_not_tear_down_the_shared_app_connection() {
    let (seen, _f, mut sender, victim) = racing(CANCELLED).await;
    // Each caller stream gets its response headers, then the caller gives up on it: the inbound
    // resets the app's stream.
    for _ in 0..CANCELLED {
        let resp = sender.send_request(get_h2("/gone")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        drop(resp);
    }
    assert_victim_answered(victim).await;
    // Every cancellation reached the app (and some late DATA got a reset of its own).
    assert!(seen.resets.load(Ordering::SeqCst) >= CANCELLED);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

/// Streams a caller has in flight when it goes away: more than an h2 server (hyper's, tonic's)
/// lets a client reset before it has accepted them (20) before it closes the connection
/// (GOAWAY `ENHANCE_YOUR_CALM`, the HTTP/2 rapid-reset defence).
const ABANDONED: usize = 64;

/// How long the busy app's `/block` keeps its thread from reading anything.
const BLOCK: std::time::Duration = std::time::Duration::from_millis(300);

/// An HTTP/1.1 + h2c app (hyper's server, defaults) on a thread of its own. `/block` holds the
/// thread for [`BLOCK`] (an app busy with a request: it reads no frame meanwhile), then answers
/// 100 ms later; anything else is answered at once. Counts what it got.
fn busy_app() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let _: &hyper::body::Incoming = req.body();
                            if req.uri().path() == "/block" {
                                std::thread::sleep(BLOCK);
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                });
            }
        });
    });
    (addr, seen)
}

/// A busy app behind a sidecar, and the victim: another caller's request, in flight at the app,
/// which is busy with it.
struct BusyApp {
    seen: Arc<AtomicUsize>,
    f: Fixture,
    victim: tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>,
}

impl BusyApp {
    async fn start() -> Self {
        let (app_addr, seen) = busy_app();
        let (f, _sender, victim) =
            victim_in_flight(app_addr, "/block", || seen.load(Ordering::SeqCst) != 0).await;
        Self { seen, f, victim }
    }

    /// A connection for a caller that will send requests and go away.
    async fn caller<B>(&self) -> hyper::client::conn::http2::SendRequest<B>
    where
        B: hyper::body::Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls = self.f.client(WEB_ID).connect(self.f.inbound).await.unwrap();
        h2_sender(tls).await
    }

    /// The caller goes away with its `pending` requests, as a load generator does at its end:
    /// the inbound has forwarded them and then gives them up, all before the app reads any of
    /// it. The victim must still get its answer.
    async fn abandon<T, C>(self, pending: Vec<tokio::task::JoinHandle<T>>, caller: C) {
        // Long enough for the inbound (on this test's thread) to forward them, well within the
        // 100 ms in which a stream given up on lingers.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        for p in pending {
            p.abort();
        }
        drop(caller);
        assert_victim_answered(self.victim).await;
        // The abandoned requests had reached the app's socket, more of them than it lets a
        // client reset before it has accepted them (else the test proved nothing).
        assert!(self.seen.load(Ordering::SeqCst) > 1 + 20, "{:?}", self.seen);
    }
}

#[tokio::test]
async fn a_caller_abandoning_many_streams_at_once_does_not_fail_another_callers_request() {
    let busy = BusyApp::start().await;
    let mut caller = busy.caller().await;
    let pending: Vec<_> = (0..ABANDONED)
        .map(|_| tokio::spawn(caller.send_request(get_h2("/gone"))))
        .collect();
    busy.abandon(pending, caller).await;
}

/// The same with requests whose bodies are still streaming when their caller goes away (an
/// upload, a client-streaming gRPC call): the body's failure must not reset the app's stream
/// at once either.
#[tokio::test]
async fn a_caller_abandoning_many_uploads_at_once_does_not_fail_another_callers_request() {
    let busy = BusyApp::start().await;
    let mut caller = busy.caller().await;
    let mut bodies = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..ABANDONED {
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >(1);
        tx.try_send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"part",
        ))))
        .unwrap();
        bodies.push(tx);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        // A client-streaming gRPC call (the test policy lets `web` make any but one).
        let req = http::Request::post("https://api/test.Upload/Send")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        pending.push(tokio::spawn(caller.send_request(req)));
    }
    busy.abandon(pending, caller).await;
    drop(bodies);
}
