//! `warden ca init|serve`: create and run the certificate authority.

use std::path::PathBuf;
use std::time::Duration;

use warden_ca::authority::{InitOptions, KeyType, init_ca};
use warden_ca::config::RawConfig;
use warden_identity::TrustDomain;

use super::Exit;

/// CA commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CaCommand {
    /// Create the CA: root key and certificate (or adopt an upstream CA), data dir, datastore.
    ///
    /// Key files are written with mode 0600 and the data dir with 0700. An existing CA is
    /// never overwritten unless `--force` is given.
    Init(InitArgs),
    /// Run the CA: agent API (gRPC over TLS 1.3), HTTP (/healthz /readyz /metrics /bundle),
    /// rotation of intermediates and JWT keys. Runs in the foreground until SIGINT/SIGTERM.
    ///
    /// Every flag may also be set in the TOML `--config` file under the same name in
    /// snake_case (`data_dir`, `listen`, `http_listen`, `bundle_endpoint_listen`,
    /// `bundle_endpoint_cert_file`, `bundle_endpoint_key_file`, `admin_socket`, `datastore`,
    /// `ca_ttl`, `svid_ttl`, `jwt_ttl`, `agent_ttl`, `node_ca` as a list, `[[federation]]`
    /// tables); flags override the file.
    Serve(ServeArgs),
}

/// `warden ca init` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The trust domain, e.g. `example.org`.
    #[arg(long)]
    trust_domain: String,
    /// Where the CA keeps its keys and (by default) its datastore.
    #[arg(long)]
    data_dir: PathBuf,
    /// Upstream CA certificate (PEM): sign intermediates with it; it becomes the trust anchor.
    #[arg(long, requires = "upstream_key")]
    upstream_cert: Option<PathBuf>,
    /// Upstream CA private key (PKCS#8 PEM).
    #[arg(long, requires = "upstream_cert")]
    upstream_key: Option<PathBuf>,
    /// Root key type: `ec-p256` or `ec-p384`.
    #[arg(long, default_value = "ec-p256")]
    key_type: String,
    /// Root certificate lifetime.
    #[arg(long, default_value = "8760h")]
    root_ttl: String,
    /// Datastore URL (`postgres://...`) or SQLite path [default: DATA_DIR/datastore.sqlite3].
    #[arg(long)]
    datastore: Option<String>,
    /// Replace an existing CA (its intermediates are retired; agents must re-attest).
    #[arg(long)]
    force: bool,
}

/// `warden ca serve` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML config file; flags override its values.
    #[arg(long, env = "WARDEN_CA_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration (and that the CA can be loaded from the data dir), then exit.
    #[arg(long)]
    check_config: bool,
    /// CA data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Agent API address [default: 127.0.0.1:8081].
    #[arg(long)]
    listen: Option<String>,
    /// HTTP address [default: 127.0.0.1:8082].
    #[arg(long)]
    http_listen: Option<String>,
    /// Serve the SPIFFE bundle endpoint (`https_spiffe` profile: `GET /` over HTTPS, the CA's
    /// own SVID `spiffe://<td>/warden/ca` as server certificate, no client certificate) on
    /// this address, for federating trust domains [default: not served].
    #[arg(long)]
    bundle_endpoint_listen: Option<String>,
    /// Serve the bundle endpoint with this PEM certificate chain instead of the CA's SVID
    /// (`https_web` profile: a WebPKI certificate for the endpoint's host name, as an ACME client
    /// renews it; peers then need no SPIFFE ID or first bundle); re-read every minute when it
    /// changed. With --bundle-endpoint-key-file.
    #[arg(long)]
    bundle_endpoint_cert_file: Option<PathBuf>,
    /// The PEM private key of --bundle-endpoint-cert-file; it must be readable by its owner only
    /// (0600), and owned by the CA's user or root.
    #[arg(long)]
    bundle_endpoint_key_file: Option<PathBuf>,
    /// Admin API socket [default: DATA_DIR/admin.sock].
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Datastore URL or SQLite path [default: DATA_DIR/datastore.sqlite3].
    #[arg(long)]
    datastore: Option<String>,
    /// Intermediate CA and JWT key lifetime [default: 24h].
    #[arg(long)]
    ca_ttl: Option<String>,
    /// Default X.509-SVID lifetime [default: 1h].
    #[arg(long)]
    svid_ttl: Option<String>,
    /// Default JWT-SVID lifetime [default: 5m].
    #[arg(long)]
    jwt_ttl: Option<String>,
    /// Agent SVID lifetime [default: 1h].
    #[arg(long)]
    agent_ttl: Option<String>,
    /// PEM file of x509pop node CA certificates (repeatable).
    #[arg(long)]
    node_ca: Vec<PathBuf>,
    /// A federated trust domain whose bundle the CA keeps fresh from its SPIFFE bundle endpoint,
    /// as a TOML inline table, repeatable: `{ trust_domain = "partner.org", url =
    /// "https://ca.partner.org:8443/", endpoint_spiffe_id = "spiffe://partner.org/warden/ca" }`
    /// (profile `https_spiffe`: the first bundle of the endpoint's trust domain is set out of
    /// band, `warden bundle set`, then every fetch is checked against the last), or `{
    /// trust_domain = "other.example", url = "https://spiffe.other.example/", profile =
    /// "https_web" }` (a WebPKI certificate, checked against the system's root certificates, or
    /// only those SSL_CERT_FILE names when set). Fetched again after the bundle's refresh hint (30 s to 1 h; 5 m without).
    #[arg(long, value_name = "TABLE")]
    federation: Vec<String>,
}

pub(crate) fn run(cmd: CaCommand) -> anyhow::Result<Exit> {
    super::init_tracing();
    match cmd {
        CaCommand::Init(args) => init(args),
        CaCommand::Serve(args) => serve(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<Exit> {
    let trust_domain: TrustDomain = match args.trust_domain.parse() {
        Ok(td) => td,
        Err(e) => {
            eprintln!("error: invalid trust domain `{}`: {e}", args.trust_domain);
            return Ok(Exit::Invalid);
        }
    };
    let key_type: KeyType = match args.key_type.parse() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::Invalid);
        }
    };
    let root_ttl: Duration = match humantime::parse_duration(&args.root_ttl) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: invalid --root-ttl `{}`: {e}", args.root_ttl);
            return Ok(Exit::Invalid);
        }
    };
    let opts = InitOptions {
        trust_domain,
        data_dir: args.data_dir,
        datastore: args.datastore,
        upstream: args.upstream_cert.zip(args.upstream_key),
        key_type,
        root_ttl,
        force: args.force,
    };
    let report = super::runtime()?.block_on(init_ca(&opts))?;
    outln!(
        "ca initialised for `{}`\n  trust anchor: {} (serial {}{})\n  datastore: {}",
        opts.trust_domain,
        report.root_cert_path.display(),
        report.root_serial,
        if report.upstream { ", upstream" } else { "" },
        report.datastore
    );
    Ok(Exit::Ok)
}

fn serve(args: ServeArgs) -> anyhow::Result<Exit> {
    crate::fd_limit::raise_for(0, "the CA");
    let flags = RawConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        http_listen: args.http_listen,
        bundle_endpoint_listen: args.bundle_endpoint_listen,
        bundle_endpoint_cert_file: args.bundle_endpoint_cert_file,
        bundle_endpoint_key_file: args.bundle_endpoint_key_file,
        admin_socket: args.admin_socket,
        datastore: args.datastore,
        ca_ttl: args.ca_ttl,
        svid_ttl: args.svid_ttl,
        jwt_ttl: args.jwt_ttl,
        agent_ttl: args.agent_ttl,
        node_ca: (!args.node_ca.is_empty()).then_some(args.node_ca),
        federation: None,
    };
    let mut flags = flags;
    if !args.federation.is_empty() {
        let mut federation = Vec::new();
        for table in &args.federation {
            #[derive(serde::Deserialize)]
            struct Wrapper {
                federation: warden_ca::federation::RawRelationship,
            }
            match toml::from_str::<Wrapper>(&format!("federation = {table}")) {
                Ok(w) => federation.push(w.federation),
                Err(e) => {
                    let reason = e.message().to_owned();
                    eprintln!("error: invalid --federation `{table}`: {reason}");
                    return Ok(Exit::Invalid);
                }
            }
        }
        flags.federation = Some(federation);
    }
    let config = match warden_ca::config::load(args.config.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::Invalid);
        }
    };
    if let Err(e) = warden_ca::server::check(&config) {
        eprintln!("error: {e}");
        return Ok(Exit::Invalid);
    }
    if args.check_config {
        outln!("configuration ok");
        return Ok(Exit::Ok);
    }
    super::runtime()?.block_on(async {
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
        warden_ca::server::run(&config, shutdown).await
    })?;
    Ok(Exit::Ok)
}
