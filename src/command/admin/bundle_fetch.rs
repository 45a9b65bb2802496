//! `warden bundle fetch`: a federated trust domain's bundle read from its SPIFFE bundle
//! endpoint (`https_spiffe` profile) and set in the CA, as `bundle set` would set it from a
//! file. The endpoint is authenticated with the bundle already held for its SPIFFE ID's trust
//! domain (SPIRE's model: set the first one out of band), or with `--trust-bundle`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use warden_api::v1;
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
    /// The SPIFFE ID the endpoint's server certificate must carry: `spiffe://<td>/warden/ca`
    /// for a Warden CA's `--bundle-endpoint-listen`, `spiffe://<td>/spire/server` for SPIRE's.
    #[arg(long)]
    endpoint_spiffe_id: String,
    /// A PEM or SPIFFE bundle (JWKS) file of the endpoint SPIFFE ID's trust domain, to
    /// authenticate the endpoint the first time [default: the bundle the CA holds for it].
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

pub(crate) async fn run(args: FetchArgs) -> anyhow::Result<()> {
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("invalid --trust-domain `{}`", args.trust_domain))?;
    let endpoint_id: SpiffeId = args
        .endpoint_spiffe_id
        .parse()
        .with_context(|| format!("invalid --endpoint-spiffe-id `{}`", args.endpoint_spiffe_id))?;
    warden_ca::bundle_endpoint::check_endpoint_id(&endpoint_id)?;
    warden_ca::bundle_endpoint::check_url(&args.url)?;
    let endpoint_td = endpoint_id.trust_domain();
    let mut client = connect(&args.conn).await?;
    let trust = match &args.trust_bundle {
        Some(file) => read_bundle(file, &endpoint_td)?,
        None => {
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
            bundle_from_proto(&held)?
        }
    };
    let (fetched, document) =
        warden_ca::bundle_endpoint::fetch(&args.url, &endpoint_id, trust, &trust_domain).await?;
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
