//! `warden up`: a whole local mesh from one command — CA, node agent, two demo apps each behind
//! its own sidecar, the example policies — run in the foreground as children of this process,
//! with a progress line per step, a summary with two requests to try, and a clean stop on
//! Ctrl-C (or SIGTERM/SIGHUP) with nothing left running or listening.

mod layout;
mod probe;
mod steps;
mod summary;
mod supervisor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::signal::unix::{Signal, SignalKind, signal};

pub(crate) use self::supervisor::{ChildArgs, exec_child};

use self::layout::{Layout, Ports, Workload};
use self::steps::StepError;
use self::supervisor::Supervisor;
use super::Exit;

/// `warden up` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// State directory: CA keys and datastore, agent data, configs, logs. Reused on the next
    /// run (same CA and audit log); `--reset` starts over.
    #[arg(long, default_value = ".warden")]
    dir: PathBuf,
    /// Delete the state directory first (only one made by `warden up`) and start over.
    #[arg(long)]
    reset: bool,
    /// The trust domain of a new CA (the example policies are written for `example.org`).
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
    /// The Cedar policy directory the sidecars load (and hot-reload).
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// First of ten consecutive ports on 127.0.0.1 (`--base-port` .. `--base-port`+9).
    #[arg(long, default_value_t = 17000)]
    base_port: u16,
}

/// Everything `up` decided before starting anything.
#[derive(Debug)]
pub(crate) struct Plan {
    layout: Layout,
    ports: Ports,
    trust_domain: String,
    policies: PathBuf,
    workloads: [Workload; 2],
    uid: u32,
}

/// SIGINT, SIGTERM and SIGHUP: each means "stop everything".
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

// === impl Signals ===

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupt",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

pub(crate) fn run(args: UpArgs) -> anyhow::Result<Exit> {
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Ok(Exit::Invalid);
        }
    };
    // One `up` per state directory: checked first, as it explains busy ports too.
    let early = match lock_dir(&plan.layout) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(Exit::Error);
        }
    };
    for (port, what) in plan.ports.all() {
        if let Err(why) = probe::port_free(port) {
            eprintln!(
                "error: port {port} ({what}) is not available: {why}; stop whatever uses it, \
                 or choose another range with --base-port"
            );
            return Ok(Exit::Error);
        }
    }
    // Held until `up` exits (`--reset` replaces the marker, so it is taken again).
    let lock = prepare_dir(plan.layout.root(), args.reset).and_then(|()| {
        drop(early);
        lock_dir(&plan.layout)
    });
    let _lock = match lock {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(Exit::Error);
        }
    };
    // A current-thread runtime: every child is spawned from this (the main) thread, which the
    // children's parent-death signal is tied to.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(orchestrate(plan))
}

/// Checks the flags and resolves paths; nothing is touched yet.
fn plan(args: &UpArgs) -> Result<Plan, String> {
    let td: warden_identity::TrustDomain = args
        .trust_domain
        .parse()
        .map_err(|e| format!("invalid --trust-domain `{}`: {e}", args.trust_domain))?;
    let ports = Ports::new(args.base_port)?;
    let cwd = std::env::current_dir().map_err(|e| format!("no working directory: {e}"))?;
    let root = cwd.join(&args.dir);
    let policies = cwd.join(&args.policies);
    if !policies.is_dir() {
        return Err(format!(
            "the policy directory `{}` does not exist (run from the repository root, or pass \
             --policies)",
            args.policies.display()
        ));
    }
    for (flag, path) in [("--dir", &root), ("--policies", &policies)] {
        if path.to_str().is_none() {
            return Err(format!("{flag} `{}` is not valid UTF-8", path.display()));
        }
    }
    let layout = Layout::new(root);
    for sock in layout.sockets() {
        // sockaddr_un holds 108 bytes including the final NUL.
        if sock.as_os_str().len() > 107 {
            return Err(format!(
                "the state directory path is too long for a unix socket (`{}`): choose a \
                 shorter --dir",
                sock.display()
            ));
        }
    }
    let trust_domain = td.to_string();
    Ok(Plan {
        workloads: layout::workloads(&trust_domain, ports),
        layout,
        ports,
        trust_domain,
        policies,
        uid: nix::unistd::getuid().as_raw(),
    })
}

/// `--reset` deletes the dir (only one `up` made); then the dir and its subdirs exist, 0700.
fn prepare_dir(root: &Path, reset: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let layout = Layout::new(root.to_path_buf());
    let exists = root.exists();
    let ours = layout.marker().exists();
    let empty = exists
        && std::fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if exists && !ours && !empty {
        anyhow::bail!(
            "`{}` exists and was not made by `warden up` (no `{}` file): choose another --dir",
            root.display(),
            layout::MARKER
        );
    }
    if reset && exists {
        std::fs::remove_dir_all(root)
            .with_context(|| format!("cannot delete `{}`", root.display()))?;
        say!("reset: deleted {}", root.display());
    }
    for d in [root.to_path_buf(), layout.logs_dir(), layout.bin_dir()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("cannot create `{}`", d.display()))?;
    }
    std::fs::write(
        layout.marker(),
        "made by `warden up`; `warden up --reset` deletes this directory\n",
    )
    .with_context(|| format!("cannot write `{}`", layout.marker().display()))?;
    Ok(())
}

/// An exclusive lock on the dir's marker file (none while there is no marker yet); fails if
/// another `warden up` holds it.
fn lock_dir(layout: &Layout) -> anyhow::Result<Option<Flock<std::fs::File>>> {
    let marker = layout.marker();
    let file = match std::fs::OpenOptions::new().read(true).open(&marker) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot open `{}`: {e}", marker.display()),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => anyhow::bail!(
            "another `warden up` is running with `{}`: stop it first (Ctrl-C in its terminal)",
            layout.root().display()
        ),
        Err((_, e)) => anyhow::bail!("cannot lock `{}`: {e}", marker.display()),
    }
}

/// Starts everything, prints the summary, then waits for a signal or a child's death.
async fn orchestrate(plan: Plan) -> anyhow::Result<Exit> {
    let mut signals = Signals::new()?;
    let mut sup = Supervisor::default();
    sup.remove_on_stop(plan.layout.sockets());
    say!(
        "warden up: local mesh for trust domain `{}` in {}",
        plan.trust_domain,
        plan.layout.root().display()
    );
    let outcome = tokio::select! {
        r = steps::start_all(&plan, &mut sup) => Some(r),
        sig = signals.recv() => {
            say!("\n{sig}: stopping what was started");
            None
        }
    };
    match outcome {
        None => {
            sup.stop_all(true);
            say!("stopped");
            return Ok(Exit::Ok);
        }
        Some(Err(err)) => {
            report_failure(&err);
            say!("stopping everything that was started");
            sup.stop_all(true);
            return Ok(err.exit);
        }
        Some(Ok(())) => {}
    }
    summary::print(&plan);
    loop {
        tokio::select! {
            sig = signals.recv() => {
                say!("\n{sig}: stopping");
                sup.stop_all(true);
                say!("stopped; state kept in {} (`--reset` starts over)", plan.layout.root().display());
                return Ok(Exit::Ok);
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some((child, status)) = sup.first_exited() {
                    let err = StepError::child(
                        child,
                        format!("{} exited unexpectedly ({status})", child.what),
                    );
                    report_failure(&err);
                    say!("stopping everything");
                    sup.stop_all(true);
                    return Ok(Exit::Error);
                }
            }
        }
    }
}

fn report_failure(err: &StepError) {
    eprintln!("error: {}", err.message);
    if let Some((log, lines)) = &err.log {
        if lines.is_empty() {
            eprintln!("  (its log `{}` is empty)", log.display());
        } else {
            eprintln!("  last lines of {}:", log.display());
            for l in lines {
                eprintln!("    | {l}");
            }
        }
    }
}
