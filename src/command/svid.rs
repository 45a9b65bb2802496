//! `warden svid fetch`: fetch this process's SVIDs from the Workload API.

use std::path::PathBuf;

use super::Exit;

/// Workload API client commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SvidCommand {
    /// Print this process's SPIFFE IDs with their expiry, write the default X.509-SVID, or
    /// print JWT-SVIDs.
    Fetch {
        /// Workload API socket: a path or `unix:///path`.
        #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
        socket: Option<String>,
        /// Write `svid.pem`, `svid.key` (0600) and `bundle.pem` of the default SVID here.
        #[arg(long, conflicts_with = "jwt")]
        write: Option<PathBuf>,
        /// Fetch JWT-SVIDs instead (needs `--audience`).
        #[arg(long, requires = "audience")]
        jwt: bool,
        /// JWT audience (repeatable).
        #[arg(long)]
        audience: Vec<String>,
    },
}

pub(crate) fn run(cmd: SvidCommand) -> anyhow::Result<Exit> {
    use warden_node_agent::client;
    match cmd {
        SvidCommand::Fetch {
            socket,
            write,
            jwt,
            audience,
        } => {
            let socket = client::socket_path(socket.as_deref())?;
            let rt = super::runtime()?;
            if jwt {
                for (id, token) in rt.block_on(client::fetch_jwt(&socket, &audience))? {
                    outln!("{id}\n{token}");
                }
                return Ok(Exit::Ok);
            }
            let svids = rt.block_on(client::fetch_x509(&socket))?;
            for s in &svids {
                outln!("{}\texpires {}", s.spiffe_id, s.expires);
            }
            if let (Some(dir), Some(default)) = (write, svids.first()) {
                client::write_svid(&dir, default)?;
                outln!("wrote {}/svid.pem, svid.key, bundle.pem", dir.display());
            }
            Ok(Exit::Ok)
        }
    }
}
