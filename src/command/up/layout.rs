//! Where `warden up` puts things: the state directory's layout, the port plan, the demo workloads
//! and the configuration files it writes for the CA, the agent and the sidecars.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Marker file that says a directory was made by `warden up`; `--reset` deletes only such dirs.
pub(crate) const MARKER: &str = ".warden-up";

/// The number of consecutive ports used from `--base-port` on.
pub(crate) const PORT_COUNT: u16 = 10;

/// The state directory (absolute) and every path inside it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

/// The ports, all on 127.0.0.1, at fixed offsets from the base port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    base: u16,
}

/// A demo workload: a demo app behind its own sidecar.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// `api` or `frontend`: the demo app's name and the Cedar service of its sidecar.
    pub(crate) name: &'static str,
    /// The SPIFFE ID its sidecar holds.
    pub(crate) spiffe_id: String,
    /// The demo app's plaintext port (loopback).
    pub(crate) app_port: u16,
    /// The sidecar's inbound mTLS port.
    pub(crate) inbound_port: u16,
    /// The sidecar's admin port (`/readyz`).
    pub(crate) admin_port: u16,
    /// An outbound listener: (local port, upstream workload's inbound port, its SPIFFE ID).
    pub(crate) outbound: Option<(u16, u16, String)>,
}

// === impl Layout ===

impl Layout {
    /// `root` must be absolute.
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn marker(&self) -> PathBuf {
        self.root.join(MARKER)
    }

    pub(crate) fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    pub(crate) fn root_cert(&self) -> PathBuf {
        self.ca_dir().join(warden_ca::authority::ROOT_CERT_FILE)
    }

    pub(crate) fn admin_socket(&self) -> PathBuf {
        self.ca_dir().join("admin.sock")
    }

    pub(crate) fn agent_dir(&self) -> PathBuf {
        self.root.join("agent")
    }

    pub(crate) fn agent_socket(&self) -> PathBuf {
        self.agent_dir().join("agent.sock")
    }

    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    pub(crate) fn decision_log(&self, workload: &str) -> PathBuf {
        self.logs_dir().join(format!("decisions-{workload}.jsonl"))
    }

    pub(crate) fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The sidecar of `workload` runs from this link to the `warden` binary, so the agent can
    /// tell the two sidecars apart (`unix:path:` selector).
    pub(crate) fn sidecar_exe(&self, workload: &str) -> PathBuf {
        self.bin_dir().join(format!("warden-sidecar-{workload}"))
    }

    pub(crate) fn ca_config(&self) -> PathBuf {
        self.root.join("ca.toml")
    }

    pub(crate) fn agent_config(&self) -> PathBuf {
        self.root.join("agent.toml")
    }

    pub(crate) fn sidecar_config(&self, workload: &str) -> PathBuf {
        self.root.join(format!("sidecar-{workload}.toml"))
    }

    /// Every socket file the children create (removed after they stop, if they left one).
    pub(crate) fn sockets(&self) -> [PathBuf; 2] {
        [self.admin_socket(), self.agent_socket()]
    }
}

// === impl Ports ===

impl Ports {
    /// Checks that `base..base + PORT_COUNT` is a range of unprivileged ports.
    pub(crate) fn new(base: u16) -> Result<Self, String> {
        if base < 1024 || base.checked_add(PORT_COUNT - 1).is_none() {
            return Err(format!(
                "--base-port `{base}` must be between 1024 and {}",
                u16::MAX - (PORT_COUNT - 1)
            ));
        }
        Ok(Self { base })
    }

    /// The CA's agent API (gRPC over TLS).
    pub(crate) fn ca(self) -> u16 {
        self.base
    }

    /// The frontend sidecar's outbound listener to the api: the address people `curl`.
    pub(crate) fn frontend_outbound(self) -> u16 {
        self.base + 1
    }

    pub(crate) fn api_inbound(self) -> u16 {
        self.base + 2
    }

    pub(crate) fn frontend_inbound(self) -> u16 {
        self.base + 3
    }

    /// The CA's HTTP listener (`/readyz`, bundle).
    pub(crate) fn ca_http(self) -> u16 {
        self.base + 4
    }

    /// The agent's HTTP listener (`/readyz`).
    pub(crate) fn agent_http(self) -> u16 {
        self.base + 5
    }

    pub(crate) fn api_app(self) -> u16 {
        self.base + 6
    }

    pub(crate) fn frontend_app(self) -> u16 {
        self.base + 7
    }

    pub(crate) fn api_admin(self) -> u16 {
        self.base + 8
    }

    pub(crate) fn frontend_admin(self) -> u16 {
        self.base + 9
    }

    /// Every port with what wants it, for the "port in use" message.
    pub(crate) fn all(self) -> [(u16, &'static str); PORT_COUNT as usize] {
        [
            (self.ca(), "the CA's agent API"),
            (
                self.frontend_outbound(),
                "the frontend sidecar's outbound listener",
            ),
            (self.api_inbound(), "the api sidecar's mTLS listener"),
            (
                self.frontend_inbound(),
                "the frontend sidecar's mTLS listener",
            ),
            (self.ca_http(), "the CA's health listener"),
            (self.agent_http(), "the node agent's health listener"),
            (self.api_app(), "the api demo app"),
            (self.frontend_app(), "the frontend demo app"),
            (self.api_admin(), "the api sidecar's admin listener"),
            (
                self.frontend_admin(),
                "the frontend sidecar's admin listener",
            ),
        ]
    }
}

/// The demo workloads: `api`, and `frontend` which calls the api through its outbound listener.
pub(crate) fn workloads(trust_domain: &str, ports: Ports) -> [Workload; 2] {
    let id = |name: &str| format!("spiffe://{trust_domain}/ns/prod/sa/{name}");
    [
        Workload {
            name: "api",
            spiffe_id: id("api"),
            app_port: ports.api_app(),
            inbound_port: ports.api_inbound(),
            admin_port: ports.api_admin(),
            outbound: None,
        },
        Workload {
            name: "frontend",
            spiffe_id: id("frontend"),
            app_port: ports.frontend_app(),
            inbound_port: ports.frontend_inbound(),
            admin_port: ports.frontend_admin(),
            outbound: Some((ports.frontend_outbound(), ports.api_inbound(), id("api"))),
        },
    ]
}

/// A TOML basic string: quoted, with `"`, `\` and control characters escaped.
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_str(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// `ca.toml` for `warden ca serve --config`.
pub(crate) fn ca_toml(l: &Layout, ports: Ports) -> String {
    format!(
        "# written by `warden up`; rewritten on every start\n\
         data_dir = {}\n\
         listen = \"127.0.0.1:{}\"\n\
         http_listen = \"127.0.0.1:{}\"\n\
         admin_socket = {}\n",
        path_str(&l.ca_dir()),
        ports.ca(),
        ports.ca_http(),
        path_str(&l.admin_socket()),
    )
}

/// `agent.toml` for `warden agent run --config` (the join token goes in the environment).
pub(crate) fn agent_toml(l: &Layout, ports: Ports) -> String {
    format!(
        "# written by `warden up`; rewritten on every start\n\
         # the join token is passed in WARDEN_JOIN_TOKEN, never written here\n\
         server = \"127.0.0.1:{}\"\n\
         trust_bundle = {}\n\
         socket = {}\n\
         data_dir = {}\n\
         http_listen = \"127.0.0.1:{}\"\n\
         sync_interval = \"1s\"\n",
        ports.ca(),
        path_str(&l.root_cert()),
        path_str(&l.agent_socket()),
        path_str(&l.agent_dir()),
        ports.agent_http(),
    )
}

/// `sidecar-<name>.toml` for `warden sidecar run --config` (see the sidecar config contract).
pub(crate) fn sidecar_toml(l: &Layout, w: &Workload, policies: &Path) -> String {
    let mut s = format!(
        "# written by `warden up`; rewritten on every start\n\
         workload_api_socket = {}\n\
         spiffe_id = {}\n\
         \n\
         [inbound]\n\
         listen = \"127.0.0.1:{}\"\n\
         app = \"127.0.0.1:{}\"\n\
         protocol = \"http\"\n\
         service = {}\n\
         mtls = \"strict\"\n\
         \n\
         [policy]\n\
         dir = {}\n\
         mode = \"enforce\"\n\
         \n\
         [admin]\n\
         listen = \"127.0.0.1:{}\"\n\
         \n\
         [decision_log]\n\
         path = {}\n",
        path_str(&l.agent_socket()),
        toml_str(&w.spiffe_id),
        w.inbound_port,
        w.app_port,
        toml_str(w.name),
        path_str(policies),
        w.admin_port,
        path_str(&l.decision_log(w.name)),
    );
    if let Some((listen, upstream, expected)) = &w.outbound {
        let _ = write!(
            s,
            "\n[[outbound]]\n\
             listen = \"127.0.0.1:{listen}\"\n\
             upstream = \"127.0.0.1:{upstream}\"\n\
             expected_ids = [{}]\n\
             protocol = \"http\"\n\
             http1_upstream = \"h2\"\n",
            toml_str(expected)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_the_range_is_checked() {
        let p = Ports::new(17000).unwrap();
        let mut all: Vec<u16> = p.all().iter().map(|(port, _)| *port).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), usize::from(PORT_COUNT));
        assert_eq!(all.first(), Some(&17000));
        assert_eq!(all.last(), Some(&17009));
        assert!(Ports::new(80).unwrap_err().contains("`80`"));
        assert!(Ports::new(65530).is_err());
        assert!(Ports::new(65526).is_ok());
    }

    #[test]
    fn toml_strings_are_escaped_and_configs_parse() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
        let l = Layout::new(PathBuf::from("/tmp/we\"ird dir"));
        let ports = Ports::new(17000).unwrap();
        for text in [
            ca_toml(&l, ports),
            agent_toml(&l, ports),
            sidecar_toml(&l, &workloads("example.org", ports)[1], Path::new("/p")),
        ] {
            let v: toml::Table = toml::from_str(&text).unwrap();
            assert!(!v.is_empty(), "{text}");
        }
        let ca: warden_ca::config::RawConfig = toml::from_str(&ca_toml(&l, ports)).unwrap();
        assert_eq!(ca.data_dir, Some(PathBuf::from("/tmp/we\"ird dir/ca")));
    }

    #[test]
    fn frontend_calls_the_api_through_its_outbound_listener() {
        let ports = Ports::new(17000).unwrap();
        let [api, frontend] = workloads("example.org", ports);
        assert_eq!(api.spiffe_id, "spiffe://example.org/ns/prod/sa/api");
        assert!(api.outbound.is_none());
        let (listen, upstream, expected) = frontend.outbound.unwrap();
        assert_eq!(listen, 17001);
        assert_eq!(upstream, api.inbound_port);
        assert_eq!(expected, api.spiffe_id);
    }
}
