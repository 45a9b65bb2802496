//! Giving up on a stream the peer may not have read yet, without tripping its rapid-reset
//! defence.
//!
//! An HTTP/2 server closes the whole connection (GOAWAY `ENHANCE_YOUR_CALM`) when its client
//! resets more streams than it allows (20 for hyper and tonic) before it has accepted them:
//! the defence against the rapid-reset attack. A caller that goes away with many requests in
//! flight, as a load generator does at its end, has the sidecar reset every one of them on the
//! shared connection; when the app is busy, it reads their HEADERS and their resets together,
//! and then drops the connection with every other caller's request on it (503 for each).
//!
//! So a request given up on within [`YOUNG`] of its HEADERS being queued — one the peer may
//! not have read yet — is not reset at once: it lingers, holding its stream, until the answer's
//! headers come (the peer took it; dropping it then resets nothing the peer has not accepted,
//! and nothing at all when the answer is complete) or until [`LINGER`] after it was sent, then
//! it is dropped (reset). At most [`MAX_LINGERING`] linger per connection; past that, a stream
//! is reset at once. An older stream was read long ago and is reset at once, so a caller's
//! cancellation still reaches the app's handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use h2::RecvStream;
use h2::client::ResponseFuture;
use http::Response;

use super::ConnState;

/// A stream given up on this soon after it was sent may not have been read by the peer yet.
pub(super) const YOUNG: Duration = Duration::from_millis(100);
/// The longest a stream given up on is held for its answer, from when it was sent.
pub(super) const LINGER: Duration = Duration::from_secs(1);
/// Most streams lingering at once on one connection.
pub(super) const MAX_LINGERING: usize = 128;

/// The answer to a request whose HEADERS were queued at `sent`; dropped before it comes, the
/// stream lingers or is reset (see the module's documentation).
pub(super) struct Awaiting {
    response: Option<ResponseFuture>,
    sent: Instant,
    conn: Arc<ConnState>,
}

// === impl Awaiting ===

impl Awaiting {
    pub(super) fn new(response: ResponseFuture, sent: Instant, conn: Arc<ConnState>) -> Self {
        Self {
            response: Some(response),
            sent,
            conn,
        }
    }
}

impl Future for Awaiting {
    type Output = Result<Response<RecvStream>, h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(response) = this.response.as_mut() else {
            return Poll::Ready(Err(h2::Error::from(h2::Reason::INTERNAL_ERROR)));
        };
        let answer = std::task::ready!(Pin::new(response).poll(cx));
        this.response = None;
        Poll::Ready(answer)
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        let Some(response) = self.response.take() else {
            return;
        };
        if self.sent.elapsed() >= YOUNG {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lingering = &self.conn.lingering;
        if lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            lingering.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let counted = Lingering(Arc::clone(&self.conn));
        let until = tokio::time::Instant::from_std(self.sent + LINGER);
        runtime.spawn(async move {
            let answer = tokio::time::timeout_at(until, response).await;
            drop::<Option<Response<RecvStream>>>(answer.ok().and_then(Result::ok));
            drop(counted);
        });
    }
}

/// Counts a stream as lingering on its connection until dropped (also when its task is dropped
/// unpolled, as at shutdown).
struct Lingering(Arc<ConnState>);

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Ordering::Relaxed);
    }
}
