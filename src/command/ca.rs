//! `warden ca`: placeholder until its issue lands.

use super::Exit;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CaCommand {}

pub(crate) fn run(cmd: CaCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
