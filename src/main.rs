//! `warden`: the one command-line door to Warden's CA, agent, policy engine and sidecar.

#[macro_use]
mod output;

mod command;
mod fd_limit;
mod memory;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match command::Cli::try_parse() {
        Ok(cli) => command::run(cli),
        Err(err) => {
            // `--help` and `--version` are not errors; everything else is a usage error (64,
            // EX_USAGE), kept apart from 2, which means "denied".
            let _ = err.print();
            if err.use_stderr() {
                command::Exit::Usage.into()
            } else {
                command::Exit::Ok.into()
            }
        }
    }
}
