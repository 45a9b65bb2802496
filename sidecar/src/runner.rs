//! Starting and running a sidecar: the admin listener first (so `/readyz` can say "not yet"),
//! the Workload API stream, and, once the first SVID has arrived, the inbound and outbound
//! listeners. Nothing accepts traffic before the sidecar holds an SVID.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use warden_identity::tls::BundleSource;
use warden_policy::{DEFAULT_POLL_INTERVAL, Engine, LoadError, Reload};

use crate::Error;
use crate::admin::{Admin, AdminState};
use crate::config::Config;
use crate::decision_log::DecisionLog;
use crate::identity_source::IdentitySource;
use crate::inbound::{Inbound, InboundInputs};
use crate::metrics::{Metrics, OutboundMetrics};
use crate::outbound::{Outbound, OutboundLimits};

/// The addresses a started sidecar listens on once it holds an SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bound {
    /// The inbound listener, if configured.
    pub inbound: Option<SocketAddr>,
    /// The outbound listeners, in configuration order.
    pub outbound: Vec<SocketAddr>,
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    admin_addr: SocketAddr,
    bound: watch::Receiver<Option<Bound>>,
    shutdown: watch::Sender<bool>,
    main: JoinHandle<Result<(), Error>>,
}

// === impl Sidecar ===

impl Sidecar {
    /// Validates what can be checked up front (policy directory, decision log, admin address),
    /// binds the admin listener and starts the sidecar in the background. Must run inside a
    /// tokio runtime.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let metrics = Arc::new(Metrics::new());
        let engine = match &config.inbound {
            Some(_) => {
                let metrics = Arc::clone(&metrics);
                let on_reload = move |r: &Result<Reload, LoadError>| match r {
                    Ok(Reload::Unchanged | Reload::Unsettled) => {}
                    Ok(Reload::Replaced { .. }) => metrics.policy_reload(true),
                    Err(_) => metrics.policy_reload(false),
                };
                Some(Arc::new(
                    Engine::watch_with(&config.policy.dir, DEFAULT_POLL_INTERVAL, on_reload)
                        .map_err(|e| Error::Policy(e.to_string()))?,
                ))
            }
            None => None,
        };
        let log = match &config.inbound {
            Some(_) => Some(
                DecisionLog::start(&config.decision_log, Arc::clone(&metrics))
                    .map_err(|e| Error::DecisionLog(e.to_string()))?,
            ),
            None => None,
        };
        let identity = Arc::new(IdentitySource::new(
            &config.workload_api_socket,
            config.spiffe_id.clone(),
        ));
        let admin_state = Arc::new(AdminState {
            metrics: Arc::clone(&metrics),
            identity: identity.subscribe(),
            listening: Default::default(),
        });
        let admin = Admin::new(config.admin_listen, Arc::clone(&admin_state)).await?;
        let admin_addr = admin.local_addr().map_err(|source| Error::Bind {
            what: "admin",
            addr: config.admin_listen,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(admin.run(signal(shutdown_rx.clone())));
        let (bound_tx, bound) = watch::channel(None);
        let main = tokio::spawn(main(MainInputs {
            config,
            metrics,
            engine,
            log,
            identity,
            admin_state,
            bound: bound_tx,
            shutdown: shutdown_rx,
        }));
        Ok(Self {
            admin_addr,
            bound,
            shutdown,
            main,
        })
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Waits until the listeners are bound (after the first SVID arrived). `None` if the
    /// sidecar stopped first.
    pub async fn bound(&self) -> Option<Bound> {
        let mut rx = self.bound.clone();
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|b| b.clone())
    }

    /// Stops accepting and returns once the sidecar has stopped.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the sidecar stops on its own (a fatal Workload API refusal or a listener
    /// failure) and returns why.
    pub async fn wait(self) -> Result<(), Error> {
        self.main
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }
}

/// Runs a sidecar until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let sidecar = Sidecar::start(config).await?;
    tracing::info!(admin = %sidecar.admin_addr(), "sidecar started; waiting for an svid");
    let stop = sidecar.shutdown.clone();
    tokio::pin!(shutdown);
    let main = sidecar.main;
    tokio::pin!(main);
    tokio::select! {
        () = &mut shutdown => {
            tracing::info!("shutting down");
            let _ = stop.send(true);
            main.await.map_err(|e| Error::Internal(e.to_string()))?
        }
        result = &mut main => result.map_err(|e| Error::Internal(e.to_string()))?,
    }
}

struct MainInputs {
    config: Config,
    metrics: Arc<Metrics>,
    engine: Option<Arc<Engine>>,
    log: Option<DecisionLog>,
    identity: Arc<IdentitySource>,
    admin_state: Arc<AdminState>,
    bound: watch::Sender<Option<Bound>>,
    shutdown: watch::Receiver<bool>,
}

async fn main(inputs: MainInputs) -> Result<(), Error> {
    let MainInputs {
        config,
        metrics,
        engine,
        log,
        identity,
        admin_state,
        bound,
        shutdown,
    } = inputs;
    let mut current = identity.subscribe();
    let resolver = identity.resolver();
    let bundles: Arc<dyn BundleSource> = identity.bundles();
    // Aborted however this function returns (an early `?` or a shutdown before the first
    // SVID included): a dropped handle would leave it reconnecting to the agent.
    let mut identity_task = AbortOnDrop(tokio::spawn(Arc::clone(&identity).run()));
    // Fail closed: no listener until the first SVID.
    tokio::select! {
        r = current.wait_for(Option::is_some) => { r.map_err(|e| Error::Internal(e.to_string()))?; }
        r = &mut identity_task.0 => return Err(identity_ended(r)),
        () = signal(shutdown.clone()) => return Ok(()),
    }
    let expiry_metrics = Arc::clone(&metrics);
    let mut expiry_rx = identity.subscribe();
    tokio::spawn(async move {
        loop {
            if let Some(c) = &*expiry_rx.borrow_and_update() {
                expiry_metrics.set_svid_not_after(c.not_after);
            }
            if expiry_rx.changed().await.is_err() {
                return;
            }
        }
    });

    let mut tasks = Vec::new();
    let mut addrs = Bound {
        inbound: None,
        outbound: Vec::new(),
    };
    if let (Some(inbound), Some(engine), Some(log)) = (&config.inbound, engine, log) {
        let listener = Inbound::new(InboundInputs {
            config: inbound.clone(),
            limits: config.limits,
            mode: config.policy.mode,
            engine,
            metrics: Arc::clone(&metrics),
            log,
            identity: identity.subscribe(),
            resolver: Arc::clone(&resolver),
            bundles: Arc::clone(&bundles),
        })
        .await?;
        addrs.inbound = listener.local_addr().ok();
        tasks.push(tokio::spawn(listener.run(signal(shutdown.clone()))));
    }
    let hooks = Arc::new(OutboundMetrics(Arc::clone(&metrics)));
    for route in &config.outbound {
        let listen = route.listen;
        let outbound = Outbound::new(
            route.clone(),
            Arc::clone(&resolver),
            Arc::clone(&bundles),
            hooks.clone(),
        )
        .map_err(|e| Error::Outbound(e.to_string()))?
        .with_limits(OutboundLimits {
            handshake_timeout: config.limits.handshake_timeout,
            idle_timeout: config.limits.idle_timeout,
            max_connections: config.limits.max_connections,
            max_header_bytes: config.limits.max_header_bytes,
            max_headers: config.limits.max_headers,
            ..OutboundLimits::default()
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                what: "outbound",
                addr: listen,
                source,
            })?;
        addrs.outbound.push(listener.local_addr().unwrap_or(listen));
        let stop = signal(shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = outbound.serve(listener, stop).await {
                tracing::error!(listen = %listen, error = %e, "outbound listener failed");
            }
        }));
    }
    admin_state.listening.store(true, Ordering::Release);
    tracing::info!(inbound = ?addrs.inbound, outbound = ?addrs.outbound, "listening");
    bound.send_replace(Some(addrs));

    tokio::select! {
        r = &mut identity_task.0 => {
            admin_state.listening.store(false, Ordering::Release);
            return Err(identity_ended(r));
        }
        () = signal(shutdown) => {}
    }
    drop(identity_task);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn identity_ended(
    r: Result<Result<(), crate::identity_source::FatalError>, tokio::task::JoinError>,
) -> Error {
    match r {
        Ok(Ok(())) => Error::WorkloadApi("the workload api stream ended".to_owned()),
        Ok(Err(e)) => Error::WorkloadApi(e.to_string()),
        Err(e) => Error::Internal(e.to_string()),
    }
}

/// Completes when `true` is sent (or the sender is gone).
async fn signal(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::AbortOnDrop;

    #[tokio::test]
    async fn a_dropped_abort_on_drop_stops_its_task() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ticks);
        let task = AbortOnDrop(tokio::spawn(async move {
            loop {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(task);
        tokio::task::yield_now().await;
        let after_drop = ticks.load(Ordering::SeqCst);
        assert!(after_drop > 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), after_drop);
    }
}
