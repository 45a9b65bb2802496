//! The inbound HTTP/2 server for connections that chose `h2` by ALPN, on the `h2` crate directly.
//!
//! hyper's server spawned a task per stream (moving each request's future into it) and piped
//! each response body from that task; here the connection's own task drives every stream of
//! the connection (a `FuturesUnordered`, polled only when woken), so a stream costs no task, and
//! a request the app answers is written by the same task that reads the next one. Each stream is
//! decided and forwarded by [`http::handle`](super::http::handle), exactly as over HTTP/1.1 and
//! through hyper's server (still used for HTTP/1.1, and for HTTP/2 without ALPN: prior
//! knowledge in permissive mode).
//!
//! What hyper's server did for HTTP/2 and this one keeps: its flow-control windows and limits,
//! a `date` header on responses without one, `content-length` from a body of known size, a
//! caller's reset cancelling the exchange (the app's stream is reset too), GOAWAY and finishing
//! the streams in flight when the sidecar stops. The `h2` crate validates the protocol itself
//! (malformed frames and headers, content-length mismatches, oversized header lists: 431).

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderValue, Request, header};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::http::{MAX_CONCURRENT_STREAMS, handle};
use super::record;
use super::{ConnInfo, Shared};
use crate::h2_body::{self, H2Body};

/// Stream and connection flow-control windows offered to callers (hyper's server defaults).
const WINDOW: u32 = 1024 * 1024;
/// Most response body bytes buffered per stream beyond the caller's window (hyper's default).
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams a caller may reset with errors before the connection is closed (hyper's default).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The HTTP/2 server settings, shared by every connection.
#[derive(Debug, Clone)]
pub(crate) struct H2Server {
    builder: h2::server::Builder,
}

// === impl H2Server ===

impl H2Server {
    pub(crate) fn new(max_header_bytes: usize) -> Self {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        Self { builder }
    }
}

/// Serves one HTTP/2 connection until it ends or `idle` completes. When the sidecar stops, the
/// connection sends GOAWAY, finishes the streams in flight and closes.
pub(super) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    conn: ConnInfo,
    idle: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::pin!(idle);
    let handshake = shared.h2.builder.handshake::<_, Bytes>(io);
    let mut h2 = tokio::select! {
        result = handshake => match result {
            Ok(h2) => h2,
            Err(e) => {
                tracing::debug!(src.addr = %conn.source, error = %e, "h2 handshake failed");
                return;
            }
        },
        () = &mut idle => return,
    };
    let xfcc = record::xfcc(&conn);
    let mut streams = FuturesUnordered::new();
    let mut stop = shared.stop.subscribe();
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = h2.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    streams.push(stream(&shared, &conn, xfcc.clone(), req, respond));
                }
                Some(Err(e)) => {
                    tracing::debug!(src.addr = %conn.source, error = %e, "connection ended with an error");
                    return;
                }
                // Closed, or shut down gracefully with every stream done.
                None => return,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            () = &mut idle => {
                tracing::debug!(src.addr = %conn.source, "idle timeout");
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                h2.graceful_shutdown();
            }
        }
    }
}

/// One stream: decided and forwarded (or answered here), then the response streamed back.
async fn stream(
    shared: &Shared,
    conn: &ConnInfo,
    xfcc: Option<HeaderValue>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (head, recv) = req.into_parts();
    let body = H2Body::new(recv, &head.headers, None);
    let handled = handle(shared, conn, xfcc, Request::from_parts(head, body), |req| {
        shared.app.send_h2(req)
    });
    // A caller that resets the stream cancels the exchange: dropping it resets the app's stream.
    let response = tokio::select! {
        response = handled => response,
        reason = poll_fn(|cx| respond.poll_reset(cx)) => {
            tracing::debug!(src.addr = %conn.source, ?reason, "caller reset the stream");
            return;
        }
    };
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
    let tx = match respond.send_response(http::Response::from_parts(head, ()), end_of_stream) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(src.addr = %conn.source, error = %e, "sending the response failed");
            return;
        }
    };
    if !end_of_stream {
        h2_body::pipe(body, tx).await;
    }
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
    use super::*;

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
