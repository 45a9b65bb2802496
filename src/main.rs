//! `warden`: the one command-line door to Warden's CA, agent, policy engine and sidecar.

mod command;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = command::Cli::parse();
    command::run(cli)
}
