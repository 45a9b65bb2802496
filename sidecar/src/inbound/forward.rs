//! The local app, over loopback, at the configured app address whatever the request's authority
//! (which the app gets as sent: `Host`, or `:authority` over h2c).
//! Bodies and trailers stream through.
//!
//! HTTP/1.1: each inbound connection holds its own keep-alive connection to the app
//! ([`H1Conn`], see [`crate::h1_client`]). HTTP/2 and gRPC: one h2c connection (prior knowledge)
//! multiplexes every caller's streams ([`SharedH2`]); or, with `app_protocol = "http1"`, each
//! HTTP/2 stream holds an HTTP/1.1 app connection from a second idle list for its exchange,
//! until its response body is done with ([`HeldBody`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AppProtocol;
use crate::h1_client::{self, H1Conn, H1Error, H1Idle, Upstream};
use crate::h2_body::H2Body;
use crate::h2_client::{H2Error, SharedH2};
use crate::metrics::{Direction, Metrics};
use crate::{hop_by_hop, upgrade};

/// How long connecting to the app may take (HTTP and TCP).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The window of each stream on the h2c app connection: the most of a response the sidecar
/// holds for a caller that does not read it (beside what the caller's own stream buffers). The
/// app is on loopback, where a quarter MiB in flight keeps a stream at full speed.
const APP_STREAM_WINDOW: u32 = 256 * 1024;
/// Least time between two warnings that streams found every HTTP/1.1 app connection busy.
const BUSY_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Most idle HTTP/1.1 app connections kept for the next inbound connections.
const MAX_IDLE_APP_CONNS: usize = 64;

/// A response body from the app: over HTTP/1.1, over HTTP/2, or over HTTP/1.1 to an HTTP/2
/// caller (`app_protocol = "http1"`).
pub(crate) type AppBody = Either<Incoming, Either<H2Body, HeldBody>>;

pin_project_lite::pin_project! {
    /// An HTTP/1.1 app response to an HTTP/2 caller, with the app connection it came on: the
    /// connection goes back to the idle list when the body is done with (dropped).
    pub(crate) struct HeldBody {
        #[pin]
        body: Incoming,
        conn: H1Conn<H2Body>,
        // Dropped after `conn`: a stream waiting for a slot then finds the connection idle.
        _slot: OwnedSemaphorePermit,
    }
}

/// Why the app did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppError {
    /// Nothing listens at the app address (502).
    Refused,
    /// Connecting failed otherwise, or the app reset the request (503).
    Unavailable,
}

/// The app: its address, the idle HTTP/1.1 connections and the shared HTTP/2 pool.
#[derive(Debug)]
pub(crate) struct App {
    addr: SocketAddr,
    authority: Authority,
    protocol: AppProtocol,
    idle: Arc<H1Idle>,
    /// HTTP/1.1 app connections for HTTP/2 callers' streams (`app_protocol = "http1"`, and
    /// HTTP/1.x an outbound sidecar carried over HTTP/2).
    idle_for_h2: Arc<H1Idle<H2Body>>,
    /// One per such stream's exchange, for as long as it holds its app connection: the most
    /// that are open at once besides the idle ones (each HTTP/2 caller connection may carry
    /// hundreds of streams, and each HTTP/1.1 exchange needs a connection of its own).
    h2_as_h1_slots: Arc<Semaphore>,
    /// Streams answered 503 because every slot stayed busy, and when that was last logged (a
    /// warning at most once a minute, naming the count, so a flood of them floods no log).
    h2_as_h1_busy: AtomicU64,
    h2_as_h1_busy_logged: Mutex<Option<Instant>>,
    h2: SharedH2,
}

// === impl App ===

impl App {
    /// At most `max_h2_as_h1` HTTP/2 callers' streams hold an HTTP/1.1 app connection at once.
    pub(crate) fn new(
        addr: SocketAddr,
        protocol: AppProtocol,
        idle_timeout: Duration,
        max_h2_as_h1: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Loopback: no keep-alive pings; plaintext, so nothing verified can lapse.
        let h2 = SharedH2::new(idle_timeout, None, Duration::ZERO)
            .with_stream_window(APP_STREAM_WINDOW)
            .counting_resends(move || metrics.request_resent(Direction::Inbound));
        let authority = Authority::try_from(addr.to_string())
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        Self {
            addr,
            authority,
            protocol,
            idle: H1Idle::new(idle_timeout, MAX_IDLE_APP_CONNS),
            idle_for_h2: H1Idle::new(idle_timeout, MAX_IDLE_APP_CONNS),
            h2_as_h1_slots: Arc::new(Semaphore::new(max_h2_as_h1)),
            h2_as_h1_busy: AtomicU64::new(0),
            h2_as_h1_busy_logged: Mutex::new(None),
            h2,
        }
    }

    /// A new inbound connection's (still empty) hold on an HTTP/1.1 app connection.
    pub(crate) fn conn(&self) -> H1Conn {
        self.idle.conn()
    }

    /// Sends `req` to the app: over h2c when the caller spoke HTTP/2, else HTTP/1.1 on the
    /// inbound connection's own app connection `conn`. `req` has had its connection-specific
    /// headers removed (`http::handle` does it before the decision).
    pub(crate) async fn send(
        &self,
        conn: &H1Conn,
        mut req: Request<Incoming>,
    ) -> Result<Response<AppBody>, AppError> {
        if req.version() == Version::HTTP_2 && self.protocol == AppProtocol::Auto {
            return self.send_h2(req).await;
        }
        host_from_authority(&mut req);
        // HTTP/1.1 to an origin server: origin-form (`/path?query`).
        *req.uri_mut() = Uri::from(path_of(&req));
        *req.version_mut() = Version::HTTP_11;
        // The request's connection-specific headers went before the decision (`http::handle`).
        let mut resp = self.send_h1(conn, req).await?;
        hop_by_hop::strip(resp.headers_mut(), false);
        Ok(resp.map(Either::Left))
    }

    /// Sends `req` to the app over the shared h2c connection (queued before the future is
    /// polled, see [`SharedH2::send`]).
    pub(crate) fn send_h2<B>(
        &self,
        mut req: Request<B>,
    ) -> impl Future<Output = Result<Response<AppBody>, AppError>> + '_
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // h2 needs `:scheme` and `:authority`: an absolute URI. The caller's authority (what
        // the policy saw as `host`) is kept, as an HTTP/1.1 caller's `Host` is: its
        // `:authority`, else its `Host` (which then becomes the `:authority`); the app's own
        // address only when it sent neither.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        let authority = match req.uri().authority() {
            Some(authority) => authority.clone(),
            None => match req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            {
                Some(host) => {
                    req.headers_mut().remove(http::header::HOST);
                    host
                }
                None => self.authority.clone(),
            },
        };
        parts.authority = Some(authority);
        parts.path_and_query = Some(path_of(&req));
        let sent = Uri::from_parts(parts).map(|uri| {
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_2;
            self.h2.send(req, || self.connect_tcp())
        });
        async move {
            let mut resp = match sent {
                Err(_) => return Err(AppError::Unavailable),
                Ok(sent) => match sent.await {
                    Ok(resp) => resp,
                    Err(H2Error::Connect(e)) => return Err(e),
                    Err(H2Error::Http(e)) => return Err(self.failed(&e)),
                },
            };
            hop_by_hop::strip(resp.headers_mut(), false);
            Ok(resp.map(|body| Either::Right(Either::Left(body))))
        }
    }

    /// How HTTP reaches the app.
    pub(crate) fn protocol(&self) -> AppProtocol {
        self.protocol
    }

    /// Sends an HTTP/2 caller's request to the app over HTTP/1.1 (`app_protocol = "http1"`), on
    /// an app connection held for this exchange until the response body is done with. Past the
    /// most such exchanges at once, it waits for one to end, for at most [`CONNECT_TIMEOUT`]
    /// (then 503).
    pub(crate) async fn send_h2_as_h1(
        &self,
        mut req: Request<H2Body>,
    ) -> Result<Response<AppBody>, AppError> {
        let slot = Arc::clone(&self.h2_as_h1_slots);
        let slot = match slot.try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let slot = Arc::clone(&self.h2_as_h1_slots).acquire_owned();
                match tokio::time::timeout(CONNECT_TIMEOUT, slot).await {
                    Ok(Ok(slot)) => slot,
                    // The semaphore is never closed.
                    Ok(Err(_)) | Err(_) => {
                        self.all_busy();
                        return Err(AppError::Unavailable);
                    }
                }
            }
        };
        host_from_authority(&mut req);
        *req.uri_mut() = Uri::from(path_of(&req));
        *req.version_mut() = Version::HTTP_11;
        let conn = self.idle_for_h2.conn();
        let mut resp = match conn.send(req, || self.connect_http1(false)).await {
            Ok(resp) => resp,
            Err(H1Error::Connect(e)) => return Err(e),
            Err(H1Error::Http(e)) => return Err(self.failed(&e)),
        };
        hop_by_hop::strip(resp.headers_mut(), false);
        Ok(resp.map(|body| {
            Either::Right(Either::Right(HeldBody {
                body,
                conn,
                _slot: slot,
            }))
        }))
    }

    /// Sends an upgrade request (see [`crate::upgrade`]) to the app on a connection of its own;
    /// with a 101, also the app's side of the upgraded connection.
    pub(crate) async fn send_upgrade(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<(Response<AppBody>, Option<OnUpgrade>), AppError> {
        *req.uri_mut() = Uri::from(path_of(&req));
        upgrade::strip_keeping_upgrade(req.headers_mut(), true);
        // Connecting is boxed, as on the common path.
        let mut sender = Box::pin(self.connect_http1(true)).await?.sender;
        sender.ready().await.map_err(|e| self.failed(&e))?;
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.failed(&e))?;
        let upgraded = match resp.status() {
            StatusCode::SWITCHING_PROTOCOLS => {
                upgrade::strip_keeping_upgrade(resp.headers_mut(), false);
                Some(hyper::upgrade::on(&mut resp))
            }
            _ => {
                hop_by_hop::strip(resp.headers_mut(), false);
                None
            }
        };
        Ok((resp.map(Either::Left), upgraded))
    }

    /// Counts a stream answered 503 for want of an HTTP/1.1 app connection, and logs the count
    /// at most once a minute.
    fn all_busy(&self) {
        let busy = self.h2_as_h1_busy.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut logged = self
            .h2_as_h1_busy_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.is_some_and(|at| now.duration_since(at) < BUSY_LOG_INTERVAL) {
            return;
        }
        *logged = Some(now);
        tracing::warn!(
            app = %self.addr,
            answered_503 = busy,
            "HTTP/2 streams to the HTTP/1.1 app found every app connection busy for 5 s \
             (at most limits.max_connections at once; count since start)"
        );
    }

    /// HTTP/1.1 on the inbound connection's own app connection `conn`.
    async fn send_h1(
        &self,
        conn: &H1Conn,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, AppError> {
        match conn.send(req, || self.connect_h1()).await {
            Ok(resp) => Ok(resp),
            Err(H1Error::Connect(e)) => Err(e),
            Err(H1Error::Http(e)) => Err(self.failed(&e)),
        }
    }

    async fn connect_tcp(&self) -> Result<TcpStream, AppError> {
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr));
        let stream = match connect.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(self.failed(&e)),
            Err(_) => {
                tracing::warn!(app = %self.addr, "connecting to the app timed out");
                return Err(AppError::Unavailable);
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_h1(&self) -> Result<Upstream<Incoming>, AppError> {
        self.connect_http1(false).await
    }

    /// A new HTTP/1.1 app connection; `upgrades`: it may switch protocols (only connections
    /// opened for an upgrade request may: an unsolicited 101 on a shared one is an error).
    async fn connect_http1<B>(&self, upgrades: bool) -> Result<Upstream<B>, AppError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.connect_tcp().await?;
        // Plaintext: nothing verified can lapse, so no grace is needed.
        h1_client::handshake(stream, upgrades, Duration::ZERO)
            .await
            .map_err(|e| self.failed(&e))
    }

    /// Logs why the app did not answer and classifies it.
    fn failed(&self, e: &(dyn std::error::Error + 'static)) -> AppError {
        tracing::warn!(app = %self.addr, error = %error_chain(e), "app request failed");
        if is_refused(e) {
            AppError::Refused
        } else {
            AppError::Unavailable
        }
    }
}

/// An HTTP/1.1 request needs a `Host`: from an HTTP/2 request's `:authority` when it has none.
fn host_from_authority<B>(req: &mut Request<B>) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    let host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        req.headers_mut().insert(header::HOST, host);
    }
}

// === impl HeldBody ===

impl Body for HeldBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request's path and query, `/` when it has none.
fn path_of<B>(req: &Request<B>) -> PathAndQuery {
    req.uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

fn is_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
