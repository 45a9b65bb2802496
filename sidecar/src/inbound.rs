//! The inbound listener: accepts connections (up to `max_connections`, refusing beyond),
//! terminates mutual TLS with the sidecar's SVID (client SVIDs verified by SPIFFE rules; the
//! Cedar policy decides who may do what), and hands each connection to the HTTP proxy or the
//! TCP proxy. In permissive mode the first byte tells TLS (0x16) from plaintext.

mod forward;
mod h2;
mod handshake;
mod host;
mod http;
mod path;
mod record;
mod resumption;
mod revoke;
mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use warden_identity::SpiffeId;
use warden_identity::tls::BundleSource;
use warden_identity::tls::SvidCertResolver;
use warden_policy::Engine;

pub(crate) use record::DecisionIds;

use crate::config::{InboundConfig, Limits, Mode, Mtls, Protocol};
use crate::decision_log::DecisionLog;
use crate::identity_source::Current;
use crate::lapse::{self, BundleWatch, Credentials, LapseSignal};
use crate::metrics::{Direction, HandshakeFailure, Metrics};

/// How long open connections get to finish when the sidecar stops.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// At most one "connections refused" warning per this long.
const REFUSAL_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Everything a connection needs, shared by all of them.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: InboundConfig,
    pub(crate) limits: Limits,
    pub(crate) mode: Mode,
    pub(crate) engine: Arc<Engine>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) log: DecisionLog,
    pub(crate) ids: DecisionIds,
    pub(crate) identity: watch::Receiver<Option<Current>>,
    /// The trust bundles the TLS verifier uses (for [`lapse`]).
    pub(crate) bundles: Arc<dyn BundleSource>,
    pub(crate) app: forward::App,
    pub(crate) http: http::Server,
    pub(crate) h2: crate::h2_server::H2Server,
    /// Set when the sidecar stops: connections finish what is in flight and close.
    pub(crate) stop: watch::Sender<bool>,
    tls: Arc<rustls::ServerConfig>,
    /// Failed handshakes: anyone can connect, so one info line per interval (the first, with
    /// the count since the last), the rest at debug (the metric counts each).
    handshake_failures: std::sync::Mutex<Throttle>,
}

impl Shared {
    /// Notes a failed handshake; `Some(n)` when it is to be logged at info, with the `n`
    /// failures since the last such line.
    fn handshake_failure_report(&self) -> Option<u64> {
        let mut throttle = self
            .handshake_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        throttle.note(std::time::Instant::now())
    }
}

/// Traces one decision at debug level (target `decision`); `kind` is `request` or `connect`.
pub(crate) fn trace_decision(
    shared: &Shared,
    conn: &ConnInfo,
    decision_id: &str,
    decision: &warden_policy::Decision,
    kind: &'static str,
) {
    tracing::debug!(
        target: "decision",
        decision_id = %decision_id,
        src.addr = %conn.source,
        src.id = conn.peer.as_ref().map(|p| p.id.as_str()),
        decision = %decision.outcome(),
        policy.ids = ?decision.policy_ids(),
        dry_run = shared.mode == Mode::DryRun,
        kind,
        "decision"
    );
}

/// What is known about a connection once it is established.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The caller's address.
    pub(crate) source: SocketAddr,
    /// The same, formatted once for the decision log.
    pub(crate) source_text: String,
    /// The verified peer; `None` for a plaintext connection (permissive mode).
    pub(crate) peer: Option<Peer>,
    /// `TLSv1.3` / `TLSv1.2`; `None` for plaintext.
    pub(crate) tls_version: Option<&'static str>,
    /// Our own SPIFFE ID when the connection was accepted (XFCC `By`).
    pub(crate) own_id: Option<SpiffeId>,
}

/// A peer whose X.509-SVID the TLS verifier accepted.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: SpiffeId,
    /// SHA-256 of the peer's leaf certificate, lowercase hex (XFCC `Hash`).
    pub(crate) leaf_hash: String,
}

/// The bound inbound listener.
#[derive(Debug)]
pub(crate) struct Inbound {
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
}

/// Inputs to [`Inbound::new`].
#[derive(Debug)]
pub(crate) struct InboundInputs {
    pub(crate) config: InboundConfig,
    pub(crate) limits: Limits,
    pub(crate) mode: Mode,
    pub(crate) engine: Arc<Engine>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) log: DecisionLog,
    pub(crate) identity: watch::Receiver<Option<Current>>,
    pub(crate) resolver: Arc<SvidCertResolver>,
    pub(crate) bundles: Arc<dyn BundleSource>,
}

// === impl Inbound ===

impl Inbound {
    /// Builds the TLS config and the app client, and binds the listener.
    pub(crate) async fn new(inputs: InboundInputs) -> Result<Self, crate::Error> {
        let tls = handshake::server_config(
            inputs.resolver,
            Arc::clone(&inputs.bundles),
            inputs.config.tls12,
            inputs.config.protocol,
            inputs
                .config
                .session_resumption
                .map(|lifetime| (lifetime, inputs.limits.handshake_timeout)),
        )
        .map_err(|e| crate::Error::Tls(e.to_string()))?;
        let listener = TcpListener::bind(inputs.config.listen)
            .await
            .map_err(|source| crate::Error::Bind {
                what: "inbound",
                addr: inputs.config.listen,
                source,
            })?;
        let app = forward::App::new(
            inputs.config.app,
            inputs.config.app_protocol,
            inputs.limits.idle_timeout,
            inputs.limits.max_connections,
            Arc::clone(&inputs.metrics),
        );
        let http = http::Server::new(&inputs.limits);
        // No keep-alive pings: they would count as traffic and defeat the idle timeout. A
        // caller's own pings do too, so a connection is also closed after the idle timeout
        // without an open stream.
        let h2 = crate::h2_server::H2Server::new(
            inputs.limits.max_header_bytes,
            http::MAX_CONCURRENT_STREAMS,
            None,
            inputs.limits.idle_timeout,
        );
        let slots = Arc::new(Semaphore::new(inputs.limits.max_connections));
        let shared = Shared {
            config: inputs.config,
            limits: inputs.limits,
            mode: inputs.mode,
            engine: inputs.engine,
            metrics: inputs.metrics,
            log: inputs.log,
            ids: DecisionIds::new(),
            identity: inputs.identity,
            bundles: inputs.bundles,
            app,
            http,
            h2,
            stop: watch::channel(false).0,
            tls: Arc::new(tls),
            handshake_failures: std::sync::Mutex::new(Throttle::new(REFUSAL_WARNING_EVERY)),
        };
        Ok(Self {
            listener,
            shared: Arc::new(shared),
            slots,
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` completes, then asks every open connection to
    /// finish and close, and waits for them (at most [`DRAIN_TIMEOUT`]).
    #[tracing::instrument(name = "inbound", skip_all, fields(listen = ?self.listener.local_addr().ok()))]
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut refusals = Throttle::new(REFUSAL_WARNING_EVERY);
        loop {
            let (stream, source) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                self.shared.metrics.connection_refused();
                // Anyone can connect: one warning per interval, with the count, not one per
                // connection (the metric counts each).
                if let Some(refused) = refusals.note(std::time::Instant::now()) {
                    tracing::warn!(src.addr = %source, refused, "connections refused: max_connections reached");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                serve_connection(shared, stream, source).await;
                drop(permit);
            });
        }
        drop(self.listener);
        self.shared.stop.send_replace(true);
        let all = u32::try_from(self.shared.limits.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(DRAIN_TIMEOUT, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain timeout; closing them");
        }
    }
}

/// The caller's address as policies and logs see it: an IPv4 caller of a dual-stack (`[::]`)
/// listener arrives as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), which Cedar's `ip()`
/// refuses (every request would be denied); it is its IPv4 address.
pub(crate) fn caller_address(source: SocketAddr) -> SocketAddr {
    SocketAddr::new(source.ip().to_canonical(), source.port())
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, source: SocketAddr) {
    let source = caller_address(source);
    let own_id = shared
        .identity
        .borrow()
        .as_ref()
        .map(|c| c.spiffe_id.clone());
    if shared.config.mtls == Mtls::Permissive {
        let mut first = [0u8; 1];
        let peeked =
            tokio::time::timeout(shared.limits.handshake_timeout, stream.peek(&mut first)).await;
        match peeked {
            Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD => {
                let info = ConnInfo {
                    source,
                    source_text: source.to_string(),
                    peer: None,
                    tls_version: None,
                    own_id,
                };
                // h2c by prior knowledge goes to the same HTTP/2 server as ALPN `h2`; a TCP
                // service's bytes are not looked at.
                let sniffed = match shared.config.protocol {
                    Protocol::Tcp => Ok(Ok(false)),
                    Protocol::Http => {
                        tokio::time::timeout(
                            shared.limits.handshake_timeout,
                            crate::sniff::is_h2c(&stream),
                        )
                        .await
                    }
                };
                let h2 = match sniffed {
                    Ok(Ok(h2)) => h2,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        shared.metrics.handshake_failed(
                            Direction::Inbound,
                            HandshakeFailure::Timeout.as_str(),
                        );
                        return;
                    }
                };
                let watch = BundleWatch::now(&shared.identity, &shared.bundles);
                return serve_io(&shared, stream, info, h2, None, watch).await;
            }
            Ok(Ok(1)) => {}
            Ok(_) => return,
            Err(_) => {
                shared
                    .metrics
                    .handshake_failed(Direction::Inbound, HandshakeFailure::Timeout.as_str());
                return;
            }
        }
    }
    let started = Instant::now();
    // Before the handshake: a bundle change while it runs is then checked against the caller.
    let watch = BundleWatch::now(&shared.identity, &shared.bundles);
    let accepted = tokio::time::timeout(
        shared.limits.handshake_timeout,
        tokio_rustls::TlsAcceptor::from(Arc::clone(&shared.tls)).accept(stream),
    )
    .await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake::classify(&e);
            shared
                .metrics
                .handshake_failed(Direction::Inbound, reason.as_str());
            match shared.handshake_failure_report() {
                Some(failed) => {
                    tracing::info!(src.addr = %source, reason = reason.as_str(), error = %e, failed, "tls handshake failed")
                }
                None => {
                    tracing::debug!(src.addr = %source, reason = reason.as_str(), error = %e, "tls handshake failed")
                }
            }
            return;
        }
        Err(_) => {
            shared
                .metrics
                .handshake_failed(Direction::Inbound, HandshakeFailure::Timeout.as_str());
            match shared.handshake_failure_report() {
                Some(failed) => {
                    tracing::info!(src.addr = %source, failed, "tls handshake timed out")
                }
                None => tracing::debug!(src.addr = %source, "tls handshake timed out"),
            }
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let Some(peer) = handshake::peer(session) else {
        // Unreachable with a verifier that requires a client SVID; refuse rather than assume.
        shared
            .metrics
            .handshake_failed(Direction::Inbound, HandshakeFailure::Other.as_str());
        return;
    };
    let Some(credentials) = handshake::credentials(session) else {
        shared
            .metrics
            .handshake_failed(Direction::Inbound, HandshakeFailure::Other.as_str());
        return;
    };
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    // A full handshake verified the chain's validity just now; a resumed one restored a chain
    // verified up to `session_resumption` ago, which may have expired since.
    if credentials.expired() {
        shared
            .metrics
            .handshake_failed(Direction::Inbound, HandshakeFailure::Expired.as_str());
        tracing::info!(src.addr = %source, resumed, "tls session refused: the caller's certificate has expired");
        return;
    }
    shared.metrics.handshake_done(resumed);
    let info = ConnInfo {
        source,
        source_text: source.to_string(),
        peer: Some(peer),
        tls_version: handshake::version(session),
        own_id,
    };
    tracing::debug!(src.addr = %source, took = ?started.elapsed(), "tls established");
    serve_io(&shared, tls, info, h2, Some(credentials), watch).await;
}

/// Serves an established connection; `h2`: the caller chose HTTP/2 (ALPN `h2`, or the h2c
/// preface on a plaintext connection).
///
/// Not an `async fn`: the connection's task is as large as the largest future it awaits, for as
/// long as it lives, so what serving takes goes on the heap once, sized for the protocol the
/// connection speaks. Awaited in place (`-Zprint-type-sizes`), they made every connection's task
/// 13.1 KB: the HTTP/2 server's state (9.1 KB) paid by HTTP/1.1 and TCP connections too (HTTP/1.1
/// serving needs 3.9 KB), beside room for the TLS handshake's (1.3 KB).
///
/// When the caller's credentials lapse ([`lapse`]), an HTTP connection takes no new request
/// (HTTP/1.1: closes after the one in flight; HTTP/2: GOAWAY, and a stream opened after it gets
/// 503) and is dropped if what it has in flight is not done one idle timeout later; a TCP
/// connection or an upgraded one is closed.
fn serve_io<'a, I>(
    shared: &'a Arc<Shared>,
    io: I,
    info: ConnInfo,
    h2: bool,
    credentials: Option<Credentials>,
    watch: BundleWatch,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (io, activity) = crate::idle::IdleIo::new(io);
    let grace = shared.limits.idle_timeout;
    let idle = activity.expired(shared.limits.idle_timeout);
    let signal = Arc::new(LapseSignal::default());
    let dropped = {
        let signal = Arc::clone(&signal);
        async move {
            signal.wait().await;
            tokio::time::sleep(grace).await;
        }
    };
    let idle = async move {
        tokio::select! {
            () = idle => {}
            () = dropped => tracing::debug!("caller's credentials lapsed; closing"),
        }
    };
    let lapsed = lapse::lapsed(credentials, watch, Arc::clone(&signal));
    match shared.config.protocol {
        Protocol::Http if h2 => Box::pin(h2::serve(
            Arc::clone(shared),
            io,
            info,
            idle,
            lapsed,
            signal,
        )),
        Protocol::Http => Box::pin(http::serve(Arc::clone(shared), io, info, idle, lapsed)),
        Protocol::Tcp => Box::pin(tcp::serve(shared, io, info, idle, lapsed)),
    }
}

/// Counts events and says when to report them: the first at once, then at most once per
/// `every`, with how many happened since the last report.
#[derive(Debug)]
struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    count: u64,
}

impl Throttle {
    fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: None,
            count: 0,
        }
    }

    /// Notes one event at `now`; `Some(n)` when it is time to report the `n` since the last.
    fn note(&mut self, now: std::time::Instant) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Throttle;

    #[test]
    fn throttle_reports_the_first_event_then_once_per_interval_with_the_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.note(start), Some(1));
        for ms in 1..=500 {
            assert_eq!(t.note(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.note(start + Duration::from_secs(10)), Some(501));
        assert_eq!(t.note(start + Duration::from_secs(11)), None);
        assert_eq!(t.note(start + Duration::from_secs(25)), Some(2));
    }
}
