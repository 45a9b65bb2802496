//! Tests of sending once more a request the peer did not process: refused (`REFUSED_STREAM`) or
//! above the last stream id of its GOAWAY; and of not sending once more one it may have
//! processed, or one with a body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::*;

/// What the server does with a request: answer it (200), refuse it, or hold it unanswered
/// until told to stop the connection at once (GOAWAY with the last stream it accepted, then
/// close), reading nothing more meanwhile.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Answer,
    Refuse,
    HoldThenGoAway,
}

/// An h2c server on loopback; `act(connection, path)` says what it does with each request
/// (connections numbered from 0 in the order accepted). It records each request it accepted as
/// (connection, path).
struct Server {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    /// Tells a connection holding a request to go away.
    go_away: Arc<Notify>,
}

impl Server {
    async fn start(act: fn(usize, &str) -> Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let go_away = Arc::new(Notify::new());
        let (seen2, go_away2) = (Arc::clone(&seen), Arc::clone(&go_away));
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let (seen, go_away) = (Arc::clone(&seen2), Arc::clone(&go_away2));
                tokio::spawn(async move {
                    let mut conn = h2::server::Builder::new()
                        .handshake::<_, Bytes>(io)
                        .await
                        .unwrap();
                    let mut held = Vec::new();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let path = req.uri().path().to_owned();
                        seen.lock().unwrap().push((n, path.clone()));
                        match act(n, &path) {
                            Act::Answer => {
                                let _ = respond.send_response(Response::new(()), true);
                            }
                            Act::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
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
            go_away,
        }
    }

    fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
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

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://127.0.0.1{path}"))
        .body(Empty::new())
        .unwrap()
}

fn path(seen: &[(usize, String)]) -> Vec<&str> {
    seen.iter().map(|(_, p)| p.as_str()).collect()
}

/// A request the peer refused the first time gets its answer from the second.
#[tokio::test]
async fn a_refused_bodiless_request_is_sent_once_more_and_answered() {
    static REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let server =
        Server::start(
            |_, _| match REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                false => Act::Refuse,
                true => Act::Answer,
            },
        )
        .await;
    let shared = pool();
    let response = shared.send(get("/x"), server.dial()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Both on the one connection: a refusal leaves the connection open.
    assert_eq!(server.seen(), vec![(0, "/x".into()), (0, "/x".into())]);
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
    // Its HEADERS are written (the connection's driver runs meanwhile), then the peer goes
    // away without having read them.
    tokio::time::sleep(Duration::from_millis(100)).await;
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

/// The request sent once more has the first one's method, URI, version and every header field,
/// repeated ones in their order.
#[test]
fn a_replay_is_the_request_head_again() {
    let req = Request::delete("http://api.local:8080/items/7?force=1")
        .version(http::Version::HTTP_2)
        .header("x-trace", "a")
        .header("accept", "text/plain")
        .header("x-trace", "b")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://example.org/api;URI=spiffe://example.org/web",
        )
        .body(())
        .unwrap();
    let (head, ()) = req.into_parts();
    let again = replay_of(&head);
    assert_eq!(again.method(), head.method);
    assert_eq!(again.uri(), &head.uri);
    assert_eq!(again.version(), head.version);
    assert_eq!(again.headers(), &head.headers);
    let traces: Vec<_> = again.headers().get_all("x-trace").iter().collect();
    assert_eq!(traces, ["a", "b"]);
}
