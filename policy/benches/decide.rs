//! The whole decision path — from a request's parts (SPIFFE ID, method, path, headers, source,
//! TLS facts, time) to the decision, including the principal entity, the context and Cedar's
//! evaluation — with 10, 1,000, 10,000 and 100,000 policies, indexed and plain, side by side.
//!
//! Policies have the usual scope shapes of a mesh: one workload calling one service with an
//! action group and a path condition, namespace-wide permits, per-workload forbids, and a few
//! unscoped mesh-wide guard rails.
#![expect(
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err,
    reason = "benchmark setup fails fast; Cedar's error types are what they are"
)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use warden_policy::{Caller, Evaluation, Operation, PolicySet, Request, TlsFacts};

const SIZES: &[usize] = &[10, 1_000, 10_000, 100_000];

fn policies(n: usize) -> String {
    let mut out = String::new();
    // Mesh-wide guard rails, as in the shipped example.
    out.push_str("@id(\"forbid-foreign\")\nforbid(principal, action, resource) when { context has tls && context.tls.peer_trust_domain != \"example.org\" };\n");
    out.push_str("@id(\"forbid-old-tls\")\nforbid(principal, action, resource) when { context has tls && context.tls.version != \"TLSv1.3\" };\n");
    for i in 2..n {
        let (ns, sa, svc) = (i % 50, i, (i * 7) % 200);
        let text = match i % 10 {
            0 => format!(
                "@id(\"ns{i}\")\npermit(principal in Mesh::Namespace::\"spiffe://example.org/ns/n{ns}\", action == Mesh::Action::\"GET\", resource == Mesh::Service::\"svc{svc}\") when {{ context.path like \"/health*\" }};\n"
            ),
            1 => format!(
                "@id(\"forbid{i}\")\nforbid(principal == Mesh::Workload::\"spiffe://example.org/ns/n{ns}/sa/w{sa}\", action, resource == Mesh::Service::\"svc{svc}\");\n"
            ),
            2 | 3 => format!(
                "@id(\"write{i}\")\npermit(principal == Mesh::Workload::\"spiffe://example.org/ns/n{ns}/sa/w{sa}\", action in Mesh::Action::\"write\", resource == Mesh::Service::\"svc{svc}\") when {{ context.headers.contains({{name: \"content-type\", value: \"application/json\"}}) }};\n"
            ),
            _ => format!(
                "@id(\"read{i}\")\npermit(principal == Mesh::Workload::\"spiffe://example.org/ns/n{ns}/sa/w{sa}\", action in Mesh::Action::\"read\", resource == Mesh::Service::\"svc{svc}\") when {{ context.path like \"/v1/*\" }};\n"
            ),
        };
        out.push_str(&text);
    }
    out
}

fn load(n: usize) -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/mesh.cedarschema"
    ))
    .expect("schema");
    std::fs::write(dir.path().join("mesh.cedarschema"), schema).expect("write schema");
    std::fs::write(dir.path().join("gen.cedar"), policies(n)).expect("write policies");
    let set = PolicySet::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, set)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    let headers = [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("user-agent", "bench/1"),
        ("x-request-id", "4f1c"),
    ];
    // `WARDEN_BENCH_SIZES=10,1000` picks sizes (empty: none, e.g. to profile `parts` alone).
    let sizes: Vec<usize> = match std::env::var("WARDEN_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => SIZES.to_vec(),
    };
    for n in sizes {
        let (_dir, set) = load(n);
        // Policy 4 (a `read` permit) when there are enough policies; a default deny otherwise.
        let caller = String::from("spiffe://example.org/ns/n4/sa/w4");
        let resource = String::from("svc28");
        let mut path = String::from("/v1/orders/");
        let _ = write!(path, "{n}");
        let request = Request {
            caller: Caller::Spiffe(&caller),
            operation: Operation::Http("GET"),
            resource: &resource,
            path: &path,
            query: "page=2",
            headers: &headers,
            source: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            tls: Some(TlsFacts {
                version: "TLSv1.3",
                peer_trust_domain: "example.org",
            }),
            time: SystemTime::now(),
        };
        let indexed = set.decide_with(&request, Evaluation::Indexed);
        let plain = set.decide_with(&request, Evaluation::Plain);
        assert_eq!(
            (indexed.outcome(), indexed.policy_ids()),
            (plain.outcome(), plain.policy_ids())
        );
        eprintln!(
            "{n} policies: {} by {:?}, {} candidates",
            indexed.outcome(),
            indexed.policy_ids(),
            set.candidate_count(&request).unwrap_or(0)
        );
        group.bench_with_input(BenchmarkId::new("indexed", n), &request, |b, r| {
            b.iter(|| black_box(set.decide_with(black_box(r), Evaluation::Indexed)))
        });
        if n <= 10_000 || std::env::var_os("WARDEN_BENCH_PLAIN_100K").is_some() {
            group.bench_with_input(BenchmarkId::new("plain", n), &request, |b, r| {
                b.iter(|| black_box(set.decide_with(black_box(r), Evaluation::Plain)))
            });
        }
    }
    group.finish();
}

/// The parts of the path, to see where the time goes: the context, and Cedar's request with and
/// without schema validation (the engine validates the first request of each shape only).
fn parts(c: &mut Criterion) {
    use std::str::FromStr;
    let mut group = c.benchmark_group("parts");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    let schema_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/mesh.cedarschema"
    ))
    .expect("schema");
    let (schema, _) =
        cedar_policy::Schema::from_cedarschema_str(&schema_text).expect("schema parses");
    let headers = [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("user-agent", "bench/1"),
        ("x-request-id", "4f1c"),
    ];
    let request = Request {
        caller: Caller::Spiffe("spiffe://example.org/ns/n4/sa/w4"),
        operation: Operation::Http("GET"),
        resource: "svc28",
        path: "/v1/orders/1",
        query: "page=2",
        headers: &headers,
        source: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        tls: Some(TlsFacts {
            version: "TLSv1.3",
            peer_trust_domain: "example.org",
        }),
        time: SystemTime::now(),
    };
    let p =
        cedar_policy::EntityUid::from_str(r#"Mesh::Workload::"spiffe://example.org/ns/n4/sa/w4""#)
            .expect("uid");
    let a = cedar_policy::EntityUid::from_str(r#"Mesh::Action::"GET""#).expect("uid");
    let r = cedar_policy::EntityUid::from_str(r#"Mesh::Service::"svc28""#).expect("uid");
    group.bench_function("context", |b| b.iter(|| black_box(request.context())));
    use cedar_policy::RestrictedExpression as E;
    let one = |name: &str, e: E| cedar_policy::Context::from_pairs([(name.to_owned(), e)]);
    group.bench_function("context_ip_only", |b| {
        b.iter(|| black_box(one("a", E::new_ip("10.1.2.3"))))
    });
    group.bench_function("context_datetime_only", |b| {
        b.iter(|| black_box(one("a", E::new_datetime("2026-01-05T14:00:00.123Z"))))
    });
    group.bench_function("context_string_only", |b| {
        b.iter(|| black_box(one("a", E::new_string("/v1/orders".to_owned()))))
    });
    let context = request.context().expect("context");
    group.bench_function("request_with_schema", |b| {
        b.iter(|| {
            black_box(cedar_policy::Request::new(
                p.clone(),
                a.clone(),
                r.clone(),
                context.clone(),
                Some(&schema),
            ))
        })
    });
    group.bench_function("request_without_schema", |b| {
        b.iter(|| {
            black_box(cedar_policy::Request::new(
                p.clone(),
                a.clone(),
                r.clone(),
                context.clone(),
                None,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, parts, bench);
criterion_main!(benches);
