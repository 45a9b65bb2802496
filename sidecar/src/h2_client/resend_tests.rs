//! Tests of sending once more a request the peer did not process: refused (`REFUSED_STREAM`) or
//! above the last stream id of its GOAWAY; and of not sending once more one it may have
//! processed, or one with a body.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::resend::unprocessed;
use super::tests::get;
use super::*;

/// What the server does with a request: answer it (200), refuse it, go away at once (GOAWAY
/// with this request's stream as the last one, then close), or hold it unanswered until told
/// to go away that way, reading nothing more meanwhile.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Answer,
    Refuse,
    GoAway,
    HoldThenGoAway,
}

/// What the server decides for each request: `act(connection, path)` (connections numbered
/// from 0 in the order accepted).
type Script = dyn Fn(usize, &str) -> Act + Send + Sync;

/// A request's head as the server read it.
type Head = (http::Method, http::Uri, http::HeaderMap);

/// An h2c server on loopback that does what its script says with each request. It records
/// each request it accepted as (connection, path), and its head.
struct Server {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    heads: Arc<Mutex<Vec<Head>>>,
    /// Tells a connection holding a request to go away.
    go_away: Arc<Notify>,
}

impl Server {
    async fn start(act: impl Fn(usize, &str) -> Act + Send + Sync + 'static) -> Self {
        let act: Arc<Script> = Arc::new(act);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let go_away = Arc::new(Notify::new());
        let (seen2, heads2, go_away2) =
            (Arc::clone(&seen), Arc::clone(&heads), Arc::clone(&go_away));
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let (seen, heads, go_away) = (
                    Arc::clone(&seen2),
                    Arc::clone(&heads2),
                    Arc::clone(&go_away2),
                );
                let act = Arc::clone(&act);
                tokio::spawn(async move {
                    let mut conn = h2::server::Builder::new()
                        .handshake::<_, Bytes>(io)
                        .await
                        .unwrap();
                    let mut held = Vec::new();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let path = req.uri().path().to_owned();
                        seen.lock().unwrap().push((n, path.clone()));
                        let (head, _) = req.into_parts();
                        heads
                            .lock()
                            .unwrap()
                            .push((head.method, head.uri, head.headers));
                        match act(n, &path) {
                            Act::Answer => {
                                let _ = respond.send_response(Response::new(()), true);
                            }
                            Act::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
                            Act::GoAway => {
                                held.push(respond);
                                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                            }
                            Act::HoldThenGoAway => {
                                held.push(respond);
                                // Nothing more is read until then: a request sent meanwhile
                                // stays unread, above the GOAWAY's last stream id.
                                go_away.notified().await;
                                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            heads,
            go_away,
        }
    }

    fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
    }

    fn heads(&self) -> Vec<Head> {
        self.heads.lock().unwrap().clone()
    }

    /// Waits until the server has accepted `n` requests in all.
    async fn until_seen(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.seen.lock().unwrap().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", self.seen());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn dial(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>>
    + Clone
    + Send
    + 'static {
        let addr = self.addr;
        move || Box::pin(async move { TcpStream::connect(addr).await.map_err(|e| e.to_string()) })
    }
}

fn pool() -> Arc<SharedH2> {
    Arc::new(SharedH2::new(
        Duration::from_secs(60),
        None,
        Duration::from_secs(1),
    ))
}

fn path(seen: &[(usize, String)]) -> Vec<&str> {
    seen.iter().map(|(_, p)| p.as_str()).collect()
}

/// Waits until `shared`'s first connection has `n` exchanges in flight.
async fn until_in_flight(shared: &SharedH2, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = shared.current.lock().unwrap()[0]
            .state
            .in_flight
            .load(Ordering::Relaxed);
        if now == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now} in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A request the peer refused the first time gets its answer from the second, which carries
/// the first one's method, URI and every header field (repeated ones in their order).
#[tokio::test]
async fn a_refused_bodiless_request_is_sent_once_more_and_answered() {
    let refused = AtomicBool::new(false);
    let server = Server::start(move |_, _| match refused.swap(true, Ordering::Relaxed) {
        false => Act::Refuse,
        true => Act::Answer,
    })
    .await;
    let shared = pool();
    let req = Request::delete("http://api.local:8080/items/7?force=1")
        .header("x-trace", "a")
        .header("accept", "text/plain")
        .header("x-trace", "b")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://example.org/api;URI=spiffe://example.org/web",
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = shared.send(req, server.dial()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Both on the one connection: a refusal leaves the connection open.
    assert_eq!(
        server.seen(),
        vec![(0, "/items/7".into()), (0, "/items/7".into())]
    );
    let heads = server.heads();
    assert_eq!(heads[0], heads[1]);
    let (method, uri, headers) = &heads[1];
    assert_eq!(method, http::Method::DELETE);
    assert_eq!(uri.to_string(), "http://api.local:8080/items/7?force=1");
    let traces: Vec<_> = headers.get_all("x-trace").iter().collect();
    assert_eq!(traces, ["a", "b"]);
    assert_eq!(headers.len(), 4, "{headers:?}");
}

/// A request refused every time is sent twice in all, then fails with the refusal.
#[tokio::test]
async fn a_request_refused_again_fails_after_one_resend() {
    let server = Server::start(|_, _| Act::Refuse).await;
    let shared = pool();
    let Err(H2Error::Http(e)) = shared.send(get("/x"), server.dial()).await else {
        panic!("a request refused twice must fail");
    };
    assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM));
    assert_eq!(path(&server.seen()), ["/x", "/x"]);
}

/// A request with a body is not sent again when refused: its body is gone.
#[tokio::test]
async fn a_refused_request_with_a_body_is_not_sent_again() {
    let server = Server::start(|_, _| Act::Refuse).await;
    let shared = pool();
    let req = Request::post("http://127.0.0.1/upload")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let Err(H2Error::Http(e)) = shared.send(req, server.dial()).await else {
        panic!("a refused request with a body must fail");
    };
    assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM));
    assert_eq!(path(&server.seen()), ["/upload"]);
}

/// The peer goes away with `/held` accepted and `/racing` sent but unread: `/racing`, above
/// the GOAWAY's last stream id, is sent on a new connection and answered; `/held`, which the
/// peer may have processed, fails and is not sent again.
#[tokio::test]
async fn requests_above_the_goaway_are_sent_on_a_new_connection_those_below_are_not() {
    let server = Server::start(|n, path| match (n, path) {
        (0, "/held") => Act::HoldThenGoAway,
        _ => Act::Answer,
    })
    .await;
    let shared = pool();
    let held = {
        let (shared, dial) = (Arc::clone(&shared), server.dial());
        tokio::spawn(async move { shared.send(get("/held"), dial).await.map(|r| r.status()) })
    };
    server.until_seen(1).await;
    let racing = {
        let (shared, dial) = (Arc::clone(&shared), server.dial());
        tokio::spawn(async move { shared.send(get("/racing"), dial).await.map(|r| r.status()) })
    };
    // Its HEADERS are queued (their stream is above the last one the peer will accept, written
    // or not), then the peer goes away without having read them.
    until_in_flight(&shared, 2).await;
    server.go_away.notify_one();

    let racing = tokio::time::timeout(Duration::from_secs(10), racing)
        .await
        .expect("the racing request ends within 10 s")
        .unwrap();
    assert_eq!(racing.unwrap(), StatusCode::OK);
    let held = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held request ends within 10 s")
        .unwrap();
    let Err(H2Error::Http(e)) = held else {
        panic!("the held request must fail: {held:?}");
    };
    assert!(!unprocessed(&e), "{e}");
    assert_eq!(
        server.seen(),
        vec![(0, "/held".into()), (1, "/racing".into())]
    );
}

/// A refusal made on this side (not the peer's) says nothing of what the peer processed.
#[test]
fn a_refusal_not_from_the_peer_does_not_mark_a_stream_unprocessed() {
    assert!(!unprocessed(&h2::Error::from(h2::Reason::REFUSED_STREAM)));
}

/// A connection that went away after it was found ready (its driver, on another thread, read
/// the GOAWAY in between) gives a bodiless request back to be sent on another connection, and
/// is no longer offered; a request whose head was not kept fails with the GOAWAY.
#[tokio::test]
async fn a_request_a_gone_connection_could_not_take_is_given_back() {
    let server = Server::start(|_, path| match path {
        "/bye" => Act::GoAway,
        _ => Act::Answer,
    })
    .await;
    let shared = pool();
    shared.send(get("/warm"), server.dial()).await.unwrap();
    let (sender, slot) = shared.open().unwrap();
    let state = Arc::clone(&slot.0);
    drop(slot);
    // The peer goes away; h2 then fails every new stream on the connection.
    assert!(shared.send(get("/bye"), server.dial()).await.is_err());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut cx = Context::from_waker(Waker::noop());
    // Until the GOAWAY is read and the connection's driver is done (it marks the connection
    // closed as it ends), so that only `start` can mark it closed again.
    while matches!(sender.clone().poll_ready(&mut cx), Poll::Ready(Ok(())))
        || !state.closed.load(Ordering::Relaxed)
    {
        assert!(tokio::time::Instant::now() < deadline, "no GOAWAY read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    state.closed.store(false, Ordering::Relaxed);

    let in_flight = || InFlight::new(Arc::clone(&state));
    let Err(unsent) = start(&mut sender.clone(), get("/again"), in_flight(), true) else {
        panic!("a gone connection must not take a stream");
    };
    assert!(
        unsent.error.is_go_away() || unsent.error.is_io(),
        "{}",
        unsent.error
    );
    let again = unsent.again.expect("the request back");
    assert_eq!(again.uri().path(), "/again");
    assert!(state.closed.load(Ordering::Relaxed), "still offered");

    // Not kept: the resend itself (`replayable` false), and a request with a body.
    let Err(unsent) = start(&mut sender.clone(), get("/again"), in_flight(), false) else {
        panic!("a gone connection must not take a stream");
    };
    assert!(unsent.again.is_none());
    let post = Request::post("http://127.0.0.1/upload")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let Err(unsent) = start(&mut sender.clone(), post, in_flight(), true) else {
        panic!("a gone connection must not take a stream");
    };
    assert!(unsent.again.is_none());
    assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);

    // The pool dials a new connection for the next request.
    let response = shared.send(get("/next"), server.dial()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.seen().last(), Some(&(1, "/next".into())));
}

/// A request's own error (a malformed head) does not mark the connection closed or give the
/// request back: it would fail on any connection.
#[tokio::test]
async fn a_malformed_request_is_not_given_back() {
    let server = Server::start(|_, _| Act::Answer).await;
    let shared = pool();
    shared.send(get("/warm"), server.dial()).await.unwrap();
    let (mut sender, slot) = shared.open().unwrap();
    let state = Arc::clone(&slot.0);
    // A connection-specific header field is malformed in HTTP/2 (RFC 9113 section 8.2.2).
    let req = Request::get("http://127.0.0.1/x")
        .header("connection", "keep-alive")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let Err(unsent) = start(&mut sender, req, slot, true) else {
        panic!("a malformed request must not be sent");
    };
    assert!(unsent.again.is_none());
    assert!(!state.closed.load(Ordering::Relaxed));
}
