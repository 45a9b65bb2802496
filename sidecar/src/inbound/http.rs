//! The inbound HTTP proxy: HTTP/1.1 (and HTTP/2 without ALPN) through hyper-util's auto server
//! on an established connection; [`handle`] also serves the streams of [`super::h2`]. Every request is decided by the policy engine; a denied one is answered here
//! (403, or gRPC PERMISSION_DENIED) and nothing of it reaches the app; an allowed one goes to
//! the app with the caller's identity in `x-forwarded-client-cert` (any such header the caller
//! sent is removed first).

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::forward::{AppBody, AppError};
use super::record::{self, RequestParts, XFCC};
use super::revoke;
use super::{ConnInfo, Shared};
use super::{host, path};
use crate::config::{Limits, Mode};
use crate::hop_by_hop;
use crate::metrics::{DecisionLabel, Direction};
use crate::upgrade::{self, Tunnel};

/// Response bodies: the app's, streamed, or one the sidecar made.
pub(crate) type ProxyBody = Either<AppBody, Full<Bytes>>;

/// gRPC status PERMISSION_DENIED.
const GRPC_PERMISSION_DENIED: &str = "7";
/// gRPC status UNAVAILABLE.
const GRPC_UNAVAILABLE: &str = "14";
/// gRPC status RESOURCE_EXHAUSTED.
const GRPC_RESOURCE_EXHAUSTED: &str = "8";
/// Most concurrent HTTP/2 streams per connection.
pub(super) const MAX_CONCURRENT_STREAMS: u32 = 256;

/// The configured hyper server, shared by every connection: HTTP/1.x only. HTTP/2 goes to the
/// sidecar's own server (`h2_server.rs`): over TLS when ALPN chose `h2`, in plaintext when the
/// connection opens with the h2c preface. A TLS caller that chose HTTP/1.1 and then speaks
/// HTTP/2 anyway is not served (RFC 9113 §3.2): hyper closes the connection at the preface.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    builder: http1::Builder,
}

// === impl Server ===

impl Server {
    pub(crate) fn new(limits: &Limits) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // A client has the handshake timeout to send each request's headers: a slow
            // client cannot hold a connection slot forever.
            .header_read_timeout(limits.handshake_timeout)
            .max_buf_size(limits.max_header_bytes.max(crate::config::MIN_HEADER_BYTES))
            .max_headers(limits.max_headers);
        Self { builder }
    }
}

/// Serves one connection until it ends or `idle` completes. When the sidecar stops, or
/// `lapsed` completes (the caller's credentials lapsed), the connection is shut down
/// gracefully: the request in flight finishes, then it closes; an upgraded connection is closed.
pub(super) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    idle: impl Future<Output = ()>,
    lapsed: impl Future<Output = ()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(info);
    let xfcc = record::xfcc(&conn);
    let svc_shared = Arc::clone(&shared);
    let svc_conn = Arc::clone(&conn);
    // This connection's own HTTP/1.1 connection to the app (unused for HTTP/2).
    let app_conn = Arc::new(shared.app.conn());
    let tunnel = Tunnel::default();
    let svc_tunnel = tunnel.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let shared = Arc::clone(&svc_shared);
        let conn = Arc::clone(&svc_conn);
        let app_conn = Arc::clone(&app_conn);
        let xfcc = xfcc.clone();
        let tunnel = svc_tunnel.clone();
        // Taken before the request moves on: hyper hands the connection over through it.
        let caller = upgrade::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        async move {
            let response = match caller {
                None => {
                    let send = |req| shared.app.send(&app_conn, req);
                    handle(&shared, &conn, xfcc, req, send).await
                }
                Some(caller) => {
                    // What the tunnel is decided again on when the policy set changes; the
                    // version is taken before the decision, so a change racing it is not missed.
                    let version = shared.engine.current().version().to_owned();
                    let idle_timeout = shared.limits.idle_timeout;
                    let (tunnel_shared, tunnel_conn) = (Arc::clone(&shared), Arc::clone(&conn));
                    let send = |req: Request<Incoming>| {
                        // The request as it was decided (path normalized, headers stripped).
                        let decided = revoke::Upgrade::of(&req);
                        async {
                            let (response, upgraded) = shared.app.send_upgrade(req).await?;
                            if let Some(app) = upgraded {
                                let revoked = async move {
                                    revoke::revoked(
                                        &tunnel_shared,
                                        &tunnel_conn,
                                        version,
                                        &decided,
                                    )
                                    .await;
                                };
                                tunnel.open(caller, app, idle_timeout, revoked);
                            }
                            Ok(response)
                        }
                    };
                    handle(&shared, &conn, xfcc, req, send).await
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let served = shared
        .http
        .builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(served);
    tokio::pin!(idle);
    tokio::pin!(lapsed);
    let mut lapsed_done = false;
    let mut stop = shared.stop.subscribe();
    let mut draining = false;
    loop {
        tokio::select! {
            result = &mut served => {
                if let Err(e) = result {
                    tracing::debug!(src.addr = %conn.source, error = %e, "connection ended with an error");
                }
                break;
            }
            () = &mut idle => {
                tracing::debug!(src.addr = %conn.source, "idle timeout");
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            () = &mut lapsed, if !lapsed_done => {
                lapsed_done = true;
                if !draining {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
    if lapsed_done {
        // An upgrade accepted just before: its caller's credentials have lapsed.
        return;
    }
    // An upgraded connection: the tunnel runs here, so that it holds the connection's slot and
    // closes when the sidecar stops.
    if let Some(tunnel) = tunnel.take() {
        tokio::select! {
            () = tunnel => {}
            _ = stop.wait_for(|stop| *stop) => {
                tracing::debug!(src.addr = %conn.source, "sidecar stopping; upgraded connection closed");
            }
            () = &mut lapsed => {
                tracing::debug!(src.addr = %conn.source, "caller's credentials lapsed; upgraded connection closed");
            }
        }
    }
}

/// Decides `req` and answers it: denied here, or allowed and passed to `send` (the app) with
/// the caller's identity in XFCC.
///
/// The decision, and handing the request to `send`, happen before the returned future is first
/// polled: the future holds only what finishing the exchange needs (the HTTP/2 server moves and
/// allocates each stream's future, so its size is paid per request).
pub(super) fn handle<'a, B, S, F>(
    shared: &'a Shared,
    conn: &'a ConnInfo,
    xfcc: Option<HeaderValue>,
    mut req: Request<B>,
    send: S,
) -> impl Future<Output = Response<ProxyBody>> + 'a
where
    S: FnOnce(Request<B>) -> F,
    F: Future<Output = Result<Response<AppBody>, AppError>> + 'a,
{
    let start = Instant::now();
    let time = SystemTime::now();
    let grpc = match prepare(shared, &mut req) {
        Ok(grpc) => grpc,
        Err(response) => {
            drop(req);
            // Answered before any decision: counted with decision `none`, no decision line.
            let status = response.status().as_u16();
            let metrics = &shared.metrics;
            metrics.request(
                Direction::Inbound,
                DecisionLabel::None,
                Some(status),
                start.elapsed(),
            );
            return Exchange::Answered {
                response: Some(*response),
            };
        }
    };
    let (decision, allowed, decision_id, line) = {
        let headers = record::header_pairs(&req);
        let parts = RequestParts::http(
            req.method().as_str(),
            grpc,
            req.uri().path(),
            req.uri().query().unwrap_or(""),
            &headers,
            time,
        );
        let policy_request = record::policy_request(conn, &shared.config.service, &parts);
        let decision = shared.engine.decide(&policy_request);
        shared.metrics.authorization(decision.eval_time());
        let allowed = decision.is_allowed() || shared.mode == Mode::DryRun;
        let id = shared.ids.next();
        // The line is completed once the upstream status is known.
        let line = record::start_line(&id, conn, &shared.config.service, &parts, &decision);
        (decision, allowed, id, line)
    };
    let label = DecisionLabel::of(&decision);
    super::trace_decision(shared, conn, &decision_id, &decision, "request");
    drop(decision);
    let outcome = if allowed {
        if let Some(v) = xfcc {
            req.headers_mut().insert(XFCC, v);
        }
        Ok(send(req))
    } else {
        drop(req);
        Err(Box::new(denied(&decision_id, grpc)))
    };
    let done = Done {
        shared,
        start,
        allowed,
        label,
        line,
        recorded: false,
    };
    Exchange::Pending {
        future: async move {
            let response = match outcome {
                Ok(sent) => match sent.await {
                    Ok(resp) => resp.map(Either::Left),
                    Err(e) => app_error(e, grpc),
                },
                Err(denial) => *denial,
            };
            done.finish(response)
        },
    }
}

/// Checks `req` and puts it in the form that is decided and forwarded: gRPC or not, header count,
/// one host in one spelling, the normalized path, the caller's XFCC and connection-specific headers removed,
/// header values that are text. `Err` is the answer (400, 431) to a request that is not decided.
fn prepare<B>(shared: &Shared, req: &mut Request<B>) -> Result<bool, Box<Response<ProxyBody>>> {
    let grpc = grpc_call(req).map_err(|bad| Box::new(bad_request(bad)))?;
    // hyper enforces the header count for HTTP/1.1 (431 before we see the request); HTTP/2
    // only bounds the header list's size, so the count is checked here, for both.
    if req.headers().len() > shared.limits.max_headers {
        return Err(Box::new(headers_too_large(
            grpc,
            "too many request headers",
        )));
    }
    // HTTP/2's header list is bounded by the HTTP/2 server (counting 32 bytes a field, more
    // than this does): only HTTP/1 needs the count.
    if req.version() < http::Version::HTTP_2
        && crate::header_bytes(req.headers()) > shared.limits.max_header_bytes
    {
        return Err(Box::new(headers_too_large(
            grpc,
            "request headers too large",
        )));
    }
    one_host(req).map_err(|bad| Box::new(bad_request(bad)))?;
    // Policies decide on, and the app gets, one spelling of the host (see `host.rs`).
    host::normalize(req).map_err(|bad| Box::new(bad_request(bad)))?;
    // Policies decide on, and the app gets, one spelling of the path (see `path.rs`).
    let normalized = match path::normalize(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(normal)) => Some(normal),
        Err(bad) => return Err(Box::new(bad_request(&bad.to_string()))),
    };
    if let Some(normal) = normalized {
        set_path(req, &normal).map_err(|bad| Box::new(bad_request(&bad)))?;
    }
    // HTTP/1.x carried over HTTP/2 by an outbound sidecar: the mark goes before the decision,
    // and says how the app gets the request (see `orig_proto`).
    crate::orig_proto::take(req).map_err(|bad| Box::new(bad_request(&bad)))?;
    // The caller never speaks for the sidecar: drop its XFCC before anything looks at it.
    hop_by_hop::remove_xfcc(req.headers_mut());
    hop_by_hop::unannounce_xfcc_trailer(req.headers_mut());
    // The policy decides on the headers the app will get: the connection-specific ones (and
    // those `Connection` names) go now, not after the decision.
    if upgrade::is_upgrade(req) {
        upgrade::strip_keeping_upgrade(req.headers_mut(), true);
    } else {
        hop_by_hop::strip(req.headers_mut(), true);
    }
    if let Some((name, how)) = record::unreadable_header(req) {
        let bad = format!("header `{name}` has a value that {how}");
        return Err(Box::new(bad_request(&bad)));
    }
    Ok(grpc)
}

/// What is left of a decided request once the response is known: the decision log line and the
/// metrics. Every decision is recorded once: by [`Done::finish`] with the response's status, or,
/// when the exchange is dropped before that (the caller reset its stream or closed its
/// connection, the connection timed out, the sidecar stopped), by `Drop` with no status.
struct Done<'a> {
    shared: &'a Shared,
    start: Instant,
    allowed: bool,
    label: DecisionLabel,
    line: Vec<u8>,
    recorded: bool,
}

impl Done<'_> {
    fn finish(mut self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        self.record(Some(status));
        response
    }

    /// Completes and writes the line and counts the request; `status`: the response the caller
    /// gets, `None` if it gets none. The line carries it as `upstream_status` only for an
    /// allowed request (a denied one never reached the app).
    fn record(&mut self, status: Option<u16>) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let latency = self.start.elapsed();
        warden_policy::finish_line(
            &mut self.line,
            status.filter(|_| self.allowed),
            record::micros(latency),
        );
        self.shared.log.push(&self.line);
        self.shared
            .metrics
            .request(Direction::Inbound, self.label, status, latency);
    }
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.record(None);
    }
}

pin_project_lite::pin_project! {
    /// A request's answer: made at once (no decision was needed), or to come.
    #[project = ExchangeProj]
    enum Exchange<F> {
        Answered { response: Option<Response<ProxyBody>> },
        Pending { #[pin] future: F },
    }
}

impl<F: Future<Output = Response<ProxyBody>>> Future for Exchange<F> {
    type Output = Response<ProxyBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<ProxyBody>> {
        match self.project() {
            ExchangeProj::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(response),
                None => Poll::Pending,
            },
            ExchangeProj::Pending { future } => future.poll(cx),
        }
    }
}

/// Whether `req` is a gRPC call, decided with action `grpc`: an HTTP/2 `POST` with one
/// `content-type`, `application/grpc` or `application/grpc+…`/`;…` (the gRPC wire spec). A
/// request that claims gRPC any other way is malformed (`Err`, answered 400): decided on its
/// method instead, it would reach a gRPC server (which reads neither the method nor a second
/// `content-type`) as a call its policy never saw. `application/grpc-web` is not gRPC.
pub(super) fn grpc_call<B>(req: &Request<B>) -> Result<bool, &'static str> {
    let types = req.headers().get_all(header::CONTENT_TYPE);
    if !types.iter().any(|ct| is_grpc_type(ct.as_bytes())) {
        return Ok(false);
    }
    if req.version() != http::Version::HTTP_2 {
        return Err("gRPC needs HTTP/2");
    }
    if req.method() != http::Method::POST {
        return Err("a gRPC call is a POST");
    }
    match types.iter().nth(1) {
        None => Ok(true),
        Some(_) => Err("more than one content-type"),
    }
}

/// `application/grpc`, alone or with a `+format` or `;parameters` (ASCII case-insensitive).
fn is_grpc_type(ct: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    ct.get(..GRPC.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(GRPC))
        && matches!(ct.get(GRPC.len()), None | Some(b'+' | b';' | b' '))
}

/// A request names one host: one `Host` (RFC 9112 §3.2: more is a 400), and over HTTP/2 a
/// `host` that agrees with `:authority` (RFC 9113 §8.3.1). Policies read the one `host`.
fn one_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one host");
    }
    if let (Some(host), Some(authority)) = (first, req.uri().authority())
        && req.version() == http::Version::HTTP_2
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err("host and :authority differ");
    }
    Ok(())
}

/// 403 with a body naming the decision; for gRPC a trailers-only PERMISSION_DENIED.
fn denied(decision_id: &str, grpc: bool) -> Response<ProxyBody> {
    let message = format!("denied by policy (decision {decision_id})");
    if grpc {
        return grpc_status(GRPC_PERMISSION_DENIED, &message);
    }
    plain(StatusCode::FORBIDDEN, format!("{message}\n"))
}

/// 400 for a request the sidecar will not decide on (for gRPC too: clients read it as INTERNAL).
/// The answer to a request on a connection whose caller's credentials have lapsed (an HTTP/2
/// stream opened before the client took the GOAWAY): 503, not decided, counted with decision
/// `none`.
pub(super) fn lapsed_answer(shared: &Shared) -> Response<ProxyBody> {
    let response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the caller's credentials have lapsed; reconnect\n".to_owned(),
    );
    shared.metrics.request(
        Direction::Inbound,
        DecisionLabel::None,
        Some(response.status().as_u16()),
        std::time::Duration::ZERO,
    );
    response
}

fn bad_request(message: &str) -> Response<ProxyBody> {
    plain(StatusCode::BAD_REQUEST, format!("{message}\n"))
}

/// Replaces `req`'s path with `path`, keeping its query, scheme and authority.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), String> {
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|e| format!("the normalized request path is not valid: {e}"))?,
    );
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|e| format!("the request target is not valid: {e}"))?;
    Ok(())
}

/// 431 (gRPC: RESOURCE_EXHAUSTED) for a request with more headers than `limits.max_headers`,
/// or more header bytes than `limits.max_header_bytes`.
fn headers_too_large(grpc: bool, message: &str) -> Response<ProxyBody> {
    if grpc {
        return grpc_status(GRPC_RESOURCE_EXHAUSTED, message);
    }
    plain(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!("{message}\n"),
    )
}

fn app_error(err: AppError, grpc: bool) -> Response<ProxyBody> {
    let (status, message) = match err {
        AppError::Refused => (StatusCode::BAD_GATEWAY, "app refused the connection"),
        AppError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "app unavailable"),
    };
    if grpc {
        return grpc_status(GRPC_UNAVAILABLE, message);
    }
    plain(status, format!("{message}\n"))
}

fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A trailers-only gRPC response: HTTP 200, `grpc-status` and `grpc-message` in the headers,
/// no body.
fn grpc_status(code: &'static str, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    if let Ok(v) = HeaderValue::try_from(percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// gRPC's `grpc-message` encoding: percent-encode outside printable ASCII and `%`.
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_denial_is_trailers_only_permission_denied() {
        let resp = denied("abc-1", true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "7");
        assert_eq!(
            resp.headers()["grpc-message"],
            "denied by policy (decision abc-1)"
        );
        let resp = denied("abc-1", false);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }
}
