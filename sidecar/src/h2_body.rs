//! Bodies on HTTP/2 streams driven with the `h2` crate directly: [`H2Body`] hands a stream's
//! DATA and trailers to whoever reads it (returning flow-control capacity as each chunk is
//! taken), and [`pipe`] streams any body into a stream, one chunk at a time, as the peer's
//! flow-control window allows. Nothing is buffered beyond the chunk in hand; a reset on either
//! side ends the other.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::h2_client::InFlight;
use crate::hop_by_hop;

/// A body received on an HTTP/2 stream: a request's (server side) or a response's (client side).
#[derive(Debug)]
pub(crate) struct H2Body {
    recv: RecvStream,
    /// From `content-length`, when the message has one.
    length: Option<u64>,
    data_done: bool,
    /// Keeps a client exchange counted as in flight while its response body is read.
    _in_flight: Option<InFlight>,
}

/// Streams a body into an HTTP/2 stream (see [`pipe`]).
pub(crate) struct Pipe<B> {
    body: B,
    tx: SendStream<Bytes>,
    /// A chunk waiting for flow-control capacity, and whether it ends the body.
    waiting: Option<(Bytes, bool)>,
    /// Until then, a body that fails leaves the stream to whoever else holds it (a request's
    /// answer, lingering: `h2_client::linger`) instead of resetting it at once.
    hold_reset_until: Option<Instant>,
}

// === impl H2Body ===

impl H2Body {
    pub(crate) fn new(recv: RecvStream, headers: &HeaderMap, in_flight: Option<InFlight>) -> Self {
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Self {
            recv,
            length,
            data_done: false,
            _in_flight: in_flight,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken by the server side: the peer may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(mut trailers)) => {
                // Only the sidecar speaks for a caller's certificate, and only in the head: one
                // in trailers goes no further (an app merging trailers into headers would take it).
                hop_by_hop::remove_xfcc(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.recv.is_end_stream(), self.length) {
            (true, _) => SizeHint::with_exact(0),
            (false, Some(length)) => SizeHint::with_exact(length),
            (false, None) => SizeHint::default(),
        }
    }
}

// === impl Pipe ===

/// Streams `body` into `tx` until the body ends (then END_STREAM or trailers), the peer resets
/// the stream, or the body fails (then the stream is reset).
pub(crate) fn pipe<B>(body: B, tx: SendStream<Bytes>) -> Pipe<B>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    Pipe {
        body,
        tx,
        waiting: None,
        hold_reset_until: None,
    }
}

impl<B> Pipe<B> {
    /// This pipe, leaving the stream's reset to its other holders when the body fails before
    /// `deadline`.
    pub(crate) fn holding_resets_until(mut self, deadline: Instant) -> Self {
        self.hold_reset_until = Some(deadline);
        self
    }
}

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            // Registered on every pass, so that a reset wakes this task whatever it waits on.
            if let Poll::Ready(reason) = this.tx.poll_reset(cx) {
                tracing::debug!(?reason, "peer reset the stream; body dropped");
                return Poll::Ready(());
            }
            if let Some((_, eos)) = this.waiting {
                // Capacity first (as hyper does): reserving before the chunk is in hand could
                // pin connection window on a body that never sends.
                while this.tx.capacity() == 0 {
                    match ready!(this.tx.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Poll::Ready(()),
                    }
                }
                let Some((data, _)) = this.waiting.take() else {
                    return Poll::Ready(());
                };
                if this.tx.send_data(data, eos).is_err() || eos {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.body.is_end_stream();
                        if data.is_empty() {
                            if this.tx.send_data(data, eos).is_err() || eos {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        // h2 raises the claim to the chunk's length when it is sent.
                        this.tx.reserve_capacity(1);
                        this.waiting = Some((data, eos));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.tx.reserve_capacity(0);
                            // Trailers HTTP/2 cannot carry (connection-specific fields) end
                            // the stream with a reset: without it the peer would wait for the
                            // end of a body that never comes.
                            if this.tx.send_trailers(trailers).is_err() {
                                this.tx.send_reset(Reason::INTERNAL_ERROR);
                            }
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    let e: Box<dyn StdError + Send + Sync> = e.into();
                    if this
                        .hold_reset_until
                        .is_some_and(|until| Instant::now() < until)
                    {
                        // Dropping the handle resets nothing while the answer is held; the
                        // stream is reset when that is dropped (it never ends the body).
                        tracing::debug!(error = %e, "body failed; the stream is reset with its answer");
                        return Poll::Ready(());
                    }
                    tracing::debug!(error = %e, "body failed; resetting the stream");
                    this.tx.send_reset(reset_reason(&*e));
                    return Poll::Ready(());
                }
                None => {
                    let _ = this.tx.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The reason to pass on when a body failed: the other side's own reset reason when it reset
/// its stream, else CANCEL.
fn reset_reason(err: &(dyn StdError + 'static)) -> Reason {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        source = e.source();
    }
    Reason::CANCEL
}
