//! HTTP/1.1 upstream connections held per caller connection, for the inbound's app side and the
//! outbound's upstream side.
//!
//! An HTTP/1.1 connection carries one request at a time, so each caller connection holds its
//! own upstream connection ([`H1Conn`]) from its first request to its end: the pair never waits
//! on another caller, and nothing shared is locked or searched per request (a pool would check a
//! connection out and back in for every request). When the caller's connection ends, its
//! upstream connection goes to a small list of idle ones ([`H1Idle`]) that the next caller
//! connection takes from before it opens a new one, so callers that connect per request still
//! reuse upstream connections.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::{HeaderValue, header};
use hyper::body::{Body, Incoming};

use crate::lapse::{Validity, Verified};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// Upstream connections no caller connection holds, oldest first, each with the time it was last
/// used; at most `max` of them. One unused for `max_idle` is closed (dropped from the list) by
/// one reaper task, which runs while the list is not empty.
#[derive(Debug)]
pub(crate) struct H1Idle<B = Incoming> {
    conns: Mutex<Vec<(Instant, Upstream<B>)>>,
    max_idle: Duration,
    max: usize,
    /// Whether the reaper task runs.
    reaping: AtomicBool,
}

/// One caller connection's hold on an upstream connection: taken from the idle list or opened on
/// first use, reused while it stays open and fresh, returned to the idle list when dropped (if it
/// finished its last exchange; otherwise dropped, which closes it).
#[derive(Debug)]
pub(crate) struct H1Conn<B: Body + Send + 'static = Incoming> {
    slot: tokio::sync::Mutex<Option<(Instant, Upstream<B>)>>,
    idle: Arc<H1Idle<B>>,
}

/// An upstream connection's handle, and what its handshake verified of the upstream (`None`:
/// a plaintext connection, to the local app).
#[derive(Debug)]
pub(crate) struct Upstream<B> {
    pub(crate) sender: SendRequest<B>,
    validity: Option<Arc<Validity>>,
}

impl<B> Upstream<B> {
    /// What the handshake verified of the upstream.
    pub(crate) fn validity(&self) -> Option<Arc<Validity>> {
        self.validity.clone()
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum H1Error<E> {
    /// Opening a connection failed (the dialer's error).
    Connect(E),
    /// The exchange failed.
    Http(hyper::Error),
}

/// Runs the HTTP/1.1 client handshake on `io` and spawns the connection's driver. `upgrades`:
/// the connection may switch protocols (only one opened for an upgrade request may: an
/// unsolicited 101 on a shared one is an error). Once the peer a handshake verified no longer
/// holds, the connection takes no new request; `lapse_grace` later a watcher aborts the driver
/// (`lapse::end_when_lapsed`), dropping what is still in flight.
pub(crate) async fn handshake<I, B>(
    io: I,
    upgrades: bool,
    lapse_grace: Duration,
) -> Result<Upstream<B>, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Verified + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let validity = io.validity();
    let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let result = match upgrades {
            true => connection.with_upgrades().await,
            false => connection.await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "http/1.1 upstream connection ended with an error");
        }
    });
    crate::lapse::end_when_lapsed(driver.abort_handle(), validity.clone(), lapse_grace, || ());
    Ok(Upstream { sender, validity })
}

// === impl H1Idle ===

impl<B: Body + Send + 'static> H1Idle<B> {
    /// A connection unused for `max_idle` is not used again: the upstream may be closing it.
    pub(crate) fn new(max_idle: Duration, max: usize) -> Arc<Self> {
        Arc::new(Self {
            conns: Mutex::new(Vec::new()),
            max_idle,
            max,
            reaping: AtomicBool::new(false),
        })
    }

    /// A new caller connection's (still empty) hold on an upstream connection.
    pub(crate) fn conn(self: &Arc<Self>) -> H1Conn<B> {
        H1Conn {
            slot: tokio::sync::Mutex::new(None),
            idle: Arc::clone(self),
        }
    }

    /// Whether a connection last used at `used` may still carry a request.
    /// Not when the upstream's credentials no longer hold (its SVID expired, or the bundles no
    /// longer verify it): what it has in flight finishes, new requests go to a new connection.
    fn fresh(&self, used: Instant, upstream: &Upstream<B>) -> bool {
        let now = Instant::now();
        now.duration_since(used) < self.max_idle
            && !upstream.sender.is_closed()
            && (upstream.validity.as_ref()).is_none_or(|v| v.holds_at(now.into_std()))
    }

    /// The most recently idled connection that is still open and fresh.
    fn take(&self) -> Option<Upstream<B>> {
        let mut conns = self.conns.lock().ok()?;
        while let Some((used, upstream)) = conns.pop() {
            if self.fresh(used, &upstream) {
                return Some(upstream);
            }
        }
        None
    }

    /// Keeps `sender` for the next caller connection if it is open, between exchanges, and there
    /// is room; drops stale entries on the way. Starts the reaper unless it runs.
    fn put(self: &Arc<Self>, used: Instant, upstream: Upstream<B>) {
        if !self.fresh(used, &upstream) || !upstream.sender.is_ready() {
            return;
        }
        {
            let Ok(mut conns) = self.conns.lock() else {
                return;
            };
            conns.retain(|(used, s)| self.fresh(*used, s));
            if conns.len() >= self.max {
                return;
            }
            conns.push((used, upstream));
        }
        // Outside a runtime (a drop during shutdown) there is nothing to close it for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && !self.reaping.swap(true, Ordering::AcqRel)
        {
            runtime.spawn(reap(Arc::downgrade(self), self.max_idle / 2));
        }
    }
}

/// Every `period`, closes the idle connections unused for their max idle (so each lingers at
/// most half that again); ends when none is left, or the list is gone.
async fn reap<B: Body + Send + 'static>(idle: Weak<H1Idle<B>>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let mut conns = idle.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|(used, s)| idle.fresh(*used, s));
        if conns.is_empty() {
            // Under the lock: a connection put after this finds the reaper stopped and starts
            // it again.
            idle.reaping.store(false, Ordering::Release);
            return;
        }
    }
}

// === impl H1Conn ===

impl<B: Body + Send + 'static> H1Conn<B> {
    /// Sends `req` on this caller connection's upstream connection, opening one with `connect`
    /// when it has none open and fresh. A request the old connection could not take (the
    /// upstream closed it while idle) is sent once more on a new one.
    pub(crate) async fn send<C, F, E>(
        &self,
        mut req: Request<B>,
        connect: C,
    ) -> Result<Response<Incoming>, H1Error<E>>
    where
        C: Fn() -> F,
        F: Future<Output = Result<Upstream<B>, E>>,
    {
        chunked_when_unsized(&mut req);
        let mut slot = self.slot.lock().await;
        let mut retried = false;
        loop {
            let held = slot
                .take()
                .and_then(|(used, open)| self.idle.fresh(used, &open).then_some(open));
            // Connecting is boxed: a large future the common path should not carry.
            let mut upstream = match held.or_else(|| self.idle.take()) {
                Some(mut open) => match open.sender.ready().await {
                    Ok(()) => open,
                    Err(_) => Box::pin(connect()).await.map_err(H1Error::Connect)?,
                },
                None => Box::pin(connect()).await.map_err(H1Error::Connect)?,
            };
            match upstream.sender.try_send_request(req).await {
                Ok(resp) => {
                    *slot = Some((Instant::now(), upstream));
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        tracing::debug!(error = %e.error(), "upstream connection closed; reconnecting");
                        retried = true;
                        req = unsent;
                    }
                    _ => return Err(H1Error::Http(e.into_error())),
                },
            }
        }
    }
}

/// Asks for chunked coding when `req` has a body of unknown length and nothing says how it is
/// framed. The request's own `Transfer-Encoding` went with its connection-specific headers, and
/// for a `GET`, `HEAD` or `CONNECT` without one hyper sends no body at all: a `GET` with a
/// chunked body (a search API's query) would reach the upstream without it.
fn chunked_when_unsized<B: Body>(req: &mut Request<B>) {
    let body = req.body();
    if body.is_end_stream()
        || body.size_hint().exact().is_some()
        || req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return;
    }
    req.headers_mut().insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
}

impl<B: Body + Send + 'static> Drop for H1Conn<B> {
    fn drop(&mut self) {
        if let Some((used, upstream)) = self.slot.get_mut().take() {
            self.idle.put(used, upstream);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::DuplexStream;

    use super::*;

    /// An open HTTP/1.1 client connection, ready for a request, over an in-memory stream (whose
    /// other end is kept), its connection task spawned.
    async fn open() -> (Upstream<Incoming>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut upstream = handshake(ours, false, Duration::ZERO).await.unwrap();
        upstream.sender.ready().await.unwrap();
        (upstream, theirs)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_after_max_idle_by_one_task() {
        let idle = H1Idle::new(Duration::from_secs(10), 64);
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let mut ends = Vec::new();
        for _ in 0..20 {
            let (sender, end) = open().await;
            ends.push(end);
            idle.put(Instant::now(), sender);
        }
        // 20 connection tasks and one reaper, however many connections were returned.
        assert_eq!(tasks(), 21);
        assert_eq!(idle.conns.lock().unwrap().len(), 20);
        // A connection taken before max idle comes out fresh.
        let taken = idle.take().expect("a fresh idle connection");
        idle.put(Instant::now(), taken);
        tokio::time::sleep(Duration::from_secs(16)).await;
        assert!(idle.conns.lock().unwrap().is_empty());
        assert!(idle.take().is_none());
        // Nothing left to close: the reaper has ended, and starts again with the next one.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (sender, _end) = open().await;
        idle.put(Instant::now(), sender);
        assert_eq!(idle.conns.lock().unwrap().len(), 1);
        assert!(idle.reaping.load(Ordering::Acquire));
    }
}
