//! The sidecar's HTTP/2 server, on the `h2` crate directly: the inbound listener's for callers
//! that chose `h2` by ALPN, each outbound route's for local h2c clients.
//!
//! hyper's server spawned a task per stream (moving each request's future into it) and piped
//! each response body from that task; here the connection's own task drives every stream of the
//! connection (a `FuturesUnordered`, polled only when woken), so a stream costs no task, and a
//! response the upstream has answered is written by the same task that reads the next request.
//!
//! What hyper's server did and this one keeps: its flow-control windows and limits, a `date`
//! header on responses without one, `content-length` from a body of known size, a caller's reset
//! cancelling the exchange (dropping it resets the upstream's stream too), keep-alive pings with
//! a deadline when configured, GOAWAY and finishing the streams in flight on stop. The `h2`
//! crate validates the protocol itself (malformed frames and headers, content-length
//! mismatches, oversized header lists: 431).

mod premature;

use std::cell::RefCell;
use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use h2::server::SendResponse;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Duration, Instant};

use crate::h2_body::{self, H2Body, Pipe};
use crate::h2_client::KeepAlive;

/// Stream and connection flow-control windows offered to clients (hyper's server defaults).
const WINDOW: u32 = 1024 * 1024;
/// Most response body bytes buffered per stream beyond the client's window (hyper's default).
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams a client may make us reset for its errors before the connection is closed (hyper's
/// default).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Streams a connection's task accepts in a row (without the client's frames running out)
/// before it yields once to the runtime's other tasks. The requests it forwards are sent by
/// other tasks (the upstream connection's driver): while this task accepts a burst — one read
/// can hold a hundred HEADERS frames when one connection multiplexes every caller, as between
/// two sidecars — nothing reaches the upstream, which idles and then gets the whole burst at
/// once. Yielding within long bursts lets the upstream work on the first requests while the
/// rest are accepted (one connection with 128 streams in flight: ~60k -> ~90k req/s here, see
/// BENCHMARKS.md); a burst of at most this many goes through without a yield.
const ACCEPT_BURST: usize = 16;
/// The ping timer's deadline without keep-alive (it is never polled then).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// The server settings, shared by every connection of a listener.
#[derive(Debug, Clone)]
pub(crate) struct H2Server {
    builder: h2::server::Builder,
    keep_alive: Option<KeepAlive>,
    /// A connection with no stream open for this long is shut down gracefully (GOAWAY), however
    /// many frames (pings, settings, window updates) it still exchanges.
    idle_without_streams: Duration,
}

/// How a connection ends up being served.
pub(crate) struct Conn<I, Idle, Stop> {
    pub(crate) io: I,
    /// The client's address, for logs.
    pub(crate) peer: SocketAddr,
    /// Completes when the connection has been idle too long: it is closed at once.
    pub(crate) idle: Idle,
    /// Completes when the listener stops: GOAWAY, the streams in flight finish, then it closes.
    pub(crate) stop: Stop,
}

// === impl H2Server ===

impl H2Server {
    pub(crate) fn new(
        max_header_bytes: usize,
        max_concurrent_streams: u32,
        keep_alive: Option<KeepAlive>,
        idle_without_streams: Duration,
    ) -> Self {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(max_concurrent_streams);
        Self {
            builder,
            keep_alive,
            idle_without_streams,
        }
    }

    /// Serves one connection until it ends, is idle too long (`idle`: no bytes either way), fails
    /// a keep-alive ping, or has finished its streams after a stop or after
    /// `idle_without_streams` with none open; `handle` answers each request.
    ///
    /// Not an `async fn`: the handshake (which takes the transport) is put on the heap here, so
    /// the future, allocated per connection, holds neither the transport nor the handshake's
    /// state beside the connection it becomes (an `async fn` keeps room for its arguments and
    /// for the largest state of each phase for the whole of the connection).
    pub(crate) fn serve<I, Idle, Stop, H, F, B>(
        &self,
        conn: Conn<I, Idle, Stop>,
        handle: H,
    ) -> impl Future<Output = ()>
    where
        I: AsyncRead + AsyncWrite + Unpin,
        Idle: Future<Output = ()>,
        Stop: Future<Output = ()>,
        H: Fn(Request<H2Body>) -> F,
        F: Future<Output = Response<B>>,
        B: Body<Data = Bytes> + Unpin + Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let Conn {
            io,
            peer,
            idle,
            stop,
        } = conn;
        let handshake = Box::pin(self.builder.handshake::<_, Bytes>(io));
        self.serve_handshaking(handshake, peer, idle, stop, handle)
    }

    async fn serve_handshaking<I, Idle, Stop, H, F, B>(
        &self,
        handshake: Pin<Box<h2::server::Handshake<I, Bytes>>>,
        peer: SocketAddr,
        idle: Idle,
        stop: Stop,
        handle: H,
    ) where
        I: AsyncRead + AsyncWrite + Unpin,
        Idle: Future<Output = ()>,
        Stop: Future<Output = ()>,
        H: Fn(Request<H2Body>) -> F,
        F: Future<Output = Response<B>>,
        B: Body<Data = Bytes> + Unpin + Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let mut idle = pin!(idle);
        let mut stop = pin!(stop);
        let mut h2 = tokio::select! {
            result = handshake => match result {
                Ok(h2) => h2,
                Err(e) => {
                    tracing::debug!(src.addr = %peer, error = %e, "h2 handshake failed");
                    return;
                }
            },
            () = &mut idle => return,
        };
        // Keep-alive: the pinger and its one timer, re-armed (never re-created) as pings go out
        // and pongs come back.
        let mut pinger = self
            .keep_alive
            .and_then(|keep_alive| Some((h2.ping_pong()?, keep_alive)));
        let first = pinger
            .as_ref()
            .map_or(FAR_FUTURE, |(_, keep_alive)| keep_alive.interval);
        let mut ping_timer = pin!(tokio::time::sleep(first));
        let mut ping_outstanding = false;
        let mut streams = FuturesUnordered::new();
        // Armed whenever the last open stream ends (and at the start). When it fires the
        // connection is sent away (GOAWAY); if it fires again, the client has not let the
        // connection close (h2 closes once its shutdown PING is answered), and it is dropped.
        let mut no_streams = pin!(tokio::time::sleep(self.idle_without_streams));
        let mut had_streams = false;
        let mut sent_away = false;
        let mut draining = false;
        let mut resets = premature::PrematureResets::default();
        // When the caller was found resetting most of its streams, and the end of its drain.
        let mut abused_at: Option<Instant> = None;
        let mut abuse_deadline = pin!(tokio::time::sleep(FAR_FUTURE));
        // Streams accepted since accepting last found no frame waiting (an atomic only because
        // the accept future and the loop share it, and the future must be `Send`).
        let in_a_row = AtomicUsize::new(0);
        loop {
            if in_a_row.load(Ordering::Relaxed) > ACCEPT_BURST {
                in_a_row.store(0, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            let has_streams = !streams.is_empty();
            if had_streams && !has_streams {
                no_streams
                    .as_mut()
                    .reset(Instant::now() + self.idle_without_streams);
            }
            had_streams = has_streams;
            tokio::select! {
                // Streams first: every stream that can move queues its frames before the
                // connection is polled again, so they go out in one write.
                biased;
                Some(premature) = streams.next(), if !streams.is_empty() => {
                    if resets.ended(premature) && abused_at.is_none() {
                        let (premature, ended) = resets.counts();
                        tracing::warn!(
                            src.addr = %peer,
                            premature,
                            ended,
                            "caller reset most of its streams as soon as it opened them (rapid reset); sending it away"
                        );
                        // Gracefully: the streams in flight finish (on a connection from
                        // another sidecar they may be other callers'); streams opened after
                        // the GOAWAY has had time to arrive are refused, and the connection
                        // ends within `premature::DRAIN` whatever the caller does.
                        abused_at = Some(Instant::now());
                        abuse_deadline.as_mut().reset(Instant::now() + premature::DRAIN);
                        draining = true;
                        h2.graceful_shutdown();
                    }
                }
                () = &mut abuse_deadline, if abused_at.is_some() => {
                    tracing::debug!(src.addr = %peer, "rapid-reset caller's drain time is up; closing");
                    return;
                }
                accepted = poll_fn(|cx| {
                    let accepted = h2.poll_accept(cx);
                    if accepted.is_pending() {
                        in_a_row.store(0, Ordering::Relaxed);
                    }
                    accepted
                }) => match accepted {
                    Some(Ok((_, mut respond)))
                        if abused_at.is_some_and(|at| at.elapsed() >= premature::GRACE) =>
                    {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                    Some(Ok((req, respond))) => {
                        in_a_row.fetch_add(1, Ordering::Relaxed);
                        let (head, recv) = req.into_parts();
                        let body = H2Body::new(recv, &head.headers, None);
                        let response = handle(Request::from_parts(head, body));
                        streams.push(stream(peer, response, respond));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(src.addr = %peer, error = %e, "connection ended with an error");
                        return;
                    }
                    // Closed, or shut down gracefully with every stream done.
                    None => return,
                },
                () = &mut idle => {
                    tracing::debug!(src.addr = %peer, "idle timeout");
                    return;
                }
                () = &mut stop, if !draining => {
                    draining = true;
                    h2.graceful_shutdown();
                }
                () = &mut no_streams, if !has_streams && (!draining || sent_away) => {
                    if sent_away {
                        tracing::debug!(src.addr = %peer, "GOAWAY not acknowledged; closing");
                        return;
                    }
                    tracing::debug!(src.addr = %peer, "no stream open for the idle timeout; closing");
                    draining = true;
                    sent_away = true;
                    h2.graceful_shutdown();
                    no_streams
                        .as_mut()
                        .reset(Instant::now() + self.idle_without_streams);
                }
                () = &mut ping_timer, if pinger.is_some() => {
                    let Some((pings, keep_alive)) = pinger.as_mut() else {
                        continue;
                    };
                    if ping_outstanding {
                        tracing::debug!(src.addr = %peer, "keep-alive ping unanswered; closing");
                        return;
                    }
                    if pings.send_ping(h2::Ping::opaque()).is_err() {
                        // The connection is closing; `accept` reports its end.
                        pinger = None;
                        continue;
                    }
                    ping_outstanding = true;
                    ping_timer.as_mut().reset(Instant::now() + keep_alive.timeout);
                }
                pong = poll_fn(|cx| poll_pong(&mut pinger, cx)), if ping_outstanding => {
                    ping_outstanding = false;
                    match (pong, pinger.as_ref()) {
                        (Ok(()), Some((_, keep_alive))) => {
                            ping_timer.as_mut().reset(Instant::now() + keep_alive.interval);
                        }
                        _ => pinger = None,
                    }
                }
            }
        }
    }
}

/// The pong to the outstanding ping.
fn poll_pong(
    pinger: &mut Option<(h2::PingPong, KeepAlive)>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<(), h2::Error>> {
    match pinger {
        Some((pings, _)) => pings.poll_pong(cx).map_ok(|_| ()),
        None => std::task::Poll::Pending,
    }
}

pin_project_lite::pin_project! {
    /// One stream: the response `handle` made for it, streamed back, unless the client resets
    /// the stream first (then the exchange is dropped).
    ///
    /// Written out rather than as an `async fn`: one taking the response future as an argument
    /// holds it twice (once as the argument, once where it is polled), and this future is
    /// moved into the connection's set and allocated for every request.
    #[project = StreamProj]
    enum Stream<F, B> {
        Answering {
            #[pin]
            response: F,
            respond: Option<SendResponse<Bytes>>,
            peer: SocketAddr,
            opened: Instant,
        },
        Piping { pipe: Pipe<B> },
        Done { premature: bool },
    }
}

/// The stream of a request whose response `response` will make.
fn stream<F, B>(peer: SocketAddr, response: F, respond: SendResponse<Bytes>) -> Stream<F, B> {
    Stream::Answering {
        response,
        respond: Some(respond),
        peer,
        opened: Instant::now(),
    }
}

impl<F, B> Future for Stream<F, B>
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Whether the client reset the stream prematurely ([`premature::PREMATURE`]).
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        const DONE: bool = false;
        loop {
            match self.as_mut().project() {
                StreamProj::Answering {
                    response,
                    respond,
                    peer,
                    opened,
                } => {
                    let Some(tx) = respond.as_mut() else {
                        self.set(Stream::Done { premature: DONE });
                        continue;
                    };
                    let response = match response.poll(cx) {
                        Poll::Ready(response) => response,
                        Poll::Pending => {
                            if let Poll::Ready(reason) = tx.poll_reset(cx) {
                                tracing::debug!(src.addr = %peer, ?reason, "client reset the stream");
                                // A reset the client sent (not the connection ending under it).
                                let premature =
                                    reason.is_ok() && opened.elapsed() < premature::PREMATURE;
                                self.set(Stream::Done { premature });
                                continue;
                            }
                            return Poll::Pending;
                        }
                    };
                    let peer = *peer;
                    let Some(tx) = respond.take() else {
                        self.set(Stream::Done { premature: DONE });
                        continue;
                    };
                    match respond_with(peer, tx, response) {
                        Some(pipe) => self.set(Stream::Piping { pipe }),
                        None => self.set(Stream::Done { premature: DONE }),
                    }
                }
                StreamProj::Piping { pipe } => {
                    ready!(Pin::new(pipe).poll(cx));
                    self.set(Stream::Done { premature: DONE });
                }
                StreamProj::Done { premature } => return Poll::Ready(*premature),
            }
        }
    }
}

/// Sends `response`'s head on `respond`; what streams its body, when it has one.
fn respond_with<B>(
    peer: SocketAddr,
    mut respond: SendResponse<Bytes>,
    response: Response<B>,
) -> Option<Pipe<B>>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (mut head, body) = response.into_parts();
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, date());
    }
    if let Some(length) = body.size_hint().exact()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers.insert(header::CONTENT_LENGTH, length.into());
    }
    let end_of_stream = body.is_end_stream();
    let tx = match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(src.addr = %peer, error = %e, "sending the response failed");
            return None;
        }
    };
    (!end_of_stream).then(|| h2_body::pipe(body, tx))
}

/// The current time as an HTTP `date` value, formatted once per second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if let Ok(value) = HeaderValue::try_from(text) {
                *cached = (second, value);
            }
        }
        cached.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A burst of streams on one connection does not keep the task it wakes for each (the
    /// upstream connection's driver, in the sidecar) from running until the whole burst is
    /// accepted.
    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_streams_lets_the_tasks_it_wakes_run_every_few_streams() {
        const STREAMS: usize = 4 * (ACCEPT_BURST + 1);
        // The upstream stand-in: counts its turns; each accepted stream wakes it.
        let turns = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(tokio::sync::Notify::new());
        let upstream = tokio::spawn({
            let (turns, wake) = (Arc::clone(&turns), Arc::clone(&wake));
            async move {
                loop {
                    wake.notified().await;
                    turns.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // The upstream's turn count as each stream is accepted.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn({
            let (turns, seen, wake) = (Arc::clone(&turns), Arc::clone(&seen), Arc::clone(&wake));
            async move {
                let conn = Conn {
                    io: server_io,
                    peer: SocketAddr::from(([127, 0, 0, 1], 1)),
                    idle: std::future::pending(),
                    stop: std::future::pending(),
                };
                H2Server::new(16 * 1024, 1000, None, Duration::from_secs(60))
                    .serve(conn, |_req| {
                        seen.lock().unwrap().push(turns.load(Ordering::Relaxed));
                        wake.notify_one();
                        std::future::ready(Response::new(http_body_util::Empty::<Bytes>::new()))
                    })
                    .await;
            }
        });
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        let driver = tokio::spawn(connection);

        // Every request is queued before the client's driver writes any: the server reads them
        // all at once.
        let mut responses = Vec::new();
        for _ in 0..STREAMS {
            client = client.ready().await.unwrap();
            let req = Request::get("http://svc/").body(()).unwrap();
            responses.push(client.send_request(req, true).unwrap().0);
        }
        for response in responses {
            assert_eq!(response.await.unwrap().status(), 200);
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(seen.len(), STREAMS);
        let longest_run = seen
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap_or(0);
        assert!(
            longest_run <= ACCEPT_BURST + 1,
            "{longest_run} streams accepted without the upstream running: {seen:?}"
        );
        upstream.abort();
        server.abort();
        driver.abort();
    }

    #[test]
    fn date_is_an_imf_fixdate_of_now() {
        let value = date();
        let parsed = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
        let skew = SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default()
            .as_secs();
        assert!(skew <= 1, "{value:?}");
        assert!(value.to_str().unwrap().ends_with(" GMT"), "{value:?}");
    }
}
