//! `warden bundle fetch`: a federated trust domain's bundle read from its SPIFFE bundle
//! endpoint and set in the CA, as `bundle set` would set it from a file. An `https_spiffe`
//! endpoint is authenticated with the bundle already held for its SPIFFE ID's trust domain
//! (SPIRE's model: set the first one out of band), or with `--trust-bundle`; an `https_web`
//! one by its WebPKI certificate, against the system's root certificates.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tonic::transport::Channel;
use warden_api::v1;
use warden_api::v1::admin_api_client::AdminApiClient;
use warden_identity::{Bundle, SpiffeId, TrustDomain};

use super::client::{Conn, connect, rpc};
use super::output::{bundle_from_proto, print_bundles};

/// `warden bundle fetch` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct FetchArgs {
    /// The federated trust domain whose bundle the endpoint serves.
    #[arg(long)]
    trust_domain: String,
    /// The endpoint, `https://host[:port][/path]`.
    #[arg(long)]
    url: String,
    /// How the endpoint authenticates itself: `https_spiffe`, an X.509-SVID for
    /// `--endpoint-spiffe-id`; or `https_web`, a WebPKI certificate for the URL's host,
    /// verified against the system's root certificates (only those `SSL_CERT_FILE` or
    /// `SSL_CERT_DIR` name, when set).
    #[arg(long, default_value = "https_spiffe", value_parser = ["https_spiffe", "https_web"])]
    profile: String,
    /// The SPIFFE ID the endpoint's server certificate must carry (`https_spiffe`):
    /// `spiffe://<td>/warden/ca` for a Warden CA's `--bundle-endpoint-listen`,
    /// `spiffe://<td>/spire/server` for SPIRE's.
    #[arg(long)]
    endpoint_spiffe_id: Option<String>,
    /// A PEM or SPIFFE bundle (JWKS) file of the endpoint SPIFFE ID's trust domain, to
    /// authenticate an `https_spiffe` endpoint the first time [default: the bundle the CA
    /// holds for it].
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

pub(crate) async fn run(args: FetchArgs) -> anyhow::Result<()> {
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("invalid --trust-domain `{}`", args.trust_domain))?;
    warden_ca::bundle_endpoint::check_url(&args.url)?;
    let web = args.profile == "https_web";
    let endpoint_id = match (web, &args.endpoint_spiffe_id) {
        (false, Some(id)) => {
            let id: SpiffeId = id
                .parse()
                .with_context(|| format!("invalid --endpoint-spiffe-id `{id}`"))?;
            warden_ca::bundle_endpoint::check_endpoint_id(&id)?;
            Some(id)
        }
        (false, None) => anyhow::bail!(
            "--endpoint-spiffe-id is missing: the https_spiffe profile needs the spiffe id the \
             endpoint presents (or give --profile https_web)"
        ),
        (true, Some(_)) => anyhow::bail!(
            "--endpoint-spiffe-id is for --profile https_spiffe: an https_web endpoint presents a \
             webpki certificate for the url's host"
        ),
        (true, None) if args.trust_bundle.is_some() => anyhow::bail!(
            "--trust-bundle is for --profile https_spiffe: an https_web endpoint is verified \
             against the system's root certificates (SSL_CERT_FILE names others)"
        ),
        (true, None) => None,
    };
    // Before connecting to the CA: a machine with no roots fails naming that.
    let web_roots = match endpoint_id {
        None => Some(warden_ca::bundle_endpoint::WebRoots::system().map_err(anyhow::Error::msg)?),
        Some(_) => None,
    };
    let mut client = connect(&args.conn).await?;
    let (fetched, document) = match (endpoint_id, web_roots) {
        (Some(endpoint_id), _) => {
            let trust = trust_for(&mut client, &endpoint_id, args.trust_bundle.as_deref()).await?;
            warden_ca::bundle_endpoint::fetch(&args.url, &endpoint_id, trust, &trust_domain).await?
        }
        (None, Some(roots)) => {
            warden_ca::bundle_endpoint::fetch_web(&args.url, &roots, &trust_domain).await?
        }
        (None, None) => anyhow::bail!("no root certificates to authenticate the endpoint with"),
    };
    // Run from a timer, most fetches find the bundle held: it is not set (and audited) again.
    let held = match client
        .get_bundle(v1::TrustDomainName {
            trust_domain: trust_domain.name().to_owned(),
        })
        .await
    {
        Ok(held) => Some(held.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => return rpc::<v1::Bundle>(Err(status)).map(drop),
    };
    if let Some(held) = held
        && same_keys(&bundle_from_proto(&held)?, &fetched)
    {
        eprintln!("bundle `{trust_domain}` unchanged: not set again");
        print_bundles(args.conn.output, std::slice::from_ref(&held));
        return Ok(());
    }
    let set = rpc(client
        .set_bundle(v1::SetBundleRequest {
            trust_domain: args.trust_domain,
            bundle: document.to_vec(),
        })
        .await)?;
    print_bundles(args.conn.output, std::slice::from_ref(&set));
    Ok(())
}

/// The bundle that authenticates an `https_spiffe` endpoint: `file`'s, else the one the CA
/// holds for `endpoint_id`'s trust domain.
async fn trust_for(
    client: &mut AdminApiClient<Channel>,
    endpoint_id: &SpiffeId,
    file: Option<&Path>,
) -> anyhow::Result<Bundle> {
    let endpoint_td = endpoint_id.trust_domain();
    if let Some(file) = file {
        return read_bundle(file, &endpoint_td);
    }
    let held = rpc(client
        .get_bundle(v1::TrustDomainName {
            trust_domain: endpoint_td.name().to_owned(),
        })
        .await)
    .with_context(|| {
        format!(
            "no bundle of `{endpoint_td}` to authenticate the endpoint with: set one \
             (`warden bundle set`) or give --trust-bundle"
        )
    })?;
    bundle_from_proto(&held)
}

/// Whether two bundles hold the same authorities (JWT keys by id and key: one read back from the
/// CA carries their expiry, a bundle document does not).
fn same_keys(a: &Bundle, b: &Bundle) -> bool {
    let jwt = |b: &Bundle| -> Vec<(String, Vec<u8>)> {
        b.jwt_authorities()
            .iter()
            .map(|k| (k.kid().to_owned(), k.public_key().to_vec()))
            .collect()
    };
    a.x509_authorities() == b.x509_authorities() && jwt(a) == jwt(b)
}

/// A PEM or SPIFFE bundle file of `td`, told apart by its content.
fn read_bundle(file: &Path, td: &TrustDomain) -> anyhow::Result<Bundle> {
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read the trust bundle `{}`", file.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let bundle = if text.trim_start().starts_with('{') {
        Bundle::from_jwks(td.clone(), &bytes).map_err(anyhow::Error::from)
    } else {
        Bundle::from_pem(td.clone(), &bytes).map_err(anyhow::Error::from)
    };
    bundle.with_context(|| {
        format!(
            "the trust bundle `{}` is not a pem or spiffe bundle of `{td}`",
            file.display()
        )
    })
}
