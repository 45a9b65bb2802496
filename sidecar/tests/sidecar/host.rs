//! The request's host in one spelling: a policy that matches a host cannot be bypassed by
//! spelling it in upper case or with a trailing dot, over HTTP/1.1 or HTTP/2, and the app gets
//! the spelling the policy decided on.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::*;

const FORBID_ADMIN_HOST: &str = r#"
@id("no-admin-host")
forbid (principal, action, resource)
when { context has headers && context.headers.contains({name: "host", value: "admin.example"}) };
"#;

#[tokio::test]
async fn a_host_forbidden_by_policy_cannot_be_spelled_around() {
    let f = Fixture::start(Options::default()).await;
    std::fs::write(
        f.policies.join("test.cedar"),
        format!("{POLICIES}\n{FORBID_ADMIN_HOST}"),
    )
    .unwrap();
    wait_for_metric(&f, r#"policy_reloads_total{result="replaced"} 1"#).await;
    let h1 = f.client(WEB_ID).http1();
    for host in [
        "admin.example",
        "ADMIN.example",
        "admin.example.",
        "Admin.Example.",
    ] {
        let req = Request::get("/x")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, _) = h1.request(f.inbound, req).await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "HTTP/1.1, host {host}");
    }
    let h2 = f.client(WEB_ID);
    for authority in ["admin.example", "ADMIN.example", "admin.example."] {
        let req = Request::get(format!("https://{authority}/x"))
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, _) = h2.request(f.inbound, req).await.unwrap();
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "HTTP/2, :authority {authority}"
        );
    }
    // Another host passes, and the policy and the app see it in lower case, without the dot.
    let req = Request::get("https://API.Example.:8443/x")
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = h2.request(f.inbound, req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-seen-uri"], "http://api.example:8443/x");
    let records = f.decisions_exactly(8).await;
    let last = records.last().unwrap();
    assert!(
        last.headers
            .iter()
            .any(|(name, value)| name == "host" && value == "api.example:8443"),
        "{:?}",
        last.headers
    );
    assert!(
        records[..7]
            .iter()
            .all(|r| r.policy_ids == ["no-admin-host"]),
        "{records:?}"
    );
}
