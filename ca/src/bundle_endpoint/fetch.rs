//! The other side of the bundle endpoint: a federating peer's bundle read from its endpoint,
//! `https_spiffe` ([`fetch`]: the server authenticated by an X.509-SVID for the endpoint SPIFFE
//! ID, checked against the bundle already held for its trust domain) or `https_web`
//! ([`fetch_web`]: the server authenticated by a WebPKI certificate for the URL's host, checked
//! against the system's root certificates) (SPIFFE Federation §5, rule B-9).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use warden_identity::{
    Authorize, Bundle, BundleSet, SharedBundles, SpiffeId, SpiffeServerCertVerifier, TrustDomain,
    crypto_provider,
};

use super::{FETCH_TIMEOUT, MAX_BUNDLE_BYTES};

/// Why a bundle could not be fetched from an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The endpoint URL is not an `https://host[:port][/path]` URL.
    #[error("invalid bundle endpoint url `{url}`: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The endpoint SPIFFE ID has no path: no X.509-SVID can carry it.
    #[error(
        "the endpoint spiffe id `{0}` has no path: an endpoint presents an x.509-svid, whose id has one (e.g. `{0}/warden/ca`)"
    )]
    EndpointId(SpiffeId),
    /// The bundle that authenticates the endpoint is for another trust domain.
    #[error(
        "the bundle given to authenticate the endpoint is for `{bundle}`, but the endpoint's spiffe id `{endpoint_id}` is in `{expected}`"
    )]
    WrongTrustBundle {
        /// The bundle's trust domain.
        bundle: TrustDomain,
        /// The endpoint SPIFFE ID.
        endpoint_id: SpiffeId,
        /// Its trust domain.
        expected: TrustDomain,
    },
    /// Connecting, the TLS handshake (the endpoint's SVID did not verify, or is not the
    /// endpoint SPIFFE ID) or the HTTP exchange failed.
    #[error("cannot fetch the bundle from `{url}`: {reason}")]
    Exchange {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The endpoint answered with another status than 200.
    #[error("the bundle endpoint `{url}` answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The document is not a valid SPIFFE bundle for the trust domain.
    #[error("the bundle from `{url}` is not a valid spiffe bundle for `{trust_domain}`: {reason}")]
    Bundle {
        /// The URL.
        url: String,
        /// The trust domain it was fetched for.
        trust_domain: TrustDomain,
        /// What is wrong.
        reason: String,
    },
}

/// Fetches `trust_domain`'s bundle from the endpoint at `url` (`https_spiffe` profile): the
/// server must present an X.509-SVID for exactly `endpoint_id` that verifies against `trust`,
/// the bundle already held for `endpoint_id`'s trust domain. Returns the bundle and the
/// document as received.
pub async fn fetch(
    url: &str,
    endpoint_id: &SpiffeId,
    trust: Bundle,
    trust_domain: &TrustDomain,
) -> Result<(Bundle, Bytes), FetchError> {
    check_endpoint_id(endpoint_id)?;
    let expected = endpoint_id.trust_domain();
    if *trust.trust_domain() != expected {
        return Err(FetchError::WrongTrustBundle {
            bundle: trust.trust_domain().clone(),
            endpoint_id: endpoint_id.clone(),
            expected,
        });
    }
    let target = Target::parse(url)?;
    let exchange = |reason: String| FetchError::Exchange {
        url: url.to_owned(),
        reason,
    };
    let mut bundles = BundleSet::new();
    bundles.insert(trust);
    let verifier = SpiffeServerCertVerifier::new(
        Arc::new(SharedBundles::new(bundles)),
        Authorize::Exactly(endpoint_id.clone()),
    );
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| exchange(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    fetch_with(url, &target, config, trust_domain).await
}

/// Fetches `trust_domain`'s bundle from the endpoint at `url` (`https_web` profile): the
/// server must present a certificate for the URL's host that chains to one of `roots`, as a
/// browser would check it. Returns the bundle and the document as received.
pub async fn fetch_web(
    url: &str,
    roots: &WebRoots,
    trust_domain: &TrustDomain,
) -> Result<(Bundle, Bytes), FetchError> {
    let target = Target::parse(url)?;
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Exchange {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(Arc::clone(&roots.0))
        .with_no_client_auth();
    fetch_with(url, &target, config, trust_domain).await
}

/// The root certificates that authenticate `https_web` bundle endpoints.
#[derive(Debug, Clone)]
pub struct WebRoots(Arc<rustls::RootCertStore>);

impl WebRoots {
    /// The system's root certificates: the distribution's bundle (such as Debian's
    /// `/etc/ssl/certs/ca-certificates.crt`), or only those `SSL_CERT_FILE` and `SSL_CERT_DIR`
    /// name when either is set (rustls-native-certs). Certificates that do not parse are
    /// skipped; none at all is an error.
    pub fn system() -> Result<Self, String> {
        let found = rustls_native_certs::load_native_certs();
        let mut store = rustls::RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(format!(
                "no root certificates to authenticate https_web bundle endpoints with ({why}): \
                 install the system's ca-certificates, or set SSL_CERT_FILE to a pem file of them"
            ));
        }
        Ok(Self(Arc::new(store)))
    }

    /// These root certificates (DER) only.
    pub fn from_der(
        certs: impl IntoIterator<Item = rustls::pki_types::CertificateDer<'static>>,
    ) -> Self {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(certs);
        Self(Arc::new(store))
    }

    /// How many root certificates there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// GETs the bundle at `target` with `config` and parses it as `trust_domain`'s.
async fn fetch_with(
    url: &str,
    target: &Target,
    mut config: rustls::ClientConfig,
    trust_domain: &TrustDomain,
) -> Result<(Bundle, Bytes), FetchError> {
    let exchange = |reason: String| FetchError::Exchange {
        url: url.to_owned(),
        reason,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(target, Arc::new(config)))
        .await
        .map_err(|_| exchange(format!("no answer within {FETCH_TIMEOUT:?}")))?
        .map_err(|e| match e {
            Got::Status(status) => FetchError::Status {
                url: url.to_owned(),
                status,
            },
            Got::Failed(reason) => exchange(reason),
        })?;
    let bundle =
        Bundle::from_jwks(trust_domain.clone(), &body).map_err(|e| FetchError::Bundle {
            url: url.to_owned(),
            trust_domain: trust_domain.clone(),
            reason: e.to_string(),
        })?;
    Ok((bundle, body))
}

/// Checks that `id` can name a bundle endpoint: an X.509-SVID's ID, so one with a path.
pub fn check_endpoint_id(id: &SpiffeId) -> Result<(), FetchError> {
    if id.path().is_empty() {
        return Err(FetchError::EndpointId(id.clone()));
    }
    Ok(())
}

/// Checks that `url` is an endpoint URL [`fetch`] takes: `https://host[:port][/path]`.
pub fn check_url(url: &str) -> Result<(), FetchError> {
    Target::parse(url).map(drop)
}

/// Where an endpoint URL points.
struct Target {
    host: String,
    port: u16,
    path: String,
    authority: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, FetchError> {
        let bad = |reason| FetchError::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a url"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("a bundle endpoint url must be `https://`"));
        }
        let authority = uri.authority().ok_or(bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let bracketed = authority.host();
        let host = bracketed.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        // `http` does not check the port: text after the host that is not a port number would
        // otherwise mean 443.
        let port = match authority.as_str().strip_prefix(bracketed) {
            Some("") => 443,
            Some(rest) => match rest.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(port)) if port > 0 => port,
                _ => return Err(bad("the port is not a number from 1 to 65535")),
            },
            None => return Err(bad("no host")),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            authority: authority.as_str().to_owned(),
        })
    }
}

/// How a GET went short of a body.
enum Got {
    Status(StatusCode),
    Failed(String),
}

/// GETs `target` over TLS with `config`; the body of a 200, at most [`MAX_BUNDLE_BYTES`].
async fn get(target: &Target, config: Arc<rustls::ClientConfig>) -> Result<Bytes, Got> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Got::Failed(format!("{what}: {e}"));
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let server_name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| failed("invalid host name", &e))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| failed("tls handshake failed", &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| failed("http handshake failed", &e))?;
    let driver = tokio::spawn(conn);
    let req = Request::get(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| failed("invalid request", &e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed("request failed", &e))?;
    if resp.status() != StatusCode::OK {
        driver.abort();
        return Err(Got::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|e| failed("cannot read the bundle", &e))?
        .to_bytes();
    driver.abort();
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_https_with_a_host() {
        let t = Target::parse("https://ca.partner.org:8443/bundle?x=1")
            .ok()
            .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("ca.partner.org", 8443));
        assert_eq!(t.path, "/bundle?x=1");
        assert_eq!(t.authority, "ca.partner.org:8443");
        let t = Target::parse("https://[::1]").ok().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 443, "/")
        );
        for (url, reason) in [
            ("http://ca.partner.org/", "https://"),
            ("ca.partner.org", "https://"),
            ("https://user@ca.partner.org/", "user information"),
            ("https://ca.partner.org:84430/", "port"),
            ("https://ca.partner.org:8443x/", "port"),
            ("https://ca.partner.org:0/", "port"),
            ("not a url", "not a url"),
        ] {
            let err = Target::parse(url).err().unwrap().to_string();
            assert!(err.contains(reason), "{url}: {err}");
        }
    }
}
