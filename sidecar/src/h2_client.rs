//! One shared HTTP/2 client connection, multiplexing every caller's streams: the inbound's h2c
//! connection to the app and each outbound route's mutual-TLS connection to its upstream.
//!
//! Driven with the `h2` crate directly: a request clones the open connection's `SendRequest`
//! under a short lock, opens its stream and awaits the response headers in its own task. (hyper's
//! HTTP/2 client passed each request through a channel to the connection's task and spawned one
//! more task per request to hand the response back; that was a tenth of a sidecar's CPU.) A
//! request body is streamed by a task of its own ([`h2_body::pipe`]); a bodiless request (most
//! GETs, END_STREAM on its headers) needs none. The response body returns flow-control capacity
//! as the caller's side takes each chunk ([`H2Body`]).
//!
//! The connection is opened on first use, by one request while the others wait for it; once it
//! has closed, or has been idle for longer than `max_idle` (so that a peer with the same idle
//! timeout does not close it just as a request is written), the next request opens a new one. A
//! request the old connection could not take (it closed or was told to go away meanwhile) is
//! sent once more on a new connection (a request with a body only when that was seen before its
//! stream was opened; after, in the moment a driver on another thread reads a GOAWAY, only a
//! bodiless one, whose head was kept); so is a bodiless one the peer refused (`REFUSED_STREAM`)
//! or left unprocessed behind its GOAWAY (`resend.rs`). When every open connection has as many
//! streams in flight as its peer allows (`SETTINGS_MAX_CONCURRENT_STREAMS`), the next request opens one more, up to
//! [`MAX_CONNECTIONS`], as Envoy's HTTP/2 pool does, instead of queueing behind the others'
//! exchanges; requests go to the first connection with room, so the later ones fall idle and
//! close once the load drops. Past that many, a request waits on the least busy connection for
//! a stream to end. With [`KeepAlive`], the connection pings its peer while
//! exchanges are in flight and is dropped when a ping goes unanswered.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

mod drive;
mod exchange;
mod linger;
mod resend;
#[cfg(test)]
mod resend_tests;
#[cfg(test)]
mod tests;

use crate::h2_body::H2Body;
use crate::lapse::{Validity, Verified};
use drive::drive;
use exchange::{Exchange, start};
use resend::{OnResend, Unanswered, Unsent};

/// Stream flow-control window offered to the peer (hyper's default).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Connection flow-control window offered to the peer. The connection is shared by many
/// callers, and a stream's data counts against the connection's window until its caller takes
/// it: with a window a few streams could fill (hyper's 5 MiB), one caller that stops reading its
/// responses stalled every caller's stream on the connection. 64 MiB takes 32 unread streams at
/// [`STREAM_WINDOW`] (256 at the app side's 256 KiB, as many as a peer lets open) and bounds
/// what the connection may hold unread.
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Most request body bytes buffered per stream beyond the peer's window (hyper's default).
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Largest response header list accepted (hyper's default).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams it reset that a connection remembers (for a second), so that the peer's frames
/// for them, crossing the reset, are dropped quietly instead of answered with a reset of
/// their own (h2's default is 50; a burst of cancellations, as when a caller with a hundred
/// streams in flight goes away, passes that).
const RESETS_REMEMBERED: usize = 256;

/// Streams assumed allowed on a new connection until its peer's SETTINGS arrive.
const INITIAL_MAX_STREAMS: usize = 100;
/// Most connections open at once to one peer: each takes as many concurrent streams as the peer
/// allows (256 for a Warden inbound, 100 to 250 for most HTTP/2 servers), so 8 carry at least
/// 800 exchanges before requests queue.
pub(crate) const MAX_CONNECTIONS: usize = 8;

/// The shared connection.
#[derive(Debug)]
pub(crate) struct SharedH2 {
    /// Open connections, the one taken first first.
    current: Mutex<Vec<Open>>,
    /// Held while connecting, so that waiting requests share one new connection.
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts finished, and the last one that failed (its number and the
    /// dialer's error, type-erased: a `SharedH2`'s dialer has one error type). Requests that
    /// waited while an attempt failed share its error instead of each dialing in turn, which
    /// would keep the k-th waiter k connect timeouts.
    attempts: AtomicU64,
    failed: Mutex<Option<(u64, Box<dyn Any + Send>)>>,
    builder: h2::client::Builder,
    keep_alive: Option<KeepAlive>,
    max_idle: Duration,
    /// How long a connection whose upstream no longer holds (see [`Validity`]) keeps what is
    /// in flight before it is dropped.
    lapse_grace: Duration,
    /// Called for each request sent once more (`resend.rs`), to count it.
    on_resend: Option<OnResend>,
}

/// Pings while exchanges are in flight: every `interval`, each to be answered within `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepAlive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

#[derive(Debug)]
struct Open {
    sender: SendRequest<Bytes>,
    state: Arc<ConnState>,
    last_used: Instant,
    /// What the handshake verified of the upstream (`None`: plaintext, to the local app).
    validity: Option<Arc<Validity>>,
}

/// What a connection's driver and its requests share.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Set when the connection has ended or refused a new stream.
    closed: AtomicBool,
    /// Exchanges whose response has not been dropped yet.
    in_flight: AtomicUsize,
    /// Streams given up on that are held for their answer ([`linger`]).
    lingering: AtomicUsize,
}

/// Counts an exchange as in flight on its connection until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

/// How [`SharedH2::send_on_open`] went.
enum Started<B> {
    Sent(Exchange),
    /// The connection refused the request itself (it is malformed for HTTP/2), or went away
    /// after it was found ready and the request's head was not kept ([`Unsent`]).
    Failed(h2::Error),
    /// No open connection could take it (boxed: this is the rare case, and the common one
    /// should not carry a request's size).
    NoConnection(Box<Request<B>>),
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum H2Error<E> {
    /// Opening the connection failed (the dialer's error).
    Connect(E),
    /// The HTTP/2 handshake or the exchange failed.
    Http(h2::Error),
}

// === impl SharedH2 ===

impl SharedH2 {
    /// One idle for longer than `max_idle` is replaced; one whose upstream no longer holds
    /// takes no new stream and is dropped `lapse_grace` later.
    pub(crate) fn new(
        max_idle: Duration,
        keep_alive: Option<KeepAlive>,
        lapse_grace: Duration,
    ) -> Self {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            // h2 counts, over a connection's whole life, the streams it resets for frames it
            // no longer expects, and past 1024 tears the connection down (GOAWAY
            // ENHANCE_YOUR_CALM), failing every stream in flight on it. On a shared connection
            // those frames are routine: a caller gives up, its stream is reset, and the peer's
            // answer, already on the wire, arrives for a stream h2 has forgotten (it keeps only
            // the last `RESETS_REMEMBERED`, for a second). One caller's cancellations must not
            // fail the other callers' requests, and the peer is our own app or an upstream we
            // verified: no limit.
            .max_local_error_reset_streams(None)
            .max_concurrent_reset_streams(RESETS_REMEMBERED)
            // Streams a new connection takes before the peer's SETTINGS say how many it allows:
            // the least RFC 9113 recommends a server allow (and hyper's default), so that a
            // burst on a new connection spreads over more connections instead of queueing on
            // it (h2's default is no limit).
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .enable_push(false);
        Self {
            current: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            failed: Mutex::new(None),
            builder,
            keep_alive,
            max_idle,
            lapse_grace,
            on_resend: None,
        }
    }

    /// Calls `on_resend` for each request sent once more because the peer did not process it.
    pub(crate) fn counting_resends(mut self, on_resend: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_resend = Some(OnResend(Box::new(on_resend)));
        self
    }

    /// Offers each stream a window of `bytes` (instead of [`STREAM_WINDOW`]): the most of a
    /// response the connection takes in before its caller reads it.
    pub(crate) fn with_stream_window(mut self, bytes: u32) -> Self {
        self.builder.initial_window_size(bytes);
        self
    }

    /// Sends `req` on the shared connection; `dial` opens the transport when a connection is
    /// needed. `req` must carry an absolute URI (`:scheme` and `:authority`) and no
    /// connection-specific headers.
    ///
    /// On an open connection the request's HEADERS are queued before this returns, and the
    /// future only awaits the response: it carries the stream's handle, not the request (every
    /// request's future is moved and allocated by the server that polls it, so its size is
    /// paid per request). Connecting is a boxed future of its own, taken only when needed.
    ///
    /// A bodiless request that the peer refused (`REFUSED_STREAM`) or left unprocessed behind
    /// a GOAWAY is sent once more, on whichever connection then takes it: RFC 9113 (sections
    /// 8.7 and 6.8) says such a request was not processed, whatever its method (`resend.rs`).
    /// One with a body is not: its body has been streamed away.
    pub(crate) fn send<'a, B, D, F, I, E>(
        &'a self,
        req: Request<B>,
        dial: D,
    ) -> impl Future<Output = Result<Response<H2Body>, H2Error<E>>> + 'a
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        D: Fn() -> F + 'a,
        F: Future<Output = Result<I, E>> + 'a,
        I: AsyncRead + AsyncWrite + Verified + Unpin + Send + 'static,
        E: Clone + Send + 'static,
    {
        let started = self.send_on_open(req, true);
        async move {
            let exchange = match started {
                Started::Sent(exchange) => exchange,
                Started::Failed(e) => return Err(H2Error::Http(e)),
                Started::NoConnection(req) => {
                    Box::pin(self.send_connecting(*req, &dial, true)).await?
                }
            };
            let resend = match exchange.response().await {
                Ok(response) => return Ok(response),
                Err(Unanswered {
                    error,
                    resend: None,
                }) => return Err(H2Error::Http(error)),
                Err(Unanswered {
                    error,
                    resend: Some(req),
                }) => {
                    tracing::debug!(%error, "upstream did not process the request; sending it once more");
                    if let Some(on_resend) = &self.on_resend {
                        (on_resend.0)();
                    }
                    req
                }
            };
            Box::pin(self.resend(*resend, &dial)).await
        }
    }

    /// Sends `req` on the open connection, if there is one that can take it; with `replayable`,
    /// keeping a bodiless request's head to send it once more.
    fn send_on_open<B>(&self, req: Request<B>, replayable: bool) -> Started<B>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some((mut sender, slot)) = self.open() else {
            return Started::NoConnection(Box::new(req));
        };
        // A fresh clone of the handle has no stream of its own pending, so readiness is decided
        // at once: the connection has not failed, gone away or run out of stream ids.
        let mut cx = Context::from_waker(Waker::noop());
        match sender.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => match start(&mut sender, req, slot, replayable) {
                Ok(exchange) => Started::Sent(exchange),
                // It ended or went away since (its driver runs on another thread): `start`
                // marked it closed.
                Err(Unsent {
                    error,
                    again: Some(req),
                }) => {
                    tracing::debug!(%error, "h2 connection went away as the request was sent; reconnecting");
                    Started::NoConnection(req)
                }
                Err(Unsent { error, again: None }) => Started::Failed(error),
            },
            Poll::Ready(Err(e)) => {
                // Closed or told to go away: `open` no longer offers it.
                slot.0.closed.store(true, Ordering::Relaxed);
                tracing::debug!(error = %e, "h2 connection closed before the request was sent; reconnecting");
                Started::NoConnection(Box::new(req))
            }
            Poll::Pending => Started::NoConnection(Box::new(req)),
        }
    }

    /// Sends `req` once a connection is ready: the open one, or a new one. A request the old
    /// connection could not take (it closed or was told to go away meanwhile) is sent once more
    /// on a new connection.
    async fn send_connecting<B, D, F, I, E>(
        &self,
        req: Request<B>,
        dial: &D,
        replayable: bool,
    ) -> Result<Exchange, H2Error<E>>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        D: Fn() -> F,
        F: Future<Output = Result<I, E>>,
        I: AsyncRead + AsyncWrite + Verified + Unpin + Send + 'static,
        E: Clone + Send + 'static,
    {
        let mut retried = false;
        // One attempt to open a connection per request: once it failed (its error kept here),
        // only what is open is tried, so a peer that is down costs one connect timeout.
        let mut dial_error = None;
        let mut req = req;
        loop {
            let (sender, slot, dialed) = match self.open() {
                Some((sender, slot)) => (sender, slot, false),
                None => {
                    let dialed = match dial_error.take() {
                        Some(e) => Err(e),
                        None => self.connect(dial).await,
                    };
                    match dialed {
                        Ok((sender, slot)) => (sender, slot, true),
                        // Opening one more beside full ones failed (or the attempt this request
                        // waited for did): wait for a stream on the least busy open one.
                        Err(e) => match self.least_busy() {
                            Some((sender, slot)) => {
                                dial_error = Some(e);
                                (sender, slot, false)
                            }
                            None => return Err(e),
                        },
                    }
                }
            };
            // The connection closed or was told to go away before the request was sent: as it
            // turned ready, or (its driver running on another thread) after, when `start` has
            // the request back only if it kept its head.
            let e = match sender.ready().await {
                Ok(mut sender) => match start(&mut sender, req, slot, replayable) {
                    Ok(exchange) => return Ok(exchange),
                    Err(Unsent {
                        error,
                        again: Some(again),
                    }) => {
                        req = *again;
                        error
                    }
                    Err(Unsent { error, again: None }) => return Err(H2Error::Http(error)),
                },
                Err(e) => {
                    slot.0.closed.store(true, Ordering::Relaxed);
                    e
                }
            };
            // A pooled connection: the next pass leaves it out (so this ends), and the one
            // retry is kept for a new one.
            if !dialed {
                tracing::debug!(error = %e, "pooled h2 connection closed before the request was sent");
            } else if !retried {
                tracing::debug!(error = %e, "h2 connection closed before the request was sent; reconnecting");
                retried = true;
            } else {
                return Err(H2Error::Http(e));
            }
        }
    }

    /// Opens a new connection, unless another request opened one (or one got room) while this
    /// one waited.
    async fn connect<D, F, I, E>(
        &self,
        dial: &D,
    ) -> Result<(SendRequest<Bytes>, InFlight), H2Error<E>>
    where
        D: Fn() -> F,
        F: Future<Output = Result<I, E>>,
        I: AsyncRead + AsyncWrite + Verified + Unpin + Send + 'static,
        E: Clone + Send + 'static,
    {
        let seen = self.attempts.load(Ordering::Acquire);
        let _connecting = self.connecting.lock().await;
        // Another request may have connected while this one waited…
        if let Some(open) = self.open() {
            return Ok(open);
        }
        // …or failed to: then this request fails the same way.
        if let Some(e) = self.failed_since::<E>(seen) {
            return Err(H2Error::Connect(e));
        }
        let dialed = dial().await;
        let attempt = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let io = match dialed {
            Ok(io) => io,
            Err(e) => {
                *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((attempt, Box::new(e.clone())));
                return Err(H2Error::Connect(e));
            }
        };
        let validity = io.validity();
        let (sender, connection) = self
            .builder_for_next()
            .handshake::<_, Bytes>(io)
            .await
            .map_err(H2Error::Http)?;
        let state = Arc::new(ConnState::default());
        let driver = tokio::spawn(drive(connection, Arc::clone(&state), self.keep_alive));
        let closing = Arc::clone(&state);
        crate::lapse::end_when_lapsed(
            driver.abort_handle(),
            validity.clone(),
            self.lapse_grace,
            move || closing.closed.store(true, Ordering::Relaxed),
        );
        // This request's stream is counted before others can see the connection.
        let slot = InFlight::new(Arc::clone(&state));
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Open {
                sender: sender.clone(),
                state,
                last_used: Instant::now(),
                validity,
            });
        Ok((sender, slot))
    }

    /// The builder for a new connection. Beside open ones (the same peer), the new one takes as
    /// many streams as the fewest they learned the peer allows, until its own SETTINGS arrive
    /// (instead of [`INITIAL_MAX_STREAMS`]): a request burst on it then keeps to a lower limit
    /// instead of being refused (`REFUSED_STREAM`) past it.
    fn builder_for_next(&self) -> std::borrow::Cow<'_, h2::client::Builder> {
        let learned = {
            let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            current
                .iter()
                .map(|open| open.sender.current_max_send_streams())
                .min()
        };
        match learned {
            None => std::borrow::Cow::Borrowed(&self.builder),
            Some(streams) => {
                let mut builder = self.builder.clone();
                builder.initial_max_send_streams(streams);
                std::borrow::Cow::Owned(builder)
            }
        }
    }

    /// The error of an attempt that finished after `seen` attempts had, if it failed.
    fn failed_since<E: Clone + 'static>(&self, seen: u64) -> Option<E> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let (attempt, e) = failed.as_ref()?;
        (*attempt > seen).then(|| e.downcast_ref::<E>().cloned())?
    }

    /// The handle of the first connection that has room for one more stream; when none has
    /// and [`MAX_CONNECTIONS`] are open, of the one with the fewest streams in flight (the
    /// request waits there for a stream to end); `None` when a new connection is to be opened.
    /// The request's stream is counted on the one returned (the [`InFlight`], taken under the
    /// pool's lock), which is marked used. Only connections that are open, carry streams or
    /// were used within `max_idle`, and whose upstream's credentials still hold (see
    /// [`Validity`]) are kept; any other is dropped (it closes once its streams are done).
    fn open(&self) -> Option<(SendRequest<Bytes>, InFlight)> {
        self.checkout(false)
    }

    /// The first connection with room, else the one with the fewest streams in flight, however
    /// many are open (`None`: none is).
    fn least_busy(&self) -> Option<(SendRequest<Bytes>, InFlight)> {
        self.checkout(true)
    }

    /// [`Self::open`], or with `any` [`Self::least_busy`].
    fn checkout(&self, any: bool) -> Option<(SendRequest<Bytes>, InFlight)> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        current.retain(|open| open.usable(now, self.max_idle));
        let open = match current.iter().position(Open::has_room) {
            Some(i) => current.get_mut(i)?,
            None if !any && current.len() < MAX_CONNECTIONS => return None,
            None => current.iter_mut().min_by_key(|open| open.state.streams())?,
        };
        open.last_used = now;
        // The stream is counted under the lock, so that two requests never take one free slot.
        Some((open.sender.clone(), InFlight::new(Arc::clone(&open.state))))
    }
}

// === impl Open ===

impl Open {
    /// Open, carrying streams or used within `max_idle`, its upstream still verified. (A full
    /// connection is not picked, so its `last_used` ages while its streams run; one carrying
    /// streams is not idle to its peer either.)
    fn usable(&self, now: Instant, max_idle: Duration) -> bool {
        !self.state.closed.load(Ordering::Relaxed)
            && (self.state.streams() > 0 || now.duration_since(self.last_used) <= max_idle)
            && self.validity.as_ref().is_none_or(|v| v.holds_at(now))
    }

    /// Fewer streams in flight than the peer lets open at once.
    fn has_room(&self) -> bool {
        self.state.streams() < self.sender.current_max_send_streams()
    }
}

// === impl ConnState ===

impl ConnState {
    /// Streams this side holds open: exchanges in flight and streams lingering.
    fn streams(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed) + self.lingering.load(Ordering::Relaxed)
    }
}

// === impl InFlight ===

impl InFlight {
    fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
