//! One shared HTTP/2 client connection, multiplexing every caller's streams: the inbound's h2c
//! connection to the app and each outbound route's mutual-TLS connection to its upstream.
//!
//! hyper-util's pooled client did this before, at the cost of a pool checkout (lock, key hash,
//! wrapper) and a boxed, much larger future per request. Here a request clones the open
//! connection's `SendRequest` under a short lock and sends on it. The connection is opened on
//! first use, by one request while the others wait for it; once it has closed, or has been idle
//! for longer than `max_idle` (so that a peer with the same idle timeout does not close it just as
//! a request is written), the next request opens a new one. A request the old connection could
//! not take (it closed meanwhile) is sent once more on a new connection.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioExecutor;

/// The shared connection.
#[derive(Debug)]
pub(crate) struct SharedH2 {
    current: Mutex<Option<Open>>,
    /// Held while connecting, so that waiting requests share one new connection.
    connecting: tokio::sync::Mutex<()>,
    builder: http2::Builder<TokioExecutor>,
    max_idle: Duration,
}

#[derive(Debug)]
struct Open {
    sender: http2::SendRequest<Incoming>,
    last_used: Instant,
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum H2Error<E> {
    /// Opening the connection failed (the dialer's error).
    Connect(E),
    /// The HTTP/2 handshake or the exchange failed.
    Http(hyper::Error),
}

// === impl SharedH2 ===

impl SharedH2 {
    /// `builder` configures each connection; one idle for longer than `max_idle` is replaced.
    pub(crate) fn new(builder: http2::Builder<TokioExecutor>, max_idle: Duration) -> Self {
        Self {
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            builder,
            max_idle,
        }
    }

    /// Sends `req` on the shared connection; `dial` opens the transport when a connection is
    /// needed.
    pub(crate) async fn send<D, F, I, E>(
        &self,
        mut req: Request<Incoming>,
        dial: D,
    ) -> Result<Response<Incoming>, H2Error<E>>
    where
        D: Fn() -> F,
        F: Future<Output = Result<I, E>>,
        I: Read + Write + Unpin + Send + 'static,
    {
        let mut retried = false;
        loop {
            let mut sender = self.sender(&dial).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        // The connection closed meanwhile; `open` no longer offers it.
                        tracing::debug!(error = %e.error(), "h2 connection closed before the request was sent; reconnecting");
                        retried = true;
                        req = unsent;
                    }
                    _ => return Err(H2Error::Http(e.into_error())),
                },
            }
        }
    }

    /// A handle to the open connection, connecting first when there is none.
    async fn sender<D, F, I, E>(&self, dial: &D) -> Result<http2::SendRequest<Incoming>, H2Error<E>>
    where
        D: Fn() -> F,
        F: Future<Output = Result<I, E>>,
        I: Read + Write + Unpin + Send + 'static,
    {
        match self.open() {
            Some(sender) => Ok(sender),
            // Boxed: connecting (a TLS handshake for an upstream) is a large future that the
            // common path should not carry in every request's own future.
            None => Box::pin(self.connect(dial)).await,
        }
    }

    async fn connect<D, F, I, E>(
        &self,
        dial: &D,
    ) -> Result<http2::SendRequest<Incoming>, H2Error<E>>
    where
        D: Fn() -> F,
        F: Future<Output = Result<I, E>>,
        I: Read + Write + Unpin + Send + 'static,
    {
        let _connecting = self.connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let io = dial().await.map_err(H2Error::Connect)?;
        let (sender, connection) = self.builder.handshake(io).await.map_err(H2Error::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "h2 client connection ended with an error");
            }
        });
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Open {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        Ok(sender)
    }

    /// The current connection's handle if it is open and was used within `max_idle`; marks it
    /// used. A stale one is dropped (it closes once its streams are done).
    fn open(&self) -> Option<http2::SendRequest<Incoming>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let open = current.as_mut()?;
        let now = Instant::now();
        if open.sender.is_closed() || now.duration_since(open.last_used) > self.max_idle {
            *current = None;
            return None;
        }
        open.last_used = now;
        Some(open.sender.clone())
    }
}
