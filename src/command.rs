//! The `warden` subcommands, one module each. `main` parses, this module dispatches and maps
//! every outcome to an exit code.

mod admin;
mod agent;
mod ca;
mod demo_app;
mod policy;
mod sidecar;
mod svid;
mod up;

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
enum Command {
    /// Run and initialise the certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Create and revoke join tokens for node agents (admin API).
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Manage registration entries (admin API).
    #[command(subcommand)]
    Entry(admin::EntryCommand),
    /// List, evict and ban attested agents (admin API).
    #[command(subcommand)]
    Node(admin::NodeCommand),
    /// Show the trust domain's bundle and manage federated bundles (admin API).
    #[command(subcommand)]
    Bundle(admin::BundleCommand),
    /// Read and verify the CA's hash-chained audit log (admin API).
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// Run the node agent.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Fetch SVIDs from the Workload API.
    #[command(subcommand)]
    Svid(svid::SvidCommand),
    /// Validate, format, test, evaluate and diff Cedar policy sets.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run the enforcing mTLS sidecar in front of a service.
    #[command(subcommand)]
    Sidecar(sidecar::SidecarCommand),
    /// Run a whole local mesh (CA, agent, demo apps behind sidecars) in the foreground.
    Up(up::UpArgs),
    /// A tiny demo service to put behind a sidecar: HTTP routes, and the gRPC health service
    /// over h2c.
    DemoApp(demo_app::DemoAppArgs),
    /// Internal: how `warden up` starts its children.
    #[command(name = "__up-child", hide = true)]
    UpChild(up::ChildArgs),
}

/// Warden's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Everything worked.
    Ok = 0,
    /// Something failed; the message says what.
    Error = 1,
    /// A request or a test case was denied / failed.
    Denied = 2,
    /// A policy set or a configuration file is invalid.
    Invalid = 3,
    /// The command line was wrong (EX_USAGE).
    Usage = 64,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

pub(crate) fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Ca(c) => ca::run(c),
        Command::Token(c) => admin::run_token(c),
        Command::Entry(c) => admin::run_entry(c),
        Command::Node(c) => admin::run_node(c),
        Command::Bundle(c) => admin::run_bundle(c),
        Command::Audit(c) => admin::run_audit(c),
        Command::Agent(c) => agent::run(c),
        Command::Svid(c) => svid::run(c),
        Command::Policy(c) => policy::run(c),
        Command::Sidecar(c) => sidecar::run(c),
        Command::Up(c) => up::run(c),
        Command::DemoApp(c) => demo_app::run(c),
        Command::UpChild(c) => up::exec_child(c),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            Exit::Error.into()
        }
    }
}

/// `err` and its causes, `: `-separated, leaving out a cause whose text the message before it
/// already holds (most error types here name their cause in their own message, as
/// `cannot create `x`: Not a directory` does; `{:#}` would say it twice).
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// A multi-threaded tokio runtime for the async commands.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Installs the tracing subscriber: human-readable lines on stderr, filtered by `WARDEN_LOG`
/// (default `info`).
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
