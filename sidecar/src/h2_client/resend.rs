//! Sending once more a request the peer did not process. RFC 9113 says a stream the peer
//! refused (`REFUSED_STREAM`, section 8.7) or one above the last stream id of its GOAWAY
//! (section 6.8) was not processed, whatever the request's method: a bodiless one is sent once
//! more, on whichever connection then takes it, as Istio's default retry policy has Envoy do
//! (`refused-stream`). One with a body is not: its body has been streamed away.
//! Keeping a bodiless request's head for that costs a copy of its headers per request.

use std::future::Future;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{H2Error, InFlight, SharedH2, Started};
use crate::h2_body::H2Body;
use crate::lapse::Verified;

/// An exchange that got no answer: why, and the request to send once more when the peer said
/// it never processed it and it has no body.
pub(super) struct Unanswered {
    pub(super) error: h2::Error,
    pub(super) resend: Option<Box<Request<Empty<Bytes>>>>,
}

/// A request [`super::start`] could not send: why, and the request again when the connection
/// could no longer take a stream (it ended or went away after it was found ready, as when its
/// driver, on another thread, reads a GOAWAY in between) and its head was kept (a bodiless
/// request's, see [`replay_of`]). Nothing of it reached the peer, so it goes to another
/// connection, whatever its method; one with a body fails, as its head was not kept.
pub(super) struct Unsent<B> {
    pub(super) error: h2::Error,
    pub(super) again: Option<Box<Request<B>>>,
}

/// Counts the requests sent once more ([`SharedH2::counting_resends`]).
pub(super) struct OnResend(pub(super) Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnResend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnResend")
    }
}

// === impl Unsent ===

impl<B> Unsent<B> {
    /// `error` from opening the stream of a request whose head is `replay` (if kept) and whose
    /// body is `body`. A connection that can take no stream is marked closed, so that the pool
    /// no longer offers it.
    pub(super) fn of(
        error: h2::Error,
        replay: Option<Box<Request<Empty<Bytes>>>>,
        body: B,
        in_flight: &InFlight,
    ) -> Self {
        // A connection-level error (h2 fails every new stream with it once the peer's GOAWAY
        // is read or the connection has ended); not one of the request's own (a malformed
        // head is a user error).
        let gone = error.is_go_away() || error.is_io();
        if gone {
            in_flight.0.closed.store(true, Ordering::Relaxed);
        }
        let again = replay.filter(|_| gone).map(|head| {
            let (head, _) = head.into_parts();
            Box::new(Request::from_parts(head, body))
        });
        Self { error, again }
    }
}

// === impl SharedH2 ===

impl SharedH2 {
    /// Sends once more a bodiless request the peer did not process; no further time.
    pub(super) async fn resend<D, F, I, E>(
        &self,
        req: Request<Empty<Bytes>>,
        dial: &D,
    ) -> Result<Response<H2Body>, H2Error<E>>
    where
        D: Fn() -> F,
        F: Future<Output = Result<I, E>>,
        I: AsyncRead + AsyncWrite + Verified + Unpin + Send + 'static,
        E: Clone + Send + 'static,
    {
        let exchange = match self.send_on_open(req, false) {
            Started::Sent(exchange) => exchange,
            Started::Failed(e) => return Err(H2Error::Http(e)),
            Started::NoConnection(req) => self.send_connecting(*req, dial, false).await?,
        };
        exchange
            .response()
            .await
            .map_err(|unanswered| H2Error::Http(unanswered.error))
    }
}

/// A bodiless request with `head`'s method, URI, version and headers (what HTTP/2 sends; not
/// its extensions, which stay on this side).
pub(super) fn replay_of(head: &http::request::Parts) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

/// Whether the peer said it never processed the stream that failed with `e`: it refused it
/// (`REFUSED_STREAM`, RFC 9113 section 8.7), or told the connection to go away with a last
/// stream id below it (section 6.8: h2 0.4 fails a stream with the peer's GOAWAY only then; a
/// stream at or below it runs on, and fails with an I/O error if the connection drops under
/// it, which says nothing of whether it was processed).
pub(super) fn unprocessed(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
}
