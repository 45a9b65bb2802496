//! Tests of how a shared HTTP/2 connection gives up on requests (lingering, `linger.rs`) and how
//! more connections are opened when the peer's stream limit is reached.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
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

pub(super) fn get(path: &str) -> Request<Empty<Bytes>> {
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
    assert_eq!(state.0.lingering.load(Ordering::Relaxed), MAX_LINGERING);

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
    assert_eq!(state.0.lingering.load(Ordering::Relaxed), 0);
}

/// What the test tells [`limited_server`]: which held requests to answer, and when to send
/// every connection a GOAWAY.
struct Control {
    /// Paths to answer; `None` once every request is to be answered.
    answer: std::sync::Mutex<Option<std::collections::HashSet<String>>>,
    changed: tokio::sync::Notify,
    goaway: tokio::sync::Notify,
    /// While true, a new connection's HTTP/2 handshake (the server's SETTINGS) waits.
    hold_settings: tokio::sync::watch::Sender<bool>,
}

impl Control {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            answer: std::sync::Mutex::new(Some(Default::default())),
            changed: tokio::sync::Notify::new(),
            goaway: tokio::sync::Notify::new(),
            hold_settings: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Answers the held request for `path`.
    fn answer(&self, path: &str) {
        if let Some(paths) = self.answer.lock().unwrap().as_mut() {
            paths.insert(path.to_owned());
        }
        self.changed.notify_waiters();
    }

    /// Answers every request, held or to come.
    fn answer_all(&self) {
        *self.answer.lock().unwrap() = None;
        self.changed.notify_waiters();
    }

    async fn answered(&self, path: &str) {
        loop {
            let changed = self.changed.notified();
            match self.answer.lock().unwrap().as_ref() {
                None => return,
                Some(paths) if paths.contains(path) => return,
                Some(_) => {}
            }
            changed.await;
        }
    }
}

/// An h2c server on loopback that lets each connection open `max_streams` streams at once,
/// numbers its connections in the order accepted, reports each request as (connection, path)
/// and answers it when `Control` says so.
async fn limited_server(
    max_streams: u32,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(usize, String)>,
    Arc<Control>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let control = Control::new();
    let ctl = Arc::clone(&control);
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((io, _)) = listener.accept().await else {
                return;
            };
            let (seen_tx, ctl) = (seen_tx.clone(), Arc::clone(&ctl));
            tokio::spawn(async move {
                let mut held = ctl.hold_settings.subscribe();
                while *held.borrow_and_update() {
                    if held.changed().await.is_err() {
                        return;
                    }
                }
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(max_streams)
                    .handshake::<_, Bytes>(io)
                    .await
                    .unwrap();
                loop {
                    let (req, mut respond) = tokio::select! {
                        accepted = conn.accept() => match accepted {
                            Some(Ok(stream)) => stream,
                            _ => return,
                        },
                        () = ctl.goaway.notified() => {
                            conn.graceful_shutdown();
                            continue;
                        }
                    };
                    let path = req.uri().path().to_owned();
                    let _ = seen_tx.send((n, path.clone()));
                    let ctl = Arc::clone(&ctl);
                    tokio::spawn(async move {
                        ctl.answered(&path).await;
                        let _ = respond.send_response(Response::new(()), true);
                    });
                }
            });
        }
    });
    (addr, seen, control)
}

/// The next request the server saw, within 10 s.
async fn next_seen(seen: &mut mpsc::UnboundedReceiver<(usize, String)>) -> (usize, String) {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the server sees the request within 10 s")
        .unwrap()
}

/// A shared connection pool as the tests use it: idle for a minute, no pings.
fn pool() -> Arc<SharedH2> {
    Arc::new(SharedH2::new(
        Duration::from_secs(60),
        None,
        Duration::from_secs(1),
    ))
}

/// Sends `path` on `shared` (dialing `addr`) in a task of its own; the task gets the status.
fn spawn_send(
    shared: &Arc<SharedH2>,
    addr: std::net::SocketAddr,
    path: String,
) -> tokio::task::JoinHandle<http::StatusCode> {
    let dial = move || async move { TcpStream::connect(addr).await.map_err(|e| e.to_string()) };
    let shared = Arc::clone(shared);
    tokio::spawn(async move { shared.send(get(&path), dial).await.unwrap().status() })
}

/// Sends `path` in a task of its own; returns once the server has seen it, with the
/// connection it came on and the task that gets its answer.
async fn send_held(
    shared: &Arc<SharedH2>,
    addr: std::net::SocketAddr,
    seen: &mut mpsc::UnboundedReceiver<(usize, String)>,
    path: String,
) -> (usize, tokio::task::JoinHandle<http::StatusCode>) {
    let answer = spawn_send(shared, addr, path.clone());
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
    let shared = pool();
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
    release.answer_all();
    for answer in answers {
        assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
    }
    // Idle again: the next request takes the first connection.
    let (conn, answer) = send_held(&shared, addr, &mut seen, "/after".to_owned()).await;
    assert_eq!(conn, 0);
    assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
}

/// Past `MAX_CONNECTIONS` full connections a request waits for a stream to end on one of them
/// (it is not refused, and no further connection is opened).
#[tokio::test]
async fn past_the_most_connections_a_request_waits_for_a_stream() {
    let (addr, mut seen, release) = limited_server(1).await;
    let shared = pool();
    let mut answers = Vec::new();
    for n in 0..MAX_CONNECTIONS {
        let (conn, answer) = send_held(&shared, addr, &mut seen, format!("/held/{n}")).await;
        assert_eq!(conn, n);
        answers.push(answer);
        settled(&shared, 1).await;
    }
    for n in 0..2 {
        answers.push(spawn_send(&shared, addr, format!("/waits/{n}")));
    }
    // The two past the limit wait: the server sees nothing more until a stream ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err(), "a request went past the limit");
    release.answer_all();
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

/// When opening one more connection beside full ones fails, the request waits for a stream on
/// an open one instead of failing.
#[tokio::test]
async fn a_failed_extra_connection_leaves_the_request_waiting_on_an_open_one() {
    let (addr, mut seen, control) = limited_server(1).await;
    let shared = pool();
    let (_, first) = send_held(&shared, addr, &mut seen, "/held".to_owned()).await;
    settled(&shared, 1).await;
    // Every dial after the first fails.
    let refused = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&refused);
    let dial = move || {
        count.fetch_add(1, Ordering::Relaxed);
        async move { Err::<TcpStream, _>("refused".to_owned()) }
    };
    let waiting = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move { shared.send(get("/waits"), dial).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        refused.load(Ordering::Relaxed),
        1,
        "one more connection was tried"
    );
    assert!(seen.try_recv().is_err(), "the stream limit was passed");
    control.answer("/held");
    assert_eq!(next_seen(&mut seen).await, (0, "/waits".to_owned()));
    control.answer_all();
    assert_eq!(first.await.unwrap(), http::StatusCode::OK);
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    assert_eq!(answer.unwrap().unwrap().unwrap(), http::StatusCode::OK);
}

/// Pooled connections told to go away (streams still running on them) are each left out as
/// the request finds them, and the request goes on a new connection: they do not use up its
/// one retry.
#[tokio::test]
async fn connections_that_were_told_to_go_away_are_skipped_not_retried_into_an_error() {
    let (addr, mut seen, control) = limited_server(2).await;
    let shared = pool();
    let mut answers = Vec::new();
    for path in ["/a0", "/a1", "/b0", "/b1", "/c0", "/c1"] {
        answers.push(send_held(&shared, addr, &mut seen, path.to_owned()).await);
        settled(&shared, 2).await;
    }
    let conns: Vec<usize> = answers.iter().map(|(conn, _)| *conn).collect();
    assert_eq!(conns, [0, 0, 1, 1, 2, 2]);
    let mut held = Vec::new();
    // One stream ends on each: three connections with room, each still carrying a stream.
    for (n, (_, answer)) in answers.into_iter().enumerate() {
        if n % 2 == 1 {
            control.answer(["/a1", "/b1", "/c1"][n / 2]);
            assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
        } else {
            held.push(answer);
        }
    }
    // The server tells every connection to go away; wait until the client has read it.
    control.goaway.notify_waiters();
    let senders: Vec<SendRequest<Bytes>> = {
        let current = shared.current.lock().unwrap();
        current.iter().map(|open| open.sender.clone()).collect()
    };
    assert_eq!(senders.len(), 3);
    for mut sender in senders {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut cx = Context::from_waker(Waker::noop());
        while matches!(sender.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            assert!(Instant::now() < deadline, "GOAWAY not read");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (conn, answer) = send_held(&shared, addr, &mut seen, "/new".to_owned()).await;
    assert_eq!(conn, 3, "a new connection");
    control.answer_all();
    assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
    for answer in held {
        assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
    }
}

/// A connection whose streams run for longer than `max_idle` is busy, not idle: it stays in the
/// pool (counted against `MAX_CONNECTIONS`) while a new one is opened beside it.
#[tokio::test]
async fn a_full_connection_with_long_streams_stays_in_the_pool() {
    let (addr, mut seen, control) = limited_server(1).await;
    let max_idle = Duration::from_millis(100);
    let shared = Arc::new(SharedH2::new(max_idle, None, Duration::from_secs(1)));
    let (_, first) = send_held(&shared, addr, &mut seen, "/long".to_owned()).await;
    settled(&shared, 1).await;
    tokio::time::sleep(max_idle * 3).await;
    let (conn, second) = send_held(&shared, addr, &mut seen, "/next".to_owned()).await;
    assert_eq!(conn, 1);
    assert_eq!(
        shared.current.lock().unwrap().len(),
        2,
        "the busy one was dropped"
    );
    control.answer_all();
    assert_eq!(first.await.unwrap(), http::StatusCode::OK);
    assert_eq!(second.await.unwrap(), http::StatusCode::OK);
}

/// A further connection to the same peer takes no more streams than the open ones learned the
/// peer allows, even before its own SETTINGS arrive: a burst on it spreads over more
/// connections instead of being refused past the limit.
#[tokio::test]
async fn a_burst_on_a_new_connection_keeps_to_the_limit_the_open_ones_learned() {
    let (addr, mut seen, control) = limited_server(2).await;
    let shared = pool();
    let mut answers = Vec::new();
    for n in 0..2 {
        answers.push(
            send_held(&shared, addr, &mut seen, format!("/held/{n}"))
                .await
                .1,
        );
    }
    settled(&shared, 2).await;
    // Three at once: the first opens a connection, the other two wait for it, then go, all
    // before the new connection's SETTINGS (held back until they are sent).
    control.hold_settings.send_replace(true);
    for n in 2..5 {
        answers.push(spawn_send(&shared, addr, format!("/held/{n}")));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    control.hold_settings.send_replace(false);
    let mut per_connection = [0; 3];
    for _ in 2..5 {
        per_connection[next_seen(&mut seen).await.0] += 1;
    }
    // Two on the new connection (the limit the first one learned), one on a third.
    assert_eq!(per_connection, [0, 2, 1]);
    control.answer_all();
    for answer in answers {
        assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
    }
}

/// On a runtime with several workers, requests racing for the pool never take the same free
/// stream slot: each counts its stream under the pool's lock. With a limit of one stream per
/// connection, as many requests at once as `MAX_CONNECTIONS` each get a connection of their
/// own, and none waits behind another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_on_several_workers_never_share_a_free_slot() {
    // The race is a matter of timing: twenty rounds give it the chance to show.
    for _ in 0..20 {
        let (addr, mut seen, control) = limited_server(1).await;
        let shared = pool();
        let (_, first) = send_held(&shared, addr, &mut seen, "/first".to_owned()).await;
        settled(&shared, 1).await;
        control.answer("/first");
        assert_eq!(first.await.unwrap(), http::StatusCode::OK);
        let barrier = Arc::new(tokio::sync::Barrier::new(MAX_CONNECTIONS));
        let racing: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|n| {
                let (shared, barrier) = (Arc::clone(&shared), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    spawn_send(&shared, addr, format!("/race/{n}"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut connections = std::collections::BTreeSet::new();
        for _ in 0..MAX_CONNECTIONS {
            connections.insert(next_seen(&mut seen).await.0);
        }
        assert_eq!(connections.len(), MAX_CONNECTIONS, "{connections:?}");
        control.answer_all();
        for answer in racing {
            assert_eq!(answer.await.unwrap(), http::StatusCode::OK);
        }
    }
}
