//! A small Workload API client for `warden svid fetch` and `warden agent healthcheck`: fetches
//! X.509-SVIDs and JWT-SVIDs from an agent socket and writes them as PEM files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tonic::transport::Endpoint;
use warden_api::WORKLOAD_API_HEADER;
use warden_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_api::workload::{JwtsvidRequest, X509svidRequest};

/// A Workload API client problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No socket was given.
    #[error(
        "no workload api socket: pass `--socket PATH` or set SPIFFE_ENDPOINT_SOCKET=unix:///path"
    )]
    NoSocket,
    /// The socket address is not a path or `unix:///path`.
    #[error("invalid workload api address `{0}`: expected a path or `unix:///path`")]
    BadAddress(String),
    /// Cannot connect to the Workload API socket.
    #[error("cannot reach the workload api at `{0}` ({1}): is `warden agent run` running?")]
    Unreachable(String, String),
    /// Cannot reach the agent's health listener.
    #[error("cannot reach the agent's health listener at `{0}`: is `warden agent run` running?")]
    HealthUnreachable(String),
    /// The agent answered with an error.
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The agent's answer is unusable.
    #[error("the agent sent an invalid answer: {0}")]
    BadAnswer(String),
    /// A file could not be written.
    #[error("cannot write `{0}`: {1}")]
    Write(PathBuf, std::io::Error),
}

/// One fetched X.509-SVID.
#[derive(Debug, Clone)]
pub struct FetchedSvid {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// Leaf NotAfter, RFC 3339.
    pub expires: String,
    /// Chain PEM.
    pub chain_pem: String,
    /// Key PEM.
    pub key_pem: String,
    /// Bundle PEM.
    pub bundle_pem: String,
}

/// Resolves `--socket` / `SPIFFE_ENDPOINT_SOCKET` (a path or `unix:///path`, rule W-4).
pub fn socket_path(value: Option<&str>) -> Result<PathBuf, ClientError> {
    let v = value
        .filter(|v| !v.is_empty())
        .ok_or(ClientError::NoSocket)?;
    let path = match v.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => p,
        Some(_) => return Err(ClientError::BadAddress(v.to_owned())),
        None if v.contains("://") => return Err(ClientError::BadAddress(v.to_owned())),
        None => v,
    };
    Ok(PathBuf::from(path))
}

async fn connect(
    socket: &Path,
) -> Result<SpiffeWorkloadApiClient<tonic::transport::Channel>, ClientError> {
    let addr = format!("unix://{}", socket.display());
    let channel = Endpoint::from_shared(addr.clone())
        .map_err(|_| ClientError::BadAddress(addr.clone()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            // tonic's transport error says little; its source says what the socket did.
            let why =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
            ClientError::Unreachable(socket.display().to_string(), why)
        })?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req.set_timeout(Duration::from_secs(10));
    req
}

fn der_chain_to_pem(der: &[u8]) -> Result<String, ClientError> {
    let mut rest = der;
    let mut out = String::new();
    while !rest.is_empty() {
        let (tail, _) = x509_parser::parse_x509_certificate(rest)
            .map_err(|_| ClientError::BadAnswer("certificate is not der".into()))?;
        let used = rest.len() - tail.len();
        let cert = rest
            .get(..used)
            .ok_or_else(|| ClientError::BadAnswer("truncated certificate".into()))?;
        out.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec())));
        rest = tail;
    }
    Ok(out)
}

/// Fetches the caller's X.509-SVIDs (first message of the stream), default first.
pub async fn fetch_x509(socket: &Path) -> Result<Vec<FetchedSvid>, ClientError> {
    let mut client = connect(socket).await?;
    let mut stream = client
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .map_err(|s| ClientError::Refused(s.message().to_owned()))?
        .into_inner();
    let msg = stream
        .message()
        .await
        .map_err(|s| ClientError::Refused(s.message().to_owned()))?
        .ok_or_else(|| ClientError::BadAnswer("the stream ended without a message".into()))?;
    msg.svids
        .iter()
        .map(|s| {
            let chain_pem = der_chain_to_pem(&s.x509_svid)?;
            let (_, leaf) = x509_parser::parse_x509_certificate(&s.x509_svid)
                .map_err(|_| ClientError::BadAnswer("svid is not der".into()))?;
            let secs = u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or(0);
            let expires = humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            )
            .to_string();
            Ok(FetchedSvid {
                spiffe_id: s.spiffe_id.clone(),
                expires,
                chain_pem,
                key_pem: pem::encode(&pem::Pem::new("PRIVATE KEY", s.x509_svid_key.clone())),
                bundle_pem: der_chain_to_pem(&s.bundle)?,
            })
        })
        .collect()
}

/// Fetches JWT-SVIDs for `audience`: `(spiffe id, token)`.
pub async fn fetch_jwt(
    socket: &Path,
    audience: &[String],
) -> Result<Vec<(String, String)>, ClientError> {
    let mut client = connect(socket).await?;
    let resp = client
        .fetch_jwtsvid(request(JwtsvidRequest {
            audience: audience.to_vec(),
            spiffe_id: String::new(),
        }))
        .await
        .map_err(|s| ClientError::Refused(s.message().to_owned()))?
        .into_inner();
    Ok(resp
        .svids
        .into_iter()
        .map(|s| (s.spiffe_id, s.svid))
        .collect())
}

/// Writes `svid.pem`, `svid.key` (0600) and `bundle.pem` of `svid` into `dir`: all three in
/// full first (`.svid.pem.tmp`, …), then each renamed into place, so that a failure loses no
/// file that was there and a reader never sees a half-written one.
pub fn write_svid(dir: &Path, svid: &FetchedSvid) -> Result<(), ClientError> {
    std::fs::create_dir_all(dir).map_err(|e| ClientError::Write(dir.to_owned(), e))?;
    let files = [
        ("svid.pem", &svid.chain_pem, 0o644),
        ("svid.key", &svid.key_pem, 0o600),
        ("bundle.pem", &svid.bundle_pem, 0o644),
    ];
    let tmp = |name: &str| dir.join(format!(".{name}.tmp"));
    for (name, data, mode) in &files {
        if let Err(e) = crate::store::write_new(&tmp(name), data.as_bytes(), *mode) {
            for (name, _, _) in &files {
                let _ = std::fs::remove_file(tmp(name));
            }
            return Err(ClientError::Write(dir.join(name), e));
        }
    }
    for (name, _, _) in &files {
        let path = dir.join(name);
        std::fs::rename(tmp(name), &path).map_err(|e| ClientError::Write(path, e))?;
    }
    crate::store::sync_dir(dir).map_err(|e| ClientError::Write(dir.to_owned(), e))
}

/// Asks the agent's `/readyz` at `addr`; `Ok(true)` when ready.
pub async fn healthcheck(addr: &str) -> Result<bool, ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let unreachable = || ClientError::HealthUnreachable(addr.to_owned());
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable())?
        .map_err(|_| unreachable())?;
    s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|_| unreachable())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| unreachable())?
        .map_err(|_| unreachable())?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_accepts_path_and_unix_uri_w4() {
        assert_eq!(
            socket_path(Some("/run/a.sock")).unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            socket_path(Some("unix:///run/a.sock")).unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert!(matches!(
            socket_path(Some("unix://host/a.sock")),
            Err(ClientError::BadAddress(_))
        ));
        assert!(matches!(
            socket_path(Some("tcp://127.0.0.1:1")),
            Err(ClientError::BadAddress(_))
        ));
        assert!(matches!(socket_path(None), Err(ClientError::NoSocket)));
    }

    fn fetched(n: u8) -> FetchedSvid {
        FetchedSvid {
            spiffe_id: "spiffe://example.org/w".into(),
            expires: String::new(),
            chain_pem: format!("chain {n}"),
            key_pem: format!("key {n}"),
            bundle_pem: format!("bundle {n}"),
        }
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    /// Writing over an earlier SVID replaces all three files; a write that fails part-way
    /// leaves all three as they were (and no temporary file), naming the file it could not
    /// write.
    #[test]
    fn writing_an_svid_replaces_all_files_or_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_svid(dir.path(), &fetched(1)).unwrap();
        write_svid(dir.path(), &fetched(2)).unwrap();
        assert_eq!(
            [
                read(dir.path(), "svid.pem"),
                read(dir.path(), "svid.key"),
                read(dir.path(), "bundle.pem")
            ],
            ["chain 2", "key 2", "bundle 2"]
        );
        let mode = std::fs::metadata(dir.path().join("svid.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The last file cannot be written (a directory stands where its temporary goes).
        std::fs::create_dir(dir.path().join(".bundle.pem.tmp")).unwrap();
        let err = write_svid(dir.path(), &fetched(3)).unwrap_err();
        assert!(err.to_string().contains("bundle.pem"), "{err}");
        assert_eq!(
            [
                read(dir.path(), "svid.pem"),
                read(dir.path(), "svid.key"),
                read(dir.path(), "bundle.pem")
            ],
            ["chain 2", "key 2", "bundle 2"]
        );
        assert!(
            !dir.path().join(".svid.pem.tmp").exists()
                && !dir.path().join(".svid.key.tmp").exists()
        );
    }
}
