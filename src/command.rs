//! The `warden` subcommands, one module each.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Warden: zero-trust workload identity (SPIFFE) and authorization (Cedar).
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

pub(crate) fn run(cli: Cli) -> ExitCode {
    match cli.command {}
}
