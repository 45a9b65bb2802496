//! `warden sidecar run`: the enforcing mTLS sidecar (see `sidecar/README.md` for every key).

use std::path::PathBuf;

use warden_sidecar::{AppProtocol, Config, Mode, Mtls, Overrides, ProcessEnv, Protocol};

use super::Exit;

/// Sidecar commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SidecarCommand {
    /// Run the sidecar: mutual TLS in front of the local app, every request decided by the
    /// Cedar policies, and mutual TLS for the app's outbound calls.
    ///
    /// Settings come from a TOML file (`--config`, reference: sidecar/README.md); every key is
    /// also a flag, and flags override the file. The sidecar binds no traffic listener until
    /// it holds an SVID from the Workload API; `/readyz` on the admin listener says when.
    Run(Box<RunArgs>),
}

/// `warden sidecar run` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// TOML config file (`sidecar.toml`); flags override its values.
    #[arg(long, env = "WARDEN_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Parse and validate the config and the policy directory, print a one-line summary and
    /// exit (0 valid, 3 invalid).
    #[arg(long)]
    check_config: bool,
    /// Workload API socket, a path or `unix:///path` [default: $SPIFFE_ENDPOINT_SOCKET].
    #[arg(long)]
    workload_api_socket: Option<String>,
    /// Which SPIFFE ID to present when the Workload API returns several [default: the first].
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Tokio worker threads, 0 = one per core [default: 0].
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Inbound mTLS listener, `ip:port` [default: 0.0.0.0:15443].
    #[arg(long)]
    inbound_listen: Option<String>,
    /// The local app, `ip:port` (loopback unless --allow-remote-app).
    #[arg(long)]
    app: Option<String>,
    /// Allow a non-loopback app address [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    allow_remote_app: Option<bool>,
    /// Inbound protocol: `http` (HTTP/1.1, HTTP/2, gRPC) or `tcp` (one `connect` decision per
    /// connection) [default: http].
    #[arg(long)]
    protocol: Option<Protocol>,
    /// How HTTP reaches the app: `auto` (HTTP/2 and gRPC as h2c, HTTP/1.1 as HTTP/1.1) or
    /// `http1` (everything as HTTP/1.1, for apps without HTTP/2) [default: auto].
    #[arg(long)]
    app_protocol: Option<AppProtocol>,
    /// The service name: Cedar resource `Mesh::Service::"<service>"`.
    #[arg(long)]
    service: Option<String>,
    /// `strict` (mTLS only) or `permissive` (plaintext too, as `Mesh::Unauthenticated`)
    /// [default: strict].
    #[arg(long)]
    mtls: Option<Mtls>,
    /// Accept TLS 1.2 as well as 1.3 [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tls12: Option<bool>,
    /// How long a TLS 1.3 session ticket is honoured (a caller that reconnects with one skips
    /// the certificate exchange): a duration of 1s to 6h, or `off`. No session is resumed
    /// once the X.509 authorities change or the caller's certificate expires. Needs
    /// `--tls12` off [default: 5m; off with --tls12].
    #[arg(long)]
    session_resumption: Option<String>,
    /// Cedar policy directory (with mesh.cedarschema), hot-reloaded [default: policies].
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// `enforce` or `dry-run` (decide and log, but forward everything) [default: enforce].
    #[arg(long)]
    mode: Option<Mode>,
    /// An outbound route as a TOML inline table, repeatable:
    /// `{ listen = "127.0.0.1:15001", upstream = "10.0.0.2:15443", expected_ids = ["spiffe://example.org/api"], protocol = "http", response_timeout = "30s" }`
    /// (`protocol`: `http` or `tcp`; `response_timeout`, `http` only, optional: how long the upstream may
    /// take to begin its response, else 504; `http1_upstream`, `http` only: `http1` (default) or
    /// `h2`, local HTTP/1.x requests carried over the route's shared HTTP/2 connection, for
    /// upstreams that are Warden inbound sidecars).
    #[arg(long, value_name = "TABLE")]
    outbound: Vec<String>,
    /// Admin listener for /healthz, /readyz, /metrics [default: 127.0.0.1:15090].
    #[arg(long)]
    admin_listen: Option<String>,
    /// Decision log: `-` for stdout, else a file (mode 0600) [default: -].
    #[arg(long)]
    decision_log: Option<String>,
    /// Rotate the decision log file at this size [default: 104857600].
    #[arg(long)]
    decision_log_max_bytes: Option<u64>,
    /// Rotated decision log files kept [default: 5].
    #[arg(long)]
    decision_log_keep: Option<u32>,
    /// TLS handshake timeout, also the time allowed to send a request's headers [default: 10s].
    #[arg(long)]
    handshake_timeout: Option<String>,
    /// Close a connection after this long without traffic [default: 60s].
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Most concurrent inbound connections; more are refused [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest request header section, bytes (min 8192) [default: 65536].
    #[arg(long)]
    max_header_bytes: Option<usize>,
    /// Most request headers [default: 100].
    #[arg(long)]
    max_headers: Option<usize>,
}

pub(crate) fn run(cmd: SidecarCommand) -> anyhow::Result<Exit> {
    match cmd {
        SidecarCommand::Run(args) => run_sidecar(*args),
    }
}

fn run_sidecar(args: RunArgs) -> anyhow::Result<Exit> {
    let mut overrides = Overrides::default();
    overrides.workload_api_socket = args.workload_api_socket;
    overrides.spiffe_id = args.spiffe_id;
    overrides.worker_threads = args.worker_threads;
    overrides.inbound_listen = args.inbound_listen;
    overrides.app = args.app;
    overrides.allow_remote_app = args.allow_remote_app;
    overrides.protocol = args.protocol;
    overrides.app_protocol = args.app_protocol;
    overrides.service = args.service;
    overrides.mtls = args.mtls;
    overrides.tls12 = args.tls12;
    overrides.session_resumption = args.session_resumption;
    overrides.policy_dir = args.policy_dir;
    overrides.mode = args.mode;
    overrides.outbound = args.outbound;
    overrides.admin_listen = args.admin_listen;
    overrides.decision_log = args.decision_log;
    overrides.decision_log_max_bytes = args.decision_log_max_bytes;
    overrides.decision_log_keep = args.decision_log_keep;
    overrides.handshake_timeout = args.handshake_timeout;
    overrides.idle_timeout = args.idle_timeout;
    overrides.max_connections = args.max_connections;
    overrides.max_header_bytes = args.max_header_bytes;
    overrides.max_headers = args.max_headers;
    let config = match Config::load(args.config.as_deref(), &overrides, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::Invalid);
        }
    };
    if args.check_config {
        let policy = match config.policy_dir() {
            Some(dir) => match warden_policy::PolicySet::load(dir) {
                Ok(set) => format!(
                    "; {} policies, version {}",
                    set.policies().len(),
                    set.version()
                ),
                Err(e) => {
                    eprintln!("error: policy directory `{}`: {e}", dir.display());
                    return Ok(Exit::Invalid);
                }
            },
            None => String::new(),
        };
        outln!("config ok: {}{policy}", config.summary());
        for warning in config.warnings() {
            eprintln!("warning: {warning}");
        }
        return Ok(Exit::Ok);
    }
    super::init_tracing();
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // Each inbound connection may hold an app connection beside it, and each outbound route's
    // local connections an upstream one; HTTP/2 streams carried as HTTP/1.1 to the app hold up
    // to `max_connections` app connections more; 256 more for the idle app connections, the
    // admin listener, the decision log and the Workload API.
    let max_connections = config.max_connections() as u64;
    let listeners = 1 + config.outbound_routes() as u64;
    crate::fd_limit::raise_for(
        max_connections
            .saturating_mul(2)
            .saturating_mul(listeners)
            .saturating_add(max_connections)
            .saturating_add(256),
        &format!(
            "limits.max_connections = {max_connections} on {listeners} listener(s), two \
             descriptors per connection and one per HTTP/2 stream to an HTTP/1.1 app,"
        ),
    );
    // One worker: a current-thread runtime (no work-stealing, no cross-thread wake-ups).
    let mut builder = match config.worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    if config.worker_threads() > 1 {
        builder.worker_threads(config.worker_threads());
    }
    let rt = builder.build()?;
    // Freed heap memory back to the kernel every few seconds, code run only to start every minute
    // (src/memory.rs); ends with `rt`.
    rt.spawn(crate::memory::release_periodically(
        crate::memory::RELEASE_INTERVAL,
        crate::memory::release_unused_memory,
    ));
    tracing::info!(config = %config.summary(), "starting sidecar");
    let result = rt.block_on(warden_sidecar::run(config, shutdown_signal()));
    match result {
        Ok(()) => Ok(Exit::Ok),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(Exit::Error)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
