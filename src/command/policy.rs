//! `warden policy`: placeholder until its issue lands.

use super::Exit;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {}

pub(crate) fn run(cmd: PolicyCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
