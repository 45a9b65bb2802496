//! The admin API client: a tonic channel over the CA's Unix socket, and gRPC statuses turned into
//! errors that say what went wrong.

use std::path::PathBuf;

use anyhow::anyhow;
use tonic::transport::{Channel, Endpoint};
use warden_api::v1::admin_api_client::AdminApiClient;

use super::output::Output;

/// Default admin socket, relative to the working directory (the CA's default data dir).
const DEFAULT_ADMIN_SOCKET: &str = ".warden/ca/admin.sock";

/// Options every admin command takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Conn {
    /// The CA's admin socket (`DATA_DIR/admin.sock` of `warden ca serve`).
    #[arg(long, env = "WARDEN_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(crate) admin_socket: PathBuf,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) output: Output,
}

/// Connects to the admin socket, failing with a hint when nothing is listening.
pub(crate) async fn connect(conn: &Conn) -> anyhow::Result<AdminApiClient<Channel>> {
    let path = if conn.admin_socket.is_absolute() {
        conn.admin_socket.clone()
    } else {
        std::env::current_dir()?.join(&conn.admin_socket)
    };
    let unreachable = || {
        format!(
            "cannot reach the CA admin socket `{}`: is `warden ca serve` running?",
            conn.admin_socket.display()
        )
    };
    if !path.exists() {
        return Err(anyhow!("{} (no such file)", unreachable()));
    }
    let endpoint = Endpoint::from_shared(format!("unix://{}", path.display()))
        .map_err(|e| anyhow!("{}: {e}", unreachable()))?;
    let channel = endpoint.connect().await.map_err(|e| {
        let cause =
            std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        anyhow!("{} ({cause})", unreachable())
    })?;
    Ok(AdminApiClient::new(channel))
}

/// The response body, or an error carrying the CA's message.
pub(crate) fn rpc<T>(result: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    match result {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => {
            let what = match status.code() {
                tonic::Code::PermissionDenied => "permission denied: ",
                tonic::Code::Unavailable => "the CA is unavailable: ",
                _ => "",
            };
            Err(anyhow!("{what}{}", status.message()))
        }
    }
}
