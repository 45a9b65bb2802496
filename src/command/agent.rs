//! `warden agent run|healthcheck`: the node agent.

use std::path::PathBuf;

use super::Exit;

/// Node agent commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AgentCommand {
    /// Attest this node to the CA and serve the SPIFFE Workload API.
    ///
    /// Every setting may also come from a TOML file (`--config`), with the same names in
    /// snake_case (`server`, `trust_bundle`, `join_token`, `x509pop_cert`, `x509pop_key`,
    /// `socket`, `data_dir`, `http_listen`, `sync_interval`); flags override the file.
    /// The agent stores its SVID and key in the data dir (key mode 0600) and reuses them after a
    /// restart while they are valid, so a join token is needed only the first time.
    Run(Box<RunArgs>),
    /// Exit 0 if the agent at `--http-listen` is ready (attested, cache filled), else 1.
    Healthcheck {
        /// The agent's health listener.
        #[arg(long, default_value = warden_node_agent::config::DEFAULT_HTTP_LISTEN, env = "WARDEN_AGENT_HTTP_LISTEN")]
        http_listen: String,
    },
}

/// `warden agent run` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// TOML config file; flags override its values.
    #[arg(long, env = "WARDEN_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration (file and flags), print a one-line summary, then exit.
    #[arg(long)]
    check_config: bool,
    /// The CA's agent API, `HOST:PORT`.
    #[arg(long)]
    server: Option<String>,
    /// PEM file with the trust domain's root certificate(s).
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// Single-use join token (needed only for the first attestation).
    #[arg(long, env = "WARDEN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// x509pop: this node's certificate chain (PEM).
    #[arg(long)]
    x509pop_cert: Option<PathBuf>,
    /// x509pop: this node's private key (PKCS#8 PEM, ECDSA P-256).
    #[arg(long)]
    x509pop_key: Option<PathBuf>,
    /// Workload API socket [default: DATA_DIR/agent.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Data directory for the agent SVID, key and bundle.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Health and metrics listener (`/healthz`, `/readyz`, `/metrics`) [default: 127.0.0.1:8088].
    #[arg(long)]
    http_listen: Option<String>,
    /// How often to sync with the CA [default: 5s].
    #[arg(long)]
    sync_interval: Option<String>,
}

pub(crate) fn run(cmd: AgentCommand) -> anyhow::Result<Exit> {
    match cmd {
        AgentCommand::Run(args) => run_agent(*args),
        AgentCommand::Healthcheck { http_listen } => {
            let ready =
                super::runtime()?.block_on(warden_node_agent::client::healthcheck(&http_listen))?;
            if ready {
                outln!("ready");
                Ok(Exit::Ok)
            } else {
                outln!("not ready");
                Ok(Exit::Error)
            }
        }
    }
}

fn run_agent(args: RunArgs) -> anyhow::Result<Exit> {
    use warden_node_agent::{Config, RawConfig};
    super::init_tracing();
    crate::fd_limit::raise_for(0, "the agent");
    let file = match &args.config {
        Some(path) => match RawConfig::from_file(path) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Exit::Invalid);
            }
        },
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        server: args.server,
        trust_bundle: args.trust_bundle,
        join_token: args.join_token,
        x509pop_cert: args.x509pop_cert,
        x509pop_key: args.x509pop_key,
        socket: args.socket,
        data_dir: args.data_dir,
        http_listen: args.http_listen,
        sync_interval: args.sync_interval,
    };
    let config = match Config::try_from(file.merge(flags)).and_then(|c| c.check_files().map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::Invalid);
        }
    };
    if args.check_config {
        let attestation = match &config.attestation {
            Some(warden_node_agent::config::NodeAttestation::JoinToken(_)) => "join token",
            Some(warden_node_agent::config::NodeAttestation::X509Pop { .. }) => "x509pop",
            None => "stored agent svid",
        };
        outln!(
            "configuration ok: ca `{}`, attestation by {attestation}, workload api `{}`",
            config.server,
            config.socket.display()
        );
        return Ok(Exit::Ok);
    }
    tracing::info!(config = ?config, "starting agent");
    let rt = super::runtime()?;
    rt.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        warden_node_agent::run(config, shutdown).await
    })?;
    Ok(Exit::Ok)
}
