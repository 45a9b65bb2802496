//! The `[[outbound]]` configuration of one route, and the parsed upstream address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::ServerName;
use warden_identity::SpiffeId;

use super::OutboundError;

/// One `[[outbound]]` table of `sidecar.toml`: a local plaintext listener mapped to an upstream
/// and the SPIFFE IDs that upstream may have.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The local listener; must be a loopback address.
    pub listen: SocketAddr,
    /// The upstream, `host:port` (an IP literal, `[v6]:port`, or a DNS name resolved at each
    /// new connection).
    pub upstream: String,
    /// The upstream's SVID must carry one of these SPIFFE IDs; must not be empty.
    pub expected_ids: Vec<SpiffeId>,
    /// What is proxied (default `http`).
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP only: how long after a local request arrives the upstream's response may take to
    /// begin (its status and headers; for an upgrade, the 101). Connecting, sending the request
    /// with its body, and the upstream's work all count; a response body may then stream for as
    /// long as it takes. When it runs out the local client gets 504 (gRPC: status
    /// `DEADLINE_EXCEEDED`) and the upstream request is cancelled. Written like `15s` (100 ms to
    /// 1 h); none by default.
    #[serde(default)]
    pub response_timeout: Option<String>,
    /// HTTP only: how local HTTP/1.x requests reach the upstream. `http1` (the default): over
    /// mTLS HTTP/1.1 connections, one held by each local connection. `h2`: over the route's one
    /// shared HTTP/2 connection (as local HTTP/2 requests go), marked so that a Warden inbound
    /// sidecar hands them to its app as HTTP/1.1 (see `orig_proto`); for upstreams that are
    /// Warden inbound sidecars (or any HTTP/2 server). Upgrade requests (WebSocket) always go
    /// over HTTP/1.1 connections of their own.
    #[serde(default)]
    pub http1_upstream: Http1Upstream,
}

/// How an outbound route sends local HTTP/1.x requests upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Upstream {
    /// HTTP/1.1 connections, one request at a time on each.
    #[default]
    Http1,
    /// The route's shared HTTP/2 connection, marked `warden-orig-proto: HTTP/1.1`.
    H2,
}

/// The shortest and longest `response_timeout`.
const RESPONSE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// What an outbound route proxies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1, HTTP/2 (h2c prior knowledge) and gRPC, pooled upstream connections.
    #[default]
    Http,
    /// Opaque bytes, one upstream connection per local connection.
    Tcp,
}

/// A parsed `host:port` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    /// The address when `host` is an IP literal (no resolution needed).
    pub(crate) addr: Option<SocketAddr>,
    /// `host:port` as configured, for DNS resolution and messages.
    pub(crate) host_port: String,
    /// The TLS server name (a DNS name is sent as SNI; the verifier ignores it).
    pub(crate) server_name: ServerName<'static>,
}

// === impl Route ===

impl Route {
    /// Checks what serde cannot: `listen` is a loopback address, `expected_ids` is not empty,
    /// and `upstream` is `host:port`.
    pub fn validate(&self) -> Result<(), OutboundError> {
        if !self.listen.ip().is_loopback() {
            return Err(OutboundError::ListenNotLoopback(self.listen));
        }
        if self.expected_ids.is_empty() {
            return Err(OutboundError::NoExpectedIds(self.listen));
        }
        self.response_timeout()?;
        if self.protocol == Protocol::Tcp && self.http1_upstream == Http1Upstream::H2 {
            return Err(OutboundError::Http1UpstreamOnTcp(self.listen));
        }
        self.validate_upstream().map(|_| ())
    }

    /// The parsed `response_timeout`.
    pub(crate) fn response_timeout(&self) -> Result<Option<Duration>, OutboundError> {
        let Some(text) = &self.response_timeout else {
            return Ok(None);
        };
        let invalid = |reason: String| OutboundError::InvalidResponseTimeout {
            listen: self.listen,
            value: text.clone(),
            reason,
        };
        if self.protocol != Protocol::Http {
            return Err(invalid(
                "only `http` routes have responses to wait for".into(),
            ));
        }
        let d = humantime::parse_duration(text)
            .map_err(|e| invalid(format!("not a duration like `15s`: {e}")))?;
        if !RESPONSE_TIMEOUT_RANGE.contains(&d) {
            return Err(invalid("outside the allowed range of 100ms to 1h".into()));
        }
        Ok(Some(d))
    }

    pub(crate) fn validate_upstream(&self) -> Result<Upstream, OutboundError> {
        Upstream::parse(&self.upstream).map_err(|reason| OutboundError::InvalidUpstream {
            upstream: self.upstream.clone(),
            reason,
        })
    }
}

// === impl Upstream ===

impl Upstream {
    fn parse(s: &str) -> Result<Self, &'static str> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err("port 0 is not a port to connect to");
            }
            return Ok(Self {
                addr: Some(addr),
                host_port: s.to_owned(),
                server_name: ServerName::IpAddress(addr.ip().into()),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or("expected `host:port`")?;
        let port: u16 = port
            .parse()
            .map_err(|_| "the port is not a number from 1 to 65535")?;
        if port == 0 {
            return Err("port 0 is not a port to connect to");
        }
        if host.is_empty() {
            return Err("the host is empty");
        }
        if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
            return Err("an ipv6 address must be written `[address]:port`");
        }
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| "the host is neither an ip address nor a dns name")?;
        Ok(Self {
            addr: None,
            host_port: s.to_owned(),
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(listen: &str, upstream: &str, ids: &[&str]) -> Route {
        Route {
            listen: listen.parse().unwrap(),
            upstream: upstream.to_owned(),
            expected_ids: ids.iter().map(|s| s.parse().unwrap()).collect(),
            protocol: Protocol::Http,
            response_timeout: None,
            http1_upstream: Http1Upstream::Http1,
        }
    }

    #[test]
    fn route_with_loopback_listen_ids_and_upstream_is_valid() {
        for upstream in ["127.0.0.1:15443", "[::1]:443", "api.example.org:8443"] {
            route("127.0.0.1:15001", upstream, &["spiffe://a.org/x"])
                .validate()
                .unwrap();
        }
        route("[::1]:15001", "127.0.0.1:1", &["spiffe://a.org/x"])
            .validate()
            .unwrap();
    }

    #[test]
    fn non_loopback_listen_is_refused() {
        for listen in ["0.0.0.0:15001", "10.0.0.1:15001", "[::]:15001"] {
            let err = route(listen, "127.0.0.1:1", &["spiffe://a.org/x"])
                .validate()
                .unwrap_err();
            assert!(matches!(err, OutboundError::ListenNotLoopback(_)), "{err}");
            assert_eq!(
                err.to_string(),
                format!("outbound listen address `{listen}` is not a loopback address")
            );
        }
    }

    #[test]
    fn empty_expected_ids_are_refused() {
        let err = route("127.0.0.1:15001", "127.0.0.1:1", &[])
            .validate()
            .unwrap_err();
        assert!(matches!(err, OutboundError::NoExpectedIds(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "outbound route `127.0.0.1:15001` has no expected upstream spiffe ids"
        );
    }

    #[test]
    fn malformed_upstreams_are_refused_with_the_value_named() {
        for (upstream, reason) in [
            ("127.0.0.1", "expected `host:port`"),
            ("", "expected `host:port`"),
            (":80", "the host is empty"),
            ("host:http", "the port is not a number from 1 to 65535"),
            ("host:70000", "the port is not a number from 1 to 65535"),
            ("host:0", "port 0 is not a port to connect to"),
            ("127.0.0.1:0", "port 0 is not a port to connect to"),
            (
                "::1:443",
                "an ipv6 address must be written `[address]:port`",
            ),
            (
                "[::1:443",
                "an ipv6 address must be written `[address]:port`",
            ),
            (
                "bad host:80",
                "the host is neither an ip address nor a dns name",
            ),
        ] {
            let err = route("127.0.0.1:15001", upstream, &["spiffe://a.org/x"])
                .validate()
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("outbound upstream `{upstream}` is invalid: {reason}"),
            );
        }
    }

    #[test]
    fn route_parses_from_toml_with_http_default_and_rejects_unknown_keys() {
        let parsed: Route = toml::from_str(
            "listen = \"127.0.0.1:15001\"\nupstream = \"127.0.0.1:15443\"\n\
             expected_ids = [\"spiffe://a.org/api\"]\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            route(
                "127.0.0.1:15001",
                "127.0.0.1:15443",
                &["spiffe://a.org/api"]
            )
        );
        let tcp: Route = toml::from_str(
            "listen = \"127.0.0.1:15001\"\nupstream = \"db:5432\"\n\
             expected_ids = [\"spiffe://a.org/db\"]\nprotocol = \"tcp\"\n",
        )
        .unwrap();
        assert_eq!(tcp.protocol, Protocol::Tcp);
        let timed: Route = toml::from_str(
            "listen = \"127.0.0.1:15001\"\nupstream = \"api:8443\"\n\
             expected_ids = [\"spiffe://a.org/api\"]\nresponse_timeout = \"15s\"\n",
        )
        .unwrap();
        assert_eq!(
            timed.response_timeout().unwrap(),
            Some(std::time::Duration::from_secs(15))
        );
        assert_eq!(parsed.response_timeout().unwrap(), None);

        let err = toml::from_str::<Route>(
            "listen = \"127.0.0.1:15001\"\nupstream = \"h:1\"\nexpected_ids = []\nretries = 3\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `retries`"), "{err}");
        let err = toml::from_str::<Route>(
            "listen = \"127.0.0.1:15001\"\nupstream = \"h:1\"\nexpected_ids = []\nprotocol = \"udp\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `udp`"), "{err}");
        let err = toml::from_str::<Route>(
            "listen = \"127.0.0.1:15001\"\nupstream = \"h:1\"\nexpected_ids = [\"http://a.org/x\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("http://a.org/x"), "{err}");
    }

    #[test]
    fn http1_upstream_parses_and_is_refused_on_tcp_routes() {
        let base = "listen = \"127.0.0.1:15001\"\nupstream = \"api:8443\"\n\
                    expected_ids = [\"spiffe://a.org/api\"]\n";
        let parsed: Route = toml::from_str(base).unwrap();
        assert_eq!(parsed.http1_upstream, Http1Upstream::Http1);
        let h2: Route = toml::from_str(&format!("{base}http1_upstream = \"h2\"\n")).unwrap();
        assert_eq!(h2.http1_upstream, Http1Upstream::H2);
        h2.validate().unwrap();
        let err = toml::from_str::<Route>(&format!("{base}http1_upstream = \"h3\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `h3`"), "{err}");
        let tcp: Route = toml::from_str(&format!(
            "{base}protocol = \"tcp\"\nhttp1_upstream = \"h2\"\n"
        ))
        .unwrap();
        let err = tcp.validate().unwrap_err();
        assert!(matches!(err, OutboundError::Http1UpstreamOnTcp(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "outbound route `127.0.0.1:15001` sets http1_upstream = \"h2\", but it is a tcp route: only http routes carry HTTP requests"
        );
    }
}
