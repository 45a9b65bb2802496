//! The summary `warden up` prints once the mesh runs: trust domain, workloads, logs, and two
//! requests to paste — one the policies allow, one they deny.

use super::Plan;

/// Prints the summary to stdout.
pub(crate) fn print(plan: &Plan) {
    for line in lines(plan) {
        say!("{line}");
    }
}

/// The summary, line by line.
pub(crate) fn lines(plan: &Plan) -> Vec<String> {
    let l = &plan.layout;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "warden".to_owned());
    let outbound = plan.ports.frontend_outbound();
    let mut out = vec![
        String::new(),
        format!("trust domain  {}", plan.trust_domain),
        String::new(),
        "workload  spiffe id & listeners".to_owned(),
    ];
    for w in &plan.workloads {
        out.push(format!("{:<9} {}", w.name, w.spiffe_id));
        out.push(format!(
            "{:<9}   mTLS in  127.0.0.1:{} -> app 127.0.0.1:{} (demo-app, plaintext on loopback)",
            "", w.inbound_port, w.app_port
        ));
        if let Some((listen, upstream, expected)) = &w.outbound {
            out.push(format!(
                "{:<9}   out      127.0.0.1:{listen} -> mTLS 127.0.0.1:{upstream}, must be {expected}",
                ""
            ));
        }
    }
    out.push(String::new());
    out.push(format!(
        "CA            127.0.0.1:{} (agent API), {}",
        plan.ports.ca(),
        l.ca_dir().display()
    ));
    out.push(format!(
        "node agent    workload API {}",
        l.agent_socket().display()
    ));
    out.push(format!("policies      {}", plan.policies.display()));
    for w in &plan.workloads {
        out.push(format!(
            "decision log  {} ({} sidecar)",
            l.decision_log(w.name).display(),
            w.name
        ));
    }
    out.push(format!(
        "audit log     {exe} audit list --admin-socket {}",
        l.admin_socket().display()
    ));
    out.push(format!("process logs  {}/", l.logs_dir().display()));
    out.push(String::new());
    if plan.trust_domain != "example.org" {
        out.push(format!(
            "note: the example policies name `example.org`; in `{}` they deny every request below",
            plan.trust_domain
        ));
        out.push(String::new());
    }
    out.push(
        "Try it — the frontend's sidecar carries the request over mTLS, the api's sidecar decides:"
            .to_owned(),
    );
    out.push(format!("  curl -s http://127.0.0.1:{outbound}/v1/orders"));
    out.push(
        "    allowed by policy `frontend-reads-api`: 200 and the api's orders as JSON".to_owned(),
    );
    out.push(format!(
        "  curl -s http://127.0.0.1:{outbound}/internal/debug"
    ));
    out.push(
        "    denied by policy `frontend-never-internal`: 403 naming the decision id".to_owned(),
    );
    out.push(String::new());
    out.push("ready — press Ctrl-C to stop everything".to_owned());
    out
}
