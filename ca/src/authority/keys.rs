//! Certificate building blocks: random serials, validity conversion, CA certificates (root and
//! intermediate) with the SPIFFE signing-certificate profile (X-9: URI SAN `spiffe://<td>`,
//! keyCertSign, cA=true).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use warden_identity::TrustDomain;

/// How far back NotBefore is set, for clock skew between hosts.
pub(crate) const BACKDATE: Duration = Duration::from_secs(10);

/// A random positive 128-bit serial (126 random bits: the top bits are fixed so the DER
/// integer is positive and minimal) and its lowercase hex form.
pub(crate) fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    if let Some(first) = bytes.first_mut() {
        *first = (*first & 0x7f) | 0x40;
    }
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// `SystemTime` to rcgen's time type (clamped to the unix epoch).
pub(crate) fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Unix seconds of `t`.
pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `SystemTime` from unix seconds.
pub(crate) fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// NotBefore and NotAfter of a certificate.
pub(crate) fn cert_validity(der: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    Ok((
        from_unix(cert.validity().not_before.timestamp()),
        from_unix(cert.validity().not_after.timestamp()),
    ))
}

/// NotAfter of a certificate.
pub(crate) fn cert_not_after(der: &[u8]) -> Result<SystemTime, String> {
    cert_validity(der).map(|(_, na)| na)
}

/// Checks that `key` is the private key of `cert` and that `cert` is a CA certificate.
pub(crate) fn check_key_matches(cert: &CertificateDer<'_>, key: &KeyPair) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err("the private key does not belong to the ca certificate".into());
    }
    match parsed.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        _ => Err("the certificate is not a ca certificate (basicConstraints cA is not set)".into()),
    }
}

/// Base parameters of a SPIFFE signing certificate for `td`.
fn ca_params(
    td: &TrustDomain,
    common_name: &str,
    constraint: BasicConstraints,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(CertificateParams, String), String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Warden");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let uri = td
        .id_string()
        .try_into()
        .map_err(|_| format!("trust domain `{td}` is not a valid uri"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::Ca(constraint);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_after);
    params.use_authority_key_identifier_extension = true;
    let (serial, hex) = random_serial();
    params.serial_number = Some(serial);
    Ok((params, hex))
}

/// A self-signed root for `td` with `key`.
pub(crate) fn self_signed_root(
    td: &TrustDomain,
    key: &KeyPair,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(CertificateDer<'static>, String), String> {
    let (mut params, serial) = ca_params(
        td,
        &format!("Warden root CA {td}"),
        BasicConstraints::Unconstrained,
        not_before,
        not_after,
    )?;
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(key).map_err(|e| e.to_string())?;
    Ok((cert.der().clone(), serial))
}

/// A new intermediate signing CA for `td` (pathlen 0), signed by `root`, with a fresh key of
/// `alg`.
pub(crate) fn new_intermediate(
    td: &TrustDomain,
    root: &Issuer<'static, KeyPair>,
    alg: &'static SignatureAlgorithm,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(CertificateDer<'static>, KeyPair, String), String> {
    let key = KeyPair::generate_for(alg).map_err(|e| e.to_string())?;
    let (params, serial) = ca_params(
        td,
        "Warden intermediate CA",
        BasicConstraints::Constrained(0),
        not_before,
        not_after,
    )?;
    let cert = params.signed_by(&key, root).map_err(|e| e.to_string())?;
    Ok((cert.der().clone(), key, serial))
}
