//! Decisions: default deny, forbid wins, fail closed, determining policy ids from `@id`, and the
//! shipped example's own policy tests.

use std::net::{IpAddr, Ipv4Addr};

use warden_policy::{Caller, Evaluation, Operation, Outcome, PolicySet, Request, run_tests};

use crate::support::{dir_with, http, shipped};

#[test]
fn shipped_example_passes_its_policy_tests() {
    let set = PolicySet::load(&shipped()).unwrap();
    let report = run_tests(&set, &shipped()).unwrap();
    for r in report.results().iter().filter(|r| !r.passed()) {
        eprintln!(
            "{}: expected {} got {:?}",
            r.name(),
            r.expected(),
            r.decision()
        );
    }
    assert_eq!(report.failed(), 0);
    assert!(report.passed() >= 20);
}

#[test]
fn no_permit_means_deny_with_no_policies() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"only-api\")\npermit(principal, action, resource == Mesh::Service::\"api\");",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "GET", "db", "/"));
    assert_eq!(d.outcome(), Outcome::Deny);
    assert!(d.policy_ids().is_empty());
    assert_eq!(d.version(), set.version());
}

#[test]
fn decision_names_policies_by_their_id_annotation() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"reads\")\npermit(principal, action in Mesh::Action::\"read\", resource);\n@id(\"gets\")\npermit(principal, action == Mesh::Action::\"GET\", resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "GET", "api", "/"));
    assert_eq!(d.outcome(), Outcome::Allow);
    assert_eq!(d.policy_ids(), ["gets", "reads"]);
}

#[test]
fn forbid_wins_over_permit() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal, action, resource);\n@id(\"f\")\nforbid(principal, action == Mesh::Action::\"DELETE\", resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "DELETE", "api", "/"));
    assert_eq!(
        (d.outcome(), d.policy_ids()),
        (Outcome::Deny, &["f".to_owned()][..])
    );
}

#[test]
fn error_in_a_forbid_denies_and_is_reported() {
    // An overflow is a runtime error, which Cedar answers by skipping the policy.
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal, action, resource);\n@id(\"f\")\nforbid(principal, action == Mesh::Action::\"GET\", resource) when { 9223372036854775807 + 1 > 0 };",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "GET", "api", "/"));
    assert_eq!(d.outcome(), Outcome::Deny);
    assert_eq!(d.policy_ids(), ["f"]);
    assert!(
        d.errors().iter().any(|e| e.contains("overflow")),
        "{:?}",
        d.errors()
    );
}

#[test]
fn a_forbid_that_holds_stays_a_reason_beside_one_that_errors() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal, action, resource);\n\
         @id(\"f-errors\")\nforbid(principal, action, resource) when { 9223372036854775807 + 1 > 0 };\n\
         @id(\"f-holds\")\nforbid(principal, action == Mesh::Action::\"DELETE\", resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "DELETE", "api", "/"));
    assert_eq!(d.outcome(), Outcome::Deny);
    assert_eq!(d.policy_ids(), ["f-errors", "f-holds"]);
    // A permit that held is no reason for a deny.
    let d = set.decide(&http("spiffe://example.org/a", "GET", "api", "/"));
    assert_eq!(
        (d.outcome(), d.policy_ids()),
        (Outcome::Deny, &["f-errors".to_owned()][..])
    );
}

#[test]
fn error_in_a_permit_skips_it_and_is_reported() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal, action, resource) when { 9223372036854775807 + 1 > 0 };",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "GET", "api", "/"));
    assert_eq!(d.outcome(), Outcome::Deny);
    assert_eq!(d.errors().len(), 1);
}

#[test]
fn spiffe_id_that_does_not_parse_is_denied_with_the_reason() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal, action, resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    for bad in [
        "spiffe://Example.org/a b",
        "https://example.org/a",
        "spiffe://example.org/a/../b",
        "",
    ] {
        let d = set.decide(&http(bad, "GET", "api", "/"));
        assert_eq!(d.outcome(), Outcome::Deny, "{bad}");
        assert!(
            d.errors()[0].contains("is not a spiffe id"),
            "{:?}",
            d.errors()
        );
    }
}

#[test]
fn unknown_method_is_denied_with_the_reason() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal, action, resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "BREW", "api", "/"));
    assert_eq!(d.outcome(), Outcome::Deny);
    assert_eq!(d.errors(), ["method `BREW` has no action in the schema"]);
}

#[test]
fn bad_grpc_path_and_empty_resource_are_denied() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal, action, resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let d = set.decide(&http("spiffe://example.org/a", "grpc", "api", "/not-grpc"));
    assert!(
        !d.is_allowed() && d.errors()[0].contains("grpc path"),
        "{:?}",
        d.errors()
    );
    let d = set.decide(&http("spiffe://example.org/a", "GET", "", "/"));
    assert!(
        !d.is_allowed() && d.errors()[0].contains("resource name is empty"),
        "{:?}",
        d.errors()
    );
}

#[test]
fn principal_in_namespace_matches_every_workload_below_it() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"prod\")\npermit(principal in Mesh::Namespace::\"spiffe://example.org/ns/prod\", action, resource);\n@id(\"td\")\npermit(principal in Mesh::TrustDomain::\"other.org\", action, resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let allow = |id: &str| {
        set.decide(&http(id, "GET", "api", "/"))
            .policy_ids()
            .to_vec()
    };
    assert_eq!(allow("spiffe://example.org/ns/prod/sa/api"), ["prod"]);
    assert_eq!(allow("spiffe://example.org/ns/prod"), Vec::<String>::new());
    assert_eq!(
        allow("spiffe://example.org/ns/production/sa/api"),
        Vec::<String>::new()
    );
    assert_eq!(allow("spiffe://other.org/x"), ["td"]);
}

#[test]
fn workload_attributes_and_headers_reach_policies() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"p\")\npermit(principal is Mesh::Workload, action, resource) when { principal.path like \"*/sa/api\" && context has headers && context.headers.contains({name: \"x-env\", value: \"prod\"}) };",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let headers = [("X-Env", "prod")];
    let mut req = http("spiffe://example.org/ns/prod/sa/api", "GET", "api", "/");
    assert!(!set.decide(&req).is_allowed());
    req.headers = &headers;
    assert!(
        set.decide(&req).is_allowed(),
        "header names are matched lowercase"
    );
}

#[test]
fn unauthenticated_caller_is_its_own_principal() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"anon-reads\")\npermit(principal == Mesh::Unauthenticated::\"anonymous\", action in Mesh::Action::\"read\", resource) when { !(context has tls) };",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let req = Request {
        caller: Caller::Unauthenticated,
        operation: Operation::Http("GET"),
        resource: "api",
        path: "/",
        query: "",
        headers: &[],
        source: IpAddr::V4(Ipv4Addr::LOCALHOST),
        tls: None,
        time: std::time::SystemTime::now(),
    };
    assert_eq!(set.decide(&req).policy_ids(), ["anon-reads"]);
    assert!(
        !set.decide(&http("spiffe://example.org/a", "GET", "api", "/"))
            .is_allowed()
    );
}

#[test]
fn request_time_reaches_policies_as_a_datetime() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"business-hours\")\npermit(principal, action, resource) when { context.time.toTime() >= duration(\"9h\") && context.time.toTime() < duration(\"17h\") };",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    let mut req = http("spiffe://example.org/a", "GET", "api", "/");
    // T0 is 2025-11-24T16:00:00Z.
    assert!(set.decide(&req).is_allowed());
    req.time += std::time::Duration::from_secs(2 * 3600);
    assert!(!set.decide(&req).is_allowed());
}

#[test]
fn indexed_and_plain_agree_on_the_shipped_example() {
    let set = PolicySet::load(&shipped()).unwrap();
    let callers = [
        "spiffe://example.org/ns/prod/sa/frontend",
        "spiffe://example.org/ns/prod/sa/api",
        "spiffe://example.org/ns/admin/sa/ops",
        "spiffe://example.org/ns/batch/sa/reconciler",
        "anonymous",
    ];
    for caller in callers {
        for method in ["GET", "POST", "DELETE", "connect"] {
            for resource in ["api", "database", "frontend"] {
                let req = http(caller, method, resource, "/v1/orders");
                let (a, b) = (
                    set.decide_with(&req, Evaluation::Indexed),
                    set.decide_with(&req, Evaluation::Plain),
                );
                assert_eq!(
                    (a.outcome(), a.policy_ids()),
                    (b.outcome(), b.policy_ids()),
                    "{caller} {method} {resource}"
                );
            }
        }
    }
}

#[test]
fn request_the_schema_rejects_is_denied_every_time() {
    let schema = crate::support::schema().replacen(
        "principal: [Workload, Unauthenticated],",
        "principal: [Workload],",
        1,
    );
    let (_dir, set) = permit_all_under(&schema);
    for _ in 0..2 {
        let d = set.decide(&http("anonymous", "GET", "api", "/"));
        assert_eq!(d.outcome(), Outcome::Deny);
        assert!(
            d.errors()[0].starts_with("request rejected"),
            "{:?}",
            d.errors()
        );
        assert!(
            set.decide(&http("spiffe://example.org/a", "GET", "api", "/"))
                .is_allowed()
        );
        assert!(
            set.decide(&http("anonymous", "POST", "api", "/"))
                .is_allowed()
        );
    }
}

#[test]
fn a_context_the_schema_rejects_is_reported_without_the_request_values() {
    // A schema whose HTTP context needs an attribute Warden never sends.
    let schema = crate::support::schema().replacen(
        "  type HttpContext = {\n",
        "  type HttpContext = {\n    tenant: String,\n",
        1,
    );
    assert!(schema.contains("tenant: String"));
    let (_dir, set) = permit_all_under(&schema);
    let headers = [("authorization", "Bearer s3cr3t-first")];
    let mut first = http("spiffe://example.org/a", "GET", "api", "/p1");
    first.headers = &headers;
    first.query = "token=q-first";
    let headers = [("authorization", "Bearer s3cr3t-second")];
    let mut second = http("spiffe://example.org/a", "GET", "api", "/p2");
    second.headers = &headers;
    second.query = "token=q-second";
    for request in [&first, &second] {
        let d = set.decide(request);
        assert_eq!(d.outcome(), Outcome::Deny);
        let error = d.request_error().expect("a request error");
        assert!(error.contains("schema"), "{error}");
        for value in ["s3cr3t", "q-first", "q-second", "/p1", "/p2"] {
            assert!(!error.contains(value), "{value} in {error}");
        }
    }
}

#[test]
fn empty_spiffe_id_is_denied_even_after_an_unauthenticated_caller() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"anon\")\npermit(principal == Mesh::Unauthenticated::\"anonymous\", action, resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    assert!(
        set.decide(&http("anonymous", "GET", "api", "/"))
            .is_allowed()
    );
    let d = set.decide(&http("", "GET", "api", "/"));
    assert_eq!(d.outcome(), Outcome::Deny);
    assert!(
        d.errors()[0].contains("is not a spiffe id"),
        "{:?}",
        d.errors()
    );
}

/// An HTTP request whose method is spelled `grpc` (or `connect`) is not decided as that action:
/// whatever came first, it is denied and real gRPC calls are still decided on their own.
#[test]
fn an_http_method_named_like_another_operation_is_denied_and_changes_nothing() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"calls\")\npermit(principal, action == Mesh::Action::\"grpc\", resource);\n\
         @id(\"connects\")\npermit(principal, action == Mesh::Action::\"connect\", resource);",
    )]);
    let grpc = |set: &PolicySet| {
        let mut r = http("spiffe://example.org/a", "POST", "api", "/pkg.Svc/Call");
        r.operation = Operation::Grpc;
        set.decide(&r)
    };
    for method in ["grpc", "connect"] {
        // The HTTP request first, then a gRPC call; and the other way round.
        let as_http = || {
            let mut r = http("spiffe://example.org/a", "GET", "api", "/admin");
            r.operation = Operation::Http(method);
            r
        };
        let set = PolicySet::load(dir.path()).unwrap();
        let d = set.decide(&as_http());
        assert_eq!(d.outcome(), Outcome::Deny, "{method}");
        assert!(d.policy_ids().is_empty());
        assert_eq!(
            d.errors(),
            [format!(
                "method `{method}` is not an HTTP method: `{method}` is the action of another kind of request"
            )]
        );
        assert_eq!(grpc(&set).outcome(), Outcome::Allow, "{method}");
        let set = PolicySet::load(dir.path()).unwrap();
        assert_eq!(grpc(&set).outcome(), Outcome::Allow);
        let d = set.decide(&as_http());
        assert_eq!(d.outcome(), Outcome::Deny, "{method}");
    }
}

/// A group action's name used as a method (`read`, `all`) is no request's action: denied.
#[test]
fn a_method_named_as_an_action_group_is_denied() {
    let dir = dir_with(&[(
        "a.cedar",
        "@id(\"reads\")\npermit(principal, action in Mesh::Action::\"read\", resource);\n\
         @id(\"all\")\npermit(principal, action in Mesh::Action::\"all\", resource);",
    )]);
    let set = PolicySet::load(dir.path()).unwrap();
    for method in ["read", "all", "http", "write"] {
        let d = set.decide(&http("spiffe://example.org/a", method, "api", "/"));
        assert_eq!(d.outcome(), Outcome::Deny, "{method}");
        assert!(d.policy_ids().is_empty(), "{method}");
        assert!(
            d.errors()[0].contains(&format!("Mesh::Action::\"{method}\"")),
            "{:?}",
            d.errors()
        );
    }
    assert_eq!(
        set.decide(&http("spiffe://example.org/a", "GET", "api", "/"))
            .outcome(),
        Outcome::Allow
    );
}

/// A set with one policy that permits everything, under `schema`.
fn permit_all_under(schema: &str) -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.cedarschema"), schema).unwrap();
    std::fs::write(
        dir.path().join("a.cedar"),
        "@id(\"p\")\npermit(principal, action, resource);",
    )
    .unwrap();
    let set = PolicySet::load(dir.path()).unwrap();
    (dir, set)
}
