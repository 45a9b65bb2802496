//! Admin commands (`token`, `entry`, `node`, `bundle`, `audit`): placeholder until the CA lands.

use super::Exit;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {}
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EntryCommand {}
#[derive(Debug, clap::Subcommand)]
pub(crate) enum NodeCommand {}
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BundleCommand {}
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {}

pub(crate) fn run_token(cmd: TokenCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
pub(crate) fn run_entry(cmd: EntryCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
pub(crate) fn run_node(cmd: NodeCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
pub(crate) fn run_bundle(cmd: BundleCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
pub(crate) fn run_audit(cmd: AuditCommand) -> anyhow::Result<Exit> {
    match cmd {}
}
