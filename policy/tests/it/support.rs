//! Helpers: the shipped example directory, temporary policy directories, and request builders.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use warden_policy::{Caller, Operation, Request, TlsFacts};

pub(crate) fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

pub(crate) fn schema() -> String {
    std::fs::read_to_string(shipped().join("mesh.cedarschema")).unwrap()
}

/// A temporary directory with the mesh schema and the given files.
pub(crate) fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.cedarschema"), schema()).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

pub(crate) const T0: Duration = Duration::from_secs(1_764_000_000);

pub(crate) fn http<'a>(
    caller: &'a str,
    method: &'a str,
    resource: &'a str,
    path: &'a str,
) -> Request<'a> {
    Request {
        caller: if caller == "anonymous" {
            Caller::Unauthenticated
        } else {
            Caller::Spiffe(caller)
        },
        operation: Operation::from_name(method),
        resource,
        path,
        query: "",
        headers: &[],
        source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        tls: Some(TlsFacts {
            version: "TLSv1.3",
            peer_trust_domain: "example.org",
        }),
        time: UNIX_EPOCH + T0,
    }
}
