//! `warden svid`: placeholder until its issue lands.

use super::Exit;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SvidCommand {}

pub(crate) fn run(cmd: SvidCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
