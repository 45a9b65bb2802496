//! The SPIFFE profile checks on single certificates that RFC 5280 path validation does not
//! make: URI SANs, key usage, extended key usage and CA status (rules X-1..X-9, X-12).

use std::str::FromStr as _;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::SvidError;
use crate::SpiffeId;

/// The SPIFFE ID in the certificate's URI SAN: `Ok(None)` when there is none, an error when
/// there are several (rule X-1) or the one there is not a SPIFFE ID.
pub(super) fn single_uri_san(
    cert: &X509Certificate<'_>,
    index: usize,
) -> Result<Option<SpiffeId>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidError::BadCertificate { index })?;
    let Some(san) = san else {
        return Ok(None);
    };
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Ok(None),
        [uri] => SpiffeId::from_str(uri)
            .map(Some)
            .map_err(|source| SvidError::BadSpiffeId {
                uri: (*uri).to_owned(),
                source,
            }),
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

/// Checks a leaf X.509-SVID and returns its SPIFFE ID (rules X-1..X-6, X-8, X-12).
pub(super) fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    const INDEX: usize = 0;
    let id = single_uri_san(cert, INDEX)?.ok_or(SvidError::NoUriSan)?;
    if id.path().is_empty() {
        return Err(SvidError::LeafIdWithoutPath(id.to_string()));
    }
    check_san_criticality(cert, INDEX)?;
    let basic = cert
        .basic_constraints()
        .map_err(|_| SvidError::BadCertificate { index: INDEX })?;
    if basic.is_some_and(|b| b.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|_| SvidError::BadCertificate { index: INDEX })?;
    let ku = ku.ok_or(SvidError::MissingKeyUsage { index: INDEX })?;
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical { index: INDEX });
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::LeafWithoutDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::LeafWithKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidError::LeafWithCrlSign);
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|_| SvidError::BadCertificate { index: INDEX })?;
    if let Some(eku) = eku
        && !(eku.value.server_auth && eku.value.client_auth)
    {
        return Err(SvidError::EkuWithoutServerAndClientAuth);
    }
    Ok(id)
}

/// Checks a signing (intermediate) certificate on a validated path (rules,
///
pub(super) fn check_signing_cert(
    cert: &X509Certificate<'_>,
    index: usize,
) -> Result<(), SvidError> {
    let basic = cert
        .basic_constraints()
        .map_err(|_| SvidError::BadCertificate { index })?;
    if !basic.is_some_and(|b| b.value.ca) {
        return Err(SvidError::SigningCertNotCa { index });
    }
    let ku = cert
        .key_usage()
        .map_err(|_| SvidError::BadCertificate { index })?;
    let ku = ku.ok_or(SvidError::MissingKeyUsage { index })?;
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical { index });
    }
    if !ku.value.key_cert_sign() {
        return Err(SvidError::SigningCertWithoutKeyCertSign { index });
    }
    if let Some(id) = single_uri_san(cert, index)?
        && !id.path().is_empty()
    {
        return Err(SvidError::SigningCertIdWithPath {
            index,
            id: id.to_string(),
        });
    }
    check_san_criticality(cert, index)
}

/// Rule X-3: an empty subject requires a critical SAN extension.
fn check_san_criticality(cert: &X509Certificate<'_>, index: usize) -> Result<(), SvidError> {
    let subject_empty = cert.subject().iter().next().is_none();
    if !subject_empty {
        return Ok(());
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidError::BadCertificate { index })?;
    match san {
        Some(san) if !san.critical => Err(SvidError::NonCriticalSanWithEmptySubject { index }),
        _ => Ok(()),
    }
}
