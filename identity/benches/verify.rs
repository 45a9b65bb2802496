//! Cost of the identity checks on every connection and request: X.509-SVID chain
//! verification, JWT-SVID validation, bundle parsing and SPIFFE ID parsing.
#![allow(clippy::unwrap_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use warden_identity::test_util::TestCa;
use warden_identity::{
    Bundle, BundleSet, JwtAuthority, JwtSigner, SpiffeId, TrustDomain, validate_jwt_svid,
    verify_x509_svid,
};

fn x509(c: &mut Criterion) {
    let root = TestCa::new("example.org");
    let intermediate = root.intermediate();
    let id: SpiffeId = "spiffe://example.org/ns/prod/sa/api".parse().unwrap();
    let direct = root.issue_svid(&id, Duration::from_secs(3600));
    let via_intermediate = intermediate.issue_svid(&id, Duration::from_secs(3600));
    let bundles = TestCa::bundle_set(&[&root]);
    let now = SystemTime::now();
    c.bench_function("verify_x509_svid/root_leaf", |b| {
        b.iter(|| verify_x509_svid(black_box(direct.cert_chain()), &bundles, now).unwrap())
    });
    c.bench_function("verify_x509_svid/root_intermediate_leaf", |b| {
        b.iter(|| {
            verify_x509_svid(black_box(via_intermediate.cert_chain()), &bundles, now).unwrap()
        })
    });
}

fn jwt(c: &mut Criterion) {
    let signer = JwtSigner::generate("k1").unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let mut bundle = Bundle::new(td);
    bundle.add_jwt_authority(JwtAuthority::new("k1", signer.public_key_spki_der(), None));
    let bundles: BundleSet = [bundle.clone()].into_iter().collect();
    let id: SpiffeId = "spiffe://example.org/ns/prod/sa/api".parse().unwrap();
    let now = SystemTime::now();
    let token = signer
        .sign(
            &id,
            &["billing".to_owned()],
            now + Duration::from_secs(300),
            now,
        )
        .unwrap();
    c.bench_function("validate_jwt_svid/es256", |b| {
        b.iter(|| validate_jwt_svid(black_box(&token), "billing", &bundles, now).unwrap())
    });
    c.bench_function("jwt_signer/sign_es256", |b| {
        b.iter(|| {
            signer
                .sign(
                    &id,
                    &["billing".to_owned()],
                    now + Duration::from_secs(300),
                    now,
                )
                .unwrap()
        })
    });
    let root = TestCa::new("example.org");
    let mut full = root.bundle();
    full.add_jwt_authority(JwtAuthority::new("k1", signer.public_key_spki_der(), None));
    let jwks = full.to_jwks();
    c.bench_function("bundle/from_jwks_one_x509_one_jwt", |b| {
        b.iter(|| {
            Bundle::from_jwks(full.trust_domain().clone(), black_box(jwks.as_bytes())).unwrap()
        })
    });
}

fn ids(c: &mut Criterion) {
    c.bench_function("spiffe_id/parse", |b| {
        b.iter(|| {
            black_box("spiffe://example.org/ns/prod/sa/api")
                .parse::<SpiffeId>()
                .unwrap()
        })
    });
}

criterion_group!(benches, x509, jwt, ids);
criterion_main!(benches);
