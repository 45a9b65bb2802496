//! Printing admin API results: aligned tables for people, JSON for scripts.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{Value, json};
use warden_api::v1;
use warden_identity::{Bundle, CertificateDer, JwtAuthority, TrustDomain};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

pub(crate) fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn time(secs: i64) -> String {
    let (y, m, d) = warden_identity::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ttl(secs: u32) -> String {
    if secs == 0 {
        "default".into()
    } else {
        format!("{secs}s")
    }
}

fn entry_json(e: &v1::Entry) -> Value {
    json!({
        "id": e.id, "spiffe_id": e.spiffe_id, "parent_id": e.parent_id, "selectors": e.selectors,
        "x509_svid_ttl": e.x509_svid_ttl, "jwt_svid_ttl": e.jwt_svid_ttl, "dns_names": e.dns_names,
        "federates_with": e.federates_with, "hint": e.hint, "revision": e.revision,
        "created_at": e.created_at, "updated_at": e.updated_at,
    })
}

pub(crate) fn print_entry(out: Output, e: &v1::Entry) {
    match out {
        Output::Json => print_json(&entry_json(e)),
        Output::Table => {
            let rows = [
                ("id", e.id.clone()),
                ("spiffe id", e.spiffe_id.clone()),
                ("parent id", e.parent_id.clone()),
                ("selectors", e.selectors.join(", ")),
                ("x509-svid ttl", ttl(e.x509_svid_ttl)),
                ("jwt-svid ttl", ttl(e.jwt_svid_ttl)),
                ("dns names", e.dns_names.join(", ")),
                ("federates with", e.federates_with.join(", ")),
                ("hint", e.hint.clone()),
                ("revision", e.revision.to_string()),
                ("created", time(e.created_at)),
                ("updated", time(e.updated_at)),
            ];
            for (k, v) in rows {
                outln!("{:<15} {v}", format!("{k}:"));
            }
        }
    }
}

pub(crate) fn print_entries(out: Output, entries: &[v1::Entry]) {
    match out {
        Output::Json => print_json(&Value::Array(entries.iter().map(entry_json).collect())),
        Output::Table => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        e.spiffe_id.clone(),
                        e.parent_id.clone(),
                        e.selectors.join(","),
                    ]
                })
                .collect();
            table(&["ID", "SPIFFE ID", "PARENT ID", "SELECTORS"], &rows);
        }
    }
}

pub(crate) fn print_agents(out: Output, agents: &[v1::Agent]) {
    match out {
        Output::Json => print_json(&Value::Array(
            agents
                .iter()
                .map(|a| {
                    json!({
                        "spiffe_id": a.spiffe_id, "attestor": a.attestor, "selectors": a.selectors,
                        "serial": a.serial, "expires_at": a.expires_at, "banned": a.banned,
                        "attested_at": a.attested_at, "renewed_at": a.renewed_at,
                    })
                })
                .collect(),
        )),
        Output::Table => {
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    vec![
                        a.spiffe_id.clone(),
                        a.attestor.clone(),
                        if a.banned {
                            "banned".into()
                        } else {
                            "ok".into()
                        },
                        time(a.expires_at),
                        a.selectors.join(","),
                    ]
                })
                .collect();
            table(
                &[
                    "SPIFFE ID",
                    "ATTESTOR",
                    "STATUS",
                    "SVID EXPIRES",
                    "SELECTORS",
                ],
                &rows,
            );
        }
    }
}

pub(crate) fn print_bundles(out: Output, bundles: &[v1::Bundle]) {
    match out {
        Output::Json => print_json(&Value::Array(
            bundles
                .iter()
                .map(|b| {
                    json!({
                        "trust_domain": b.trust_domain, "sequence": b.sequence, "refresh_hint": b.refresh_hint,
                        "x509_authorities": b.x509_authorities.len(),
                        "jwt_authorities": b.jwt_authorities.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )),
        Output::Table => {
            let rows: Vec<Vec<String>> = bundles
                .iter()
                .map(|b| {
                    vec![
                        b.trust_domain.clone(),
                        b.sequence.to_string(),
                        b.x509_authorities.len().to_string(),
                        b.jwt_authorities.len().to_string(),
                    ]
                })
                .collect();
            table(&["TRUST DOMAIN", "SEQUENCE", "X509 AUTHORITIES", "JWT AUTHORITIES"], &rows);
        }
    }
}

pub(crate) fn print_audit(out: Output, records: &[v1::AuditRecord]) {
    match out {
        Output::Json => print_json(&Value::Array(
            records
                .iter()
                .map(|r| {
                    let detail: Value = serde_json::from_str(&r.detail)
                        .unwrap_or_else(|_| Value::String(r.detail.clone()));
                    json!({
                        "seq": r.seq, "at": r.at, "kind": r.kind, "actor": r.actor,
                        "subject": r.subject, "detail": detail, "hash": r.hash,
                    })
                })
                .collect(),
        )),
        Output::Table => {
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        time(r.at),
                        r.kind.clone(),
                        r.actor.clone(),
                        r.subject.clone(),
                    ]
                })
                .collect();
            table(&["SEQ", "AT", "KIND", "ACTOR", "SUBJECT"], &rows);
        }
    }
}

/// The wire bundle as an identity bundle, to print it as PEM or JWKS.
pub(crate) fn bundle_from_proto(b: &v1::Bundle) -> anyhow::Result<Bundle> {
    let td = TrustDomain::new(&b.trust_domain)
        .with_context(|| format!("the CA sent a bad trust domain `{}`", b.trust_domain))?;
    let mut bundle = Bundle::new(td);
    for der in &b.x509_authorities {
        bundle.add_x509_authority(CertificateDer::from(der.clone()));
    }
    for k in &b.jwt_authorities {
        let expires = u64::try_from(k.expires_at)
            .ok()
            .filter(|s| *s > 0)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        bundle.add_jwt_authority(JwtAuthority::new(
            k.kid.clone(),
            k.public_key.clone(),
            expires,
        ));
    }
    bundle.set_sequence(b.sequence);
    if b.refresh_hint > 0 {
        bundle.set_refresh_hint(Duration::from_secs(u64::from(b.refresh_hint)));
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_format_as_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(time(1_764_072_000), "2025-11-25T12:00:00Z");
    }
}
