//! `warden policy`: validate, format, test, evaluate and diff Cedar policy sets.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use warden_policy::{Decision, LoadError, PolicySet, RequestSpec};

use super::Exit;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCommand {
    /// Load a policy directory and validate it against its schema in strict mode.
    Validate {
        /// The policy directory (`*.cedar`, one `*.cedarschema`, optional `entities.json`, `links.json`).
        dir: PathBuf,
    },
    /// Rewrite every `.cedar` file in canonical format (or, with `--check`, list the ones that differ).
    Fmt {
        /// Only check; exit 1 if a file is not formatted.
        #[arg(long)]
        check: bool,
        /// The policy directory.
        dir: PathBuf,
    },
    /// Run the `*.test.toml` policy tests of a directory.
    Test {
        /// The policy directory.
        dir: PathBuf,
    },
    /// Decide one request and explain why.
    Eval {
        /// The policy directory.
        dir: PathBuf,
        /// The caller's SPIFFE ID, or `anonymous`.
        #[arg(long)]
        principal: String,
        /// `GET`, `POST`, … , `grpc` or `connect`.
        #[arg(long)]
        action: String,
        /// The service name.
        #[arg(long)]
        resource: String,
        /// Request path.
        #[arg(long, default_value = "")]
        path: String,
        /// Query string, without `?`.
        #[arg(long, default_value = "")]
        query: String,
        /// A header, `name=value` (repeatable).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The caller's IP address.
        #[arg(long, default_value = "127.0.0.1")]
        source: IpAddr,
        /// TLS version of the session (default `TLSv1.3` for a SPIFFE caller).
        #[arg(long)]
        tls_version: Option<String>,
        /// Request time, `YYYY-MM-DDThh:mm:ss[.sss]Z` (default: now).
        #[arg(long, value_parser = check_time)]
        time: Option<String>,
    },
    /// Replay recorded requests against two policy sets and list every changed decision.
    Diff {
        /// The policy set in force.
        old_dir: PathBuf,
        /// The candidate policy set.
        new_dir: PathBuf,
        /// Decision log of the sidecar (JSON lines).
        #[arg(long)]
        requests: PathBuf,
    },
}

pub(crate) fn run(cmd: PolicyCommand) -> anyhow::Result<Exit> {
    super::init_tracing();
    match cmd {
        PolicyCommand::Validate { dir } => Ok(match PolicySet::load(&dir) {
            Ok(set) => {
                outln!(
                    "ok: {} policies, version {}",
                    set.policies().len(),
                    set.version()
                );
                Exit::Ok
            }
            Err(e) => report(&e, Exit::Invalid),
        }),
        PolicyCommand::Fmt { check, dir } => fmt(&dir, check),
        PolicyCommand::Test { dir } => test(&dir),
        PolicyCommand::Eval {
            dir,
            principal,
            action,
            resource,
            path,
            query,
            headers,
            source,
            tls_version,
            time,
        } => {
            let mut spec = RequestSpec {
                principal,
                action,
                resource,
                path,
                query,
                headers,
                source,
                tls_version,
                time,
            };
            spec.canonicalize();
            eval(&dir, &spec)
        }
        PolicyCommand::Diff {
            old_dir,
            new_dir,
            requests,
        } => diff(&old_dir, &new_dir, &requests),
    }
}

fn check_time(s: &str) -> Result<String, String> {
    warden_policy::parse_time(s)
        .map(|_| s.to_owned())
        .ok_or_else(|| format!("time `{s}` is not `YYYY-MM-DDThh:mm:ss[.sss]Z`"))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("header `{s}` is not `name=value`"))?;
    if name.is_empty() {
        return Err(format!("header `{s}` has an empty name"));
    }
    Ok((name.to_ascii_lowercase(), value.to_owned()))
}

/// Prints every problem on stderr and returns `exit`.
fn report(e: &LoadError, exit: Exit) -> Exit {
    for p in e.problems() {
        eprintln!("error: {p}");
    }
    eprintln!("{} error(s)", e.problems().len());
    exit
}

fn load(dir: &Path) -> Result<PolicySet, Exit> {
    PolicySet::load(dir).map_err(|e| report(&e, Exit::Invalid))
}

fn fmt(dir: &Path, check: bool) -> anyhow::Result<Exit> {
    let files = match warden_policy::format_dir(dir) {
        Ok(f) => f,
        Err(e) => return Ok(report(&e, Exit::Invalid)),
    };
    let mut unformatted = 0;
    for f in files.iter().filter(|f| f.changed()) {
        unformatted += 1;
        if check {
            outln!("not formatted: {}", f.path().display());
        } else {
            replace_file(f.path(), f.formatted())
                .map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", f.path().display()))?;
            outln!("formatted: {}", f.path().display());
        }
    }
    Ok(if check && unformatted > 0 {
        Exit::Error
    } else {
        Exit::Ok
    })
}

/// Replaces the file at `path` with `text`: written in full beside it first (`.<name>.fmt.tmp`,
/// with the file's permissions), then renamed over it. A failure leaves the file as it was, and
/// a sidecar reloading the directory never reads half of it: an empty or cut policy file is
/// still a valid set, with fewer policies in it.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.fmt.tmp"));
    let permissions = std::fs::metadata(path)?.permissions();
    let written = (|| {
        let mut file = std::fs::File::create_new(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.set_permissions(permissions)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn test(dir: &Path) -> anyhow::Result<Exit> {
    let set = match load(dir) {
        Ok(s) => s,
        Err(exit) => return Ok(exit),
    };
    let report_ = match warden_policy::run_tests(&set, dir) {
        Ok(r) => r,
        Err(e) => return Ok(report(&e, Exit::Error)),
    };
    for r in report_.results().iter().filter(|r| !r.passed()) {
        outln!("FAIL {} ({})", r.name(), r.file().display());
        let expected_ids = r
            .expected_policies()
            .map(|p| format!(" by [{}]", p.join(", ")))
            .unwrap_or_default();
        let expected_error = r
            .expected_error()
            .map(|e| format!(", an error containing `{e}`"))
            .unwrap_or_default();
        outln!("  expected: {}{expected_ids}{expected_error}", r.expected());
        let malformed = match (r.decision().request_error(), r.decision().errors()) {
            (Some(_), _) => ", request error (the request itself is malformed)",
            (None, []) => "",
            (None, _) => ", a policy errored",
        };
        outln!(
            "  got:      {} by [{}]{malformed}",
            r.decision().outcome(),
            r.decision().policy_ids().join(", ")
        );
        for e in r.decision().errors() {
            outln!("  error:    {e}");
        }
    }
    outln!("{} passed, {} failed", report_.passed(), report_.failed());
    Ok(if report_.failed() > 0 {
        Exit::Denied
    } else {
        Exit::Ok
    })
}

fn eval(dir: &Path, spec: &RequestSpec) -> anyhow::Result<Exit> {
    let set = match load(dir) {
        Ok(s) => s,
        Err(exit) => return Ok(exit),
    };
    let time = spec.parsed_time().map_err(|e| anyhow::anyhow!(e))?;
    let headers = spec.header_refs();
    let decision = set.decide(&spec.request(&headers, time));
    print_decision(&set, &decision, "");
    Ok(if decision.is_allowed() {
        Exit::Ok
    } else {
        Exit::Denied
    })
}

fn print_decision(set: &PolicySet, decision: &Decision, indent: &str) {
    outln!("{indent}decision: {}", decision.outcome());
    outln!("{indent}version:  {}", set.version());
    if decision.policy_ids().is_empty() {
        outln!("{indent}policies: none (default deny)");
    }
    for id in decision.policy_ids() {
        let location = set
            .policy(id)
            .and_then(|p| p.location())
            .map(ToString::to_string)
            .unwrap_or_default();
        outln!("{indent}policy:   {id} ({location})");
    }
    for e in decision.errors() {
        outln!("{indent}error:    {e}");
    }
}

fn diff(old_dir: &Path, new_dir: &Path, requests: &Path) -> anyhow::Result<Exit> {
    let (old, new) = match (load(old_dir), load(new_dir)) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(exit), _) | (_, Err(exit)) => return Ok(exit),
    };
    let report_ = match warden_policy::diff(&old, &new, requests) {
        Ok(r) => r,
        Err(e) => return Ok(report(&e, Exit::Error)),
    };
    for c in report_.changes() {
        let r = c.record();
        let who = r.peer_spiffe_id.as_deref().unwrap_or("anonymous");
        outln!(
            "{}:{}: {who} {} {} {}: {} -> {}",
            requests.display(),
            c.line(),
            r.action,
            r.resource,
            r.path,
            c.old().outcome(),
            c.new_decision().outcome()
        );
        outln!("  old: [{}]", c.old().policy_ids().join(", "));
        outln!("  new: [{}]", c.new_decision().policy_ids().join(", "));
        for e in c.new_decision().errors() {
            outln!("  error: {e}");
        }
        if r.has_redacted_values() {
            outln!(
                "  note: replayed with <redacted> in place of a logged credential; the real value may decide otherwise"
            );
        }
    }
    outln!(
        "{} requests replayed, {} decisions change",
        report_.replayed(),
        report_.changes().len()
    );
    if report_.replayed_redacted() > 0 {
        outln!(
            "{} replayed requests had header or query values logged as <redacted>; policies reading them saw that text",
            report_.replayed_redacted()
        );
    }
    Ok(Exit::Ok)
}
