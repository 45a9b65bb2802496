//! The HTTP side of an outbound route: each local request is forwarded over mutual TLS with
//! only hop-by-hop headers (and any local `x-forwarded-client-cert`) removed; bodies and
//! trailers stream through. HTTP/1.x goes over the local connection's own keep-alive upstream
//! connection ([`crate::h1_client`]), HTTP/2 over one shared connection ([`SharedH2`]). When the
//! upstream cannot be reached the sidecar answers itself: 502 (504 on a timeout) with a
//! one-line body, or for gRPC a trailers-only `UNAVAILABLE` status (`DEADLINE_EXCEEDED` when
//! the route's `response_timeout` ran out).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;

use super::HandshakeFailure;
use super::connect::{self, ConnectError, MtlsConnector};
use super::{OutboundHooks, OutboundLimits};
use crate::h1_client::{self, H1Conn, H1Error, H1Idle, Upstream};
use crate::h2_body::H2Body;
use crate::h2_client::{H2Error, KeepAlive, SharedH2};
use crate::hop_by_hop;
use crate::upgrade::{self, Tunnel};

use super::reply::{GRPC_DEADLINE_EXCEEDED, GRPC_STATUS, is_grpc, local_reply};

/// The body of a response to the local client: the upstream's, streamed, or the sidecar's own.
pub(crate) type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// The body of an upstream's response: over HTTP/1.1 or over HTTP/2.
pub(crate) type UpstreamBody = Either<Incoming, H2Body>;

/// Most idle HTTP/1.1 upstream connections kept for the next local connections.
const MAX_IDLE_UPSTREAM_CONNS: usize = 64;

/// Forwards local requests to the route's upstream, keeping their protocol: HTTP/1.x over
/// `http/1.1` connections (one request at a time on each, each held by one local connection),
/// HTTP/2 over a single `h2` connection that multiplexes every stream; with
/// `http1_upstream = "h2"`, HTTP/1.x over that `h2` connection too, marked (`orig_proto`).
#[derive(Debug)]
pub(crate) struct HttpProxy {
    http1: MtlsConnector,
    /// HTTP/1.1 upstream connections no local connection holds.
    http1_idle: Arc<H1Idle>,
    h2: SharedH2,
    h2_connector: MtlsConnector,
    /// `:authority` for requests that name none (HTTP/1.0 without `Host`).
    upstream_authority: Option<Authority>,
    /// `limits.max_headers`: hyper enforces it for HTTP/1.1, this proxy for HTTP/2.
    max_headers: usize,
    /// `limits.max_header_bytes`: bounded roughly by hyper's HTTP/1 buffer and the HTTP/2
    /// header list size, exactly by this proxy.
    max_header_bytes: usize,
    /// How long an upgraded connection may carry no bytes.
    idle_timeout: Duration,
    /// The route's `response_timeout`: how long the upstream may take to begin its response.
    response_timeout: Option<Duration>,
    /// `http1_upstream = "h2"`: local HTTP/1.x requests go over `h2`, marked (`orig_proto`).
    http1_over_h2: bool,
    upstream: String,
    hooks: Arc<dyn OutboundHooks>,
}

/// Reports a request whose handling was dropped before a response (the local client went
/// away) to the hooks, with status `None`.
struct Pending<'a> {
    hooks: &'a dyn OutboundHooks,
    started: Instant,
    answered: bool,
}

// === impl HttpProxy ===

impl HttpProxy {
    /// `http1` must offer ALPN `http/1.1` and `h2` ALPN `h2`.
    pub(crate) fn new(
        http1: MtlsConnector,
        h2: MtlsConnector,
        hooks: Arc<dyn OutboundHooks>,
        limits: &OutboundLimits,
        response_timeout: Option<Duration>,
    ) -> Self {
        let upstream = http1.upstream().to_owned();
        // Half the idle timeout: a peer sidecar with the same idle timeout must not close an
        // upstream connection just as a request is written to it.
        let http1_idle = H1Idle::new(limits.idle_timeout / 2, MAX_IDLE_UPSTREAM_CONNS);
        // Pings only while exchanges are in flight (an idle connection is replaced after half
        // the idle timeout instead, see `SharedH2`).
        let keep_alive = KeepAlive {
            interval: limits.idle_timeout / 2,
            timeout: limits.handshake_timeout,
        };
        Self {
            http1,
            http1_idle,
            h2: {
                let hooks = Arc::clone(&hooks);
                SharedH2::new(
                    limits.idle_timeout / 2,
                    Some(keep_alive),
                    limits.idle_timeout,
                )
                .counting_resends(move || hooks.request_resent())
            },
            h2_connector: h2,
            upstream_authority: upstream.parse().ok(),
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes,
            idle_timeout: limits.idle_timeout,
            response_timeout,
            http1_over_h2: false,
            upstream,
            hooks,
        }
    }

    /// Sends local HTTP/1.x requests (but upgrades) over the shared HTTP/2 connection, marked
    /// (`http1_upstream = "h2"`, see [`crate::orig_proto`]).
    pub(crate) fn with_http1_over_h2(mut self, on: bool) -> Self {
        self.http1_over_h2 = on;
        self
    }

    /// A new local connection's (still empty) hold on an HTTP/1.1 upstream connection.
    pub(crate) fn http1_conn(&self) -> H1Conn {
        self.http1_idle.conn()
    }

    /// Serves one local request from hyper's server (HTTP/1.x; HTTP/2 goes through
    /// [`Self::handle_h2`]) on the local connection's `upstream`; never fails (errors become
    /// responses). An upgrade request (see [`crate::upgrade`]) goes over a connection of its
    /// own; with a 101, the two connections are left in `tunnel` for the local connection's
    /// task.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        tunnel: Tunnel,
        upstream: Arc<H1Conn>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        if !upgrade::is_upgrade(&req) {
            return Ok(self
                .serve(req, |proxy, req| proxy.send(req, upstream))
                .await);
        }
        let caller = hyper::upgrade::on(&mut req);
        Ok(self
            .serve(req, |proxy, req| proxy.send_upgrade(req, caller, tunnel))
            .await)
    }

    /// Serves one local request from the HTTP/2 server.
    pub(crate) fn handle_h2(
        &self,
        req: Request<H2Body>,
    ) -> impl Future<Output = Response<ResponseBody>> + '_ {
        self.serve(req, |proxy, req| proxy.send_h2(req))
    }

    /// Forwards `req` with `send`, reports it to the hooks and the access log.
    ///
    /// Everything up to handing the request to `send` happens before the returned future is
    /// first polled, so that the future holds only what the response needs (the HTTP/2 server
    /// moves and allocates each stream's future: its size is paid per request).
    fn serve<'a, B, S, F>(
        &'a self,
        mut req: Request<B>,
        send: S,
    ) -> impl Future<Output = Response<ResponseBody>> + 'a
    where
        S: FnOnce(&'a Self, Request<B>) -> F,
        F: Future<Output = Result<Response<UpstreamBody>, (StatusCode, String)>> + 'a,
    {
        let mut pending = Pending {
            hooks: &*self.hooks,
            started: Instant::now(),
            answered: false,
        };
        // Captured only when someone listens: the path costs an allocation.
        let access = tracing::enabled!(target: "access", tracing::Level::DEBUG)
            .then(|| Box::new((req.method().clone(), req.uri().path().to_owned())));
        let grpc = is_grpc(req.headers());
        let upgrading = upgrade::is_upgrade(&req);
        let sent = self
            .prepare(&mut req, grpc, upgrading)
            .map(|()| send(self, req));
        let response_timeout = self.response_timeout;
        async move {
            let (response, status) = match sent {
                Ok(sent) => match response_timeout {
                    None => self.answer(sent.await, grpc),
                    // Boxed: the timer is paid for only by routes that have one.
                    Some(limit) => match Box::pin(tokio::time::timeout(limit, sent)).await {
                        Ok(sent) => self.answer(sent, grpc),
                        Err(_) => self.no_response_within(limit, grpc),
                    },
                },
                Err(reply) => *reply,
            };
            let latency = pending.answer();
            self.hooks.request_done(Some(status.as_u16()), latency);
            if let Some(access) = access {
                let (method, path) = &*access;
                tracing::debug!(
                    target: "access",
                    method = %method,
                    path = %path,
                    status = status.as_u16(),
                    latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
                    "outbound request"
                );
            }
            response
        }
    }

    /// Readies `req` for the upstream, or the sidecar's own reply (and the status to report)
    /// when it cannot go.
    fn prepare<B>(
        &self,
        req: &mut Request<B>,
        grpc: bool,
        upgrading: bool,
    ) -> Result<(), Box<(Response<ResponseBody>, StatusCode)>> {
        let reply = |status, message| Err(Box::new(local_reply(status, grpc, message)));
        if req.method() == Method::CONNECT {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "outbound listeners do not support connect".to_owned(),
            );
        }
        if req.headers().len() > self.max_headers {
            return reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {} request headers", self.max_headers),
            );
        }
        // HTTP/2's header list is bounded by the HTTP/2 server already.
        if req.version() < http::Version::HTTP_2
            && crate::header_bytes(req.headers()) > self.max_header_bytes
        {
            return reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request headers over {} bytes", self.max_header_bytes),
            );
        }
        let uri = match self.upstream_uri(req) {
            Ok(uri) => uri,
            Err(message) => return reply(StatusCode::BAD_REQUEST, message),
        };
        *req.uri_mut() = uri;
        match upgrading {
            true => upgrade::strip_keeping_upgrade(req.headers_mut(), true),
            false => hop_by_hop::strip(req.headers_mut(), true),
        }
        // Only an inbound sidecar speaks for a caller's certificate: none goes upstream from
        // here, in any spelling, in the head or announced as a trailer.
        hop_by_hop::remove_xfcc(req.headers_mut());
        hop_by_hop::unannounce_xfcc_trailer(req.headers_mut());
        // Only this sidecar marks a request as HTTP/1.x carried over HTTP/2.
        req.headers_mut().remove(crate::orig_proto::NAME);
        Ok(())
    }

    /// The response to the local client, and the status to report (the sidecar's own status for
    /// a local reply, also when gRPC carries it as `grpc-status`).
    fn answer(
        &self,
        sent: Result<Response<UpstreamBody>, (StatusCode, String)>,
        grpc: bool,
    ) -> (Response<ResponseBody>, StatusCode) {
        match sent {
            Ok(response) => {
                let mut response = response.map(Either::Left);
                // A 101 reaches here only for an upgrade request ([`Self::send_upgrade`]).
                match response.status() {
                    StatusCode::SWITCHING_PROTOCOLS => {
                        upgrade::strip_keeping_upgrade(response.headers_mut(), false);
                    }
                    _ => hop_by_hop::strip(response.headers_mut(), false),
                }
                let status = response.status();
                (response, status)
            }
            Err((status, message)) => {
                tracing::warn!(upstream = %self.upstream, error = %message, "outbound request failed");
                local_reply(status, grpc, message)
            }
        }
    }

    /// The local reply when the upstream has not begun its response within `limit`: 504, or for
    /// gRPC `DEADLINE_EXCEEDED` (where a failure to reach the upstream is `UNAVAILABLE`).
    fn no_response_within(
        &self,
        limit: Duration,
        grpc: bool,
    ) -> (Response<ResponseBody>, StatusCode) {
        let message = format!(
            "upstream `{}` did not begin its response within {} (the route's response_timeout)",
            self.upstream,
            humantime::format_duration(limit)
        );
        tracing::warn!(upstream = %self.upstream, error = %message, "outbound request failed");
        let (mut response, status) = local_reply(StatusCode::GATEWAY_TIMEOUT, grpc, message);
        if grpc {
            response
                .headers_mut()
                .insert(GRPC_STATUS, GRPC_DEADLINE_EXCEEDED);
        }
        (response, status)
    }

    /// Sends a request from hyper's server: HTTP/2 over the shared h2 connection, anything else
    /// over the local connection's `upstream` connection.
    async fn send(
        &self,
        mut req: Request<Incoming>,
        upstream: Arc<H1Conn>,
    ) -> Result<Response<UpstreamBody>, (StatusCode, String)> {
        if req.version() == Version::HTTP_2 {
            return self.send_h2(req).await;
        }
        if self.http1_over_h2 {
            crate::orig_proto::mark(&mut req);
            let mut response = self.send_h2(req).await?;
            // As an HTTP/1.1 upstream's would be: hyper's server then keeps an HTTP/1.0
            // client's connection alive (`Connection: keep-alive`) as before.
            *response.version_mut() = Version::HTTP_11;
            return Ok(response);
        }
        to_http11_origin_form(&mut req);
        let response = match upstream.send(req, || self.connect_http1(false)).await {
            Ok(response) => response,
            Err(H1Error::Connect(e)) => return Err(self.failure(&*e)),
            Err(H1Error::Http(e)) => return Err(self.failure(&e)),
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err((
                StatusCode::BAD_GATEWAY,
                format!(
                    "upstream `{}` switched protocols for a request that asked for no upgrade",
                    self.upstream
                ),
            ));
        }
        Ok(response.map(Either::Left))
    }

    /// Sends an upgrade request over an upstream connection of its own. With a 101, `caller`
    /// and the upstream's side become the tunnel left in `tunnel`; a 101 to any other request is
    /// refused (502) in [`Self::send`].
    async fn send_upgrade(
        &self,
        mut req: Request<Incoming>,
        caller: OnUpgrade,
        tunnel: Tunnel,
    ) -> Result<Response<UpstreamBody>, (StatusCode, String)> {
        to_http11_origin_form(&mut req);
        // Connecting is boxed, as on the common path.
        let upstream = Box::pin(self.connect_http1(true))
            .await
            .map_err(|e| self.failure(&*e))?;
        let validity = upstream.validity();
        let mut sender = upstream.sender;
        sender.ready().await.map_err(|e| self.failure(&e))?;
        let mut response = sender
            .send_request(req)
            .await
            .map_err(|e| self.failure(&e))?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut response);
            // The inbound sidecar decides what it lets through; the tunnel ends only when the
            // upstream's credentials lapse.
            let lapsed = crate::lapse::no_longer_holds(validity);
            tunnel.open(caller, upstream, self.idle_timeout, lapsed);
        }
        Ok(response.map(Either::Left))
    }

    /// Sends a request over the shared h2 upstream connection (queued before the future is
    /// polled, see [`SharedH2::send`]).
    fn send_h2<B>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, (StatusCode, String)>> + '_
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        // The dialer's error is shared with the requests that waited for the same attempt.
        let dial = || async { self.h2_connector.connect().await.map_err(Arc::new) };
        let sent = self.h2.send(req, dial);
        async move {
            match sent.await {
                Ok(response) => Ok(response.map(Either::Right)),
                Err(H2Error::Connect(e)) => Err(self.failure(&*e)),
                Err(H2Error::Http(e)) => Err(self.failure(&e)),
            }
        }
    }

    /// A new HTTP/1.1 upstream connection (mutual TLS, ALPN `http/1.1`); `upgrades`: it may
    /// switch protocols (only connections opened for an upgrade request may: an unsolicited 101
    /// on a shared one is an error).
    async fn connect_http1(
        &self,
        upgrades: bool,
    ) -> Result<Upstream<Incoming>, Box<dyn StdError + Send + Sync>> {
        let stream = self.http1.connect().await?;
        Ok(h1_client::handshake(stream, upgrades, self.idle_timeout).await?)
    }

    /// The request's target with scheme `https`; the authority is the request's own (from its
    /// target or `Host`), so the upstream sees what the local client asked for.
    fn upstream_uri<B>(&self, req: &Request<B>) -> Result<Uri, String> {
        let authority = match req.uri().authority() {
            Some(authority) => Some(authority.clone()),
            None => match req.headers().get(header::HOST) {
                Some(host) => Some(Authority::try_from(host.as_bytes()).map_err(|_| {
                    format!(
                        "host header `{}` is not a valid authority",
                        String::from_utf8_lossy(host.as_bytes())
                    )
                })?),
                None => self.upstream_authority.clone(),
            },
        };
        let authority = authority.ok_or_else(|| "the request names no host".to_owned())?;
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|err| format!("invalid request target: {err}"))
    }

    /// The status and message for a request the upstream did not answer.
    fn failure(&self, err: &(dyn StdError + 'static)) -> (StatusCode, String) {
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(current) = source {
            if let Some(connect) = current.downcast_ref::<ConnectError>() {
                let status = match connect.is_timeout() {
                    true => StatusCode::GATEWAY_TIMEOUT,
                    false => StatusCode::BAD_GATEWAY,
                };
                return (status, connect.to_string());
            }
            source = current.source();
        }
        if let Some(alert) = connect::refused_certificate_alert(err) {
            self.hooks
                .handshake_failed(HandshakeFailure::PeerRejected.as_str());
            return (
                StatusCode::BAD_GATEWAY,
                format!(
                    "tls handshake with upstream `{}` failed: the upstream refused this \
                     sidecar's svid ({alert:?})",
                    self.upstream
                ),
            );
        }
        let mut message = format!("upstream `{}` failed before responding", self.upstream);
        let mut source = Some(err);
        while let Some(current) = source {
            message.push_str(": ");
            message.push_str(&current.to_string());
            source = current.source();
        }
        (StatusCode::BAD_GATEWAY, message)
    }
}

// === impl Pending ===

impl Pending<'_> {
    /// Marks the request answered; the time since it started.
    fn answer(&mut self) -> Duration {
        self.answered = true;
        self.started.elapsed()
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.hooks.request_done(None, self.started.elapsed());
        }
    }
}

/// Readies a request for an HTTP/1.1 upstream connection: HTTP/1.1 whatever the local client
/// spoke, as intermediaries do (RFC 9110 §2.5), so that HTTP/1.0 requests reuse connections
/// too; the target in origin form (`/path?query`) with the authority in `Host`.
fn to_http11_origin_form<B>(req: &mut Request<B>) {
    *req.version_mut() = Version::HTTP_11;
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
}
