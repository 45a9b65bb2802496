//! The scope index changes no decision: thousands of generated policies (static, templates and
//! links, permits and forbids, conditions that error) and requests, decided with the index and by
//! plain Cedar over the whole set, must agree on outcome, determining policies and errors.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use warden_policy::{Caller, Evaluation, Operation, PolicySet, Request, TlsFacts};

use crate::support::dir_with;

const WORKLOADS: &[&str] = &[
    "spiffe://example.org/ns/prod/sa/a",
    "spiffe://example.org/ns/prod/sa/b",
    "spiffe://example.org/ns/dev/sa/a",
    "spiffe://example.org/ns/admin/sa/ops",
    "spiffe://example.org/ns/prod/team/x/sa/c",
    "spiffe://other.org/ns/prod/sa/a",
];
const NAMESPACES: &[&str] = &[
    "spiffe://example.org/ns",
    "spiffe://example.org/ns/prod",
    "spiffe://example.org/ns/dev",
    "spiffe://example.org/ns/prod/team/x",
    "spiffe://other.org/ns/prod",
];
const TEAMS: &[&str] = &["t0", "t1", "t2"];
const SERVICES: &[&str] = &["s0", "s1", "s2", "s3"];
const ACTIONS: &[&str] = &[
    "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "grpc", "connect",
];
const GROUPS: &[&str] = &["read", "write", "http", "all"];

fn entities() -> String {
    let mut out = String::from("[");
    for t in TEAMS {
        let parents = if *t == "t0" {
            ""
        } else {
            r#"{"type": "Mesh::Team", "id": "t0"}"#
        };
        write!(out, r#"{{"uid": {{"type": "Mesh::Team", "id": "{t}"}}, "attrs": {{}}, "parents": [{parents}]}},"#).unwrap();
    }
    for (i, s) in SERVICES.iter().enumerate() {
        let team = TEAMS[i % TEAMS.len()];
        write!(out, r#"{{"uid": {{"type": "Mesh::Service", "id": "{s}"}}, "attrs": {{}}, "parents": [{{"type": "Mesh::Team", "id": "{team}"}}]}},"#).unwrap();
    }
    write!(out, r#"{{"uid": {{"type": "Mesh::Workload", "id": "{}"}}, "parents": [{{"type": "Mesh::Team", "id": "t2"}}]}}]"#, WORKLOADS[1]).unwrap();
    out
}

fn principal_scope(rng: &mut StdRng) -> String {
    let w = WORKLOADS.choose(rng).unwrap();
    let ns = NAMESPACES.choose(rng).unwrap();
    let t = TEAMS.choose(rng).unwrap();
    match rng.random_range(0..10) {
        0 | 1 => "principal".to_owned(),
        2 | 3 => format!("principal == Mesh::Workload::\"{w}\""),
        4 | 5 => format!("principal in Mesh::Namespace::\"{ns}\""),
        6 => format!("principal in Mesh::Team::\"{t}\""),
        7 => "principal in Mesh::TrustDomain::\"example.org\"".to_owned(),
        8 => format!("principal is Mesh::Workload in Mesh::Namespace::\"{ns}\""),
        _ => [
            "principal is Mesh::Workload",
            "principal is Mesh::Unauthenticated",
            "principal == Mesh::Unauthenticated::\"anonymous\"",
        ]
        .choose(rng)
        .unwrap()
        .to_string(),
    }
}

fn action_scope(rng: &mut StdRng) -> String {
    match rng.random_range(0..5) {
        0 => "action".to_owned(),
        1 | 2 => format!(
            "action == Mesh::Action::\"{}\"",
            ACTIONS.choose(rng).unwrap()
        ),
        3 => format!(
            "action in Mesh::Action::\"{}\"",
            GROUPS.choose(rng).unwrap()
        ),
        _ => format!(
            "action in [Mesh::Action::\"{}\", Mesh::Action::\"{}\"]",
            ACTIONS.choose(rng).unwrap(),
            GROUPS.choose(rng).unwrap()
        ),
    }
}

fn resource_scope(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 | 1 => "resource".to_owned(),
        2 | 3 => format!(
            "resource == Mesh::Service::\"{}\"",
            SERVICES.choose(rng).unwrap()
        ),
        4 => format!("resource in Mesh::Team::\"{}\"", TEAMS.choose(rng).unwrap()),
        _ => "resource is Mesh::Service".to_owned(),
    }
}

fn condition(rng: &mut StdRng) -> &'static str {
    [
        "",
        "",
        "",
        " when { context has path && context.path like \"/v1/*\" }",
        " unless { context.source_address.isInRange(ip(\"10.0.0.0/8\")) }",
        " when { context has tls }",
        " when { context has headers && context.headers.contains({name: \"x-a\", value: \"1\"}) }",
        " unless { context has grpc && context.grpc.service == \"shop.Orders\" }",
        " when { context has tls.version }",
        " when { context.time > datetime(\"2025-01-01\") }",
    ]
    .choose(rng)
    .map_or("", |c| {
        if rng.random_bool(0.02) {
            " when { 9223372036854775807 + 1 > 0 }"
        } else {
            c
        }
    })
}

/// A policy directory of `n` generated policies, a few of them templates with links.
fn generate(rng: &mut StdRng, n: usize) -> tempfile::TempDir {
    let mut policies = String::new();
    let mut links = Vec::new();
    for i in 0..n {
        let effect = if rng.random_bool(0.03) {
            "forbid"
        } else {
            "permit"
        };
        if rng.random_bool(0.05) {
            writeln!(
                policies,
                "@id(\"tpl{i}\")\n{effect}(principal in ?principal, {}, resource == ?resource){};",
                action_scope(rng),
                condition(rng)
            )
            .unwrap();
            for l in 0..2 {
                let principal = if rng.random_bool(0.5) {
                    format!("Mesh::Team::\\\"{}\\\"", TEAMS.choose(rng).unwrap())
                } else {
                    format!(
                        "Mesh::Namespace::\\\"{}\\\"",
                        NAMESPACES.choose(rng).unwrap()
                    )
                };
                links.push(format!(
                    r#"{{"id": "link{i}-{l}", "template": "tpl{i}", "values": {{"?principal": "{principal}", "?resource": "Mesh::Service::\"{}\""}}}}"#,
                    SERVICES.choose(rng).unwrap()
                ));
            }
        } else {
            writeln!(
                policies,
                "@id(\"p{i}\")\n{effect}({}, {}, {}){};",
                principal_scope(rng),
                action_scope(rng),
                resource_scope(rng),
                condition(rng)
            )
            .unwrap();
        }
    }
    let links = format!("[{}]", links.join(","));
    dir_with(&[
        ("gen.cedar", &policies),
        ("entities.json", &entities()),
        ("links.json", &links),
    ])
}

#[test]
fn index_agrees_with_plain_cedar_on_generated_policies_and_requests() {
    let mut rng = StdRng::seed_from_u64(0x5eed_4ce5);
    let (mut policies, mut requests, mut allows) = (0, 0, 0);
    for round in 0..20 {
        let n = 150;
        let dir = generate(&mut rng, n);
        let set =
            PolicySet::load(dir.path()).unwrap_or_else(|e| panic!("generated set is invalid: {e}"));
        policies += n;
        let mut callers: Vec<&str> = WORKLOADS.to_vec();
        callers.extend([
            "spiffe://example.org/ns/prod/sa/new",
            "spiffe://example.org/ns/dev/x/y",
            "anonymous",
        ]);
        for _ in 0..200 {
            let caller = *callers.choose(&mut rng).unwrap();
            let action = *ACTIONS.choose(&mut rng).unwrap();
            let resource = *["s0", "s1", "s2", "s3", "unlisted"]
                .choose(&mut rng)
                .unwrap();
            let path = match action {
                "grpc" => "/shop.Orders/Get",
                _ => *["/v1/orders", "/", "/v2/x"].choose(&mut rng).unwrap(),
            };
            let source = IpAddr::V4(Ipv4Addr::new(
                if rng.random_bool(0.5) { 10 } else { 192 },
                0,
                0,
                1,
            ));
            let tls = (caller != "anonymous" && rng.random_bool(0.9)).then_some(TlsFacts {
                version: "TLSv1.3",
                peer_trust_domain: "example.org",
            });
            let request = Request {
                caller: if caller == "anonymous" {
                    Caller::Unauthenticated
                } else {
                    Caller::Spiffe(caller)
                },
                operation: Operation::from_name(action),
                resource,
                path,
                query: "",
                headers: &[("x-a", "1")],
                source,
                tls,
                time: UNIX_EPOCH + Duration::from_secs(1_764_000_000),
            };
            let indexed = set.decide_with(&request, Evaluation::Indexed);
            let plain = set.decide_with(&request, Evaluation::Plain);
            assert_eq!(
                (indexed.outcome(), indexed.policy_ids(), indexed.errors()),
                (plain.outcome(), plain.policy_ids(), plain.errors()),
                "round {round}: {request:?}"
            );
            requests += 1;
            allows += usize::from(indexed.is_allowed());
        }
    }
    assert!(policies >= 3000 && requests >= 4000);
    // The generator must exercise both outcomes, or the comparison proves little.
    assert!(
        allows > requests / 20 && allows < requests - requests / 20,
        "{allows} of {requests} allowed"
    );
}

#[test]
fn index_evaluates_few_policies_for_narrow_scopes() {
    let mut text = String::new();
    for i in 0..2000 {
        writeln!(text, "@id(\"p{i}\")\npermit(principal == Mesh::Workload::\"spiffe://example.org/w{i}\", action == Mesh::Action::\"GET\", resource == Mesh::Service::\"s\");").unwrap();
    }
    let dir = dir_with(&[("a.cedar", &text)]);
    let set = PolicySet::load(dir.path()).unwrap();
    let mut req = crate::support::http("spiffe://example.org/w7", "GET", "s", "/");
    assert_eq!(set.candidate_count(&req), Some(1));
    assert_eq!(set.decide(&req).policy_ids(), ["p7"]);
    req.caller = Caller::Spiffe("spiffe://example.org/nobody");
    assert_eq!(set.candidate_count(&req), Some(0));
}
