//! One exchange on a shared connection: its request's HEADERS queued (and its body's pipe
//! started), then its response awaited.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Body;

use super::InFlight;
use super::linger;
use super::resend::{Unanswered, Unsent, replay_of, unprocessed};
use crate::h2_body::{self, H2Body};

/// A request whose HEADERS are queued: its response to come.
pub(super) struct Exchange {
    /// The answer; dropped before it comes (even before first polled, as when the caller's
    /// connection ends in the read that brought the request), the stream lingers.
    awaiting: linger::Awaiting,
    in_flight: InFlight,
    /// The request's head again, for a bodiless request that may be sent once more (see
    /// [`unprocessed`]); boxed, as the exchange is held in every request's future.
    replay: Option<Box<Request<Empty<Bytes>>>>,
}

/// Queues `req`'s HEADERS on `sender` (whose connection is ready) and, when it has a body, a
/// task streaming it; with `replayable`, a bodiless request's head is kept to send it once
/// more (and to have it back if the connection can no longer take it, see [`Unsent`]).
pub(super) fn start<B>(
    sender: &mut SendRequest<Bytes>,
    req: Request<B>,
    in_flight: InFlight,
    replayable: bool,
) -> Result<Exchange, Unsent<B>>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (head, body) = req.into_parts();
    let end_of_stream = body.is_end_stream();
    let replay = (replayable && end_of_stream).then(|| Box::new(replay_of(&head)));
    let (response, tx) = match sender.send_request(Request::from_parts(head, ()), end_of_stream) {
        Ok(sent) => sent,
        Err(error) => return Err(Unsent::of(error, replay, body, &in_flight)),
    };
    let sent = Instant::now();
    if !end_of_stream {
        tokio::spawn(h2_body::pipe(body, tx).holding_resets_until(sent + linger::YOUNG));
    }
    let awaiting = linger::Awaiting::new(response, sent, Arc::clone(&in_flight.0));
    Ok(Exchange {
        awaiting,
        in_flight,
        replay,
    })
}

// === impl Exchange ===

impl Exchange {
    pub(super) async fn response(self) -> Result<Response<H2Body>, Unanswered> {
        let Self {
            awaiting,
            in_flight,
            replay,
        } = self;
        let (head, recv) = match awaiting.await {
            Ok(response) => response.into_parts(),
            Err(error) => {
                let resend = replay.filter(|_| unprocessed(&error));
                return Err(Unanswered { error, resend });
            }
        };
        let body = H2Body::new(recv, &head.headers, Some(in_flight));
        Ok(Response::from_parts(head, body))
    }
}
