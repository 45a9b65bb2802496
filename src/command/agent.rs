//! `warden agent`: placeholder until its issue lands.

use super::Exit;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AgentCommand {}

pub(crate) fn run(cmd: AgentCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
