//! The nine start-up steps of `warden up`, each announced with a progress line, bounded by a
//! timeout, and — when it fails — explained with the child's last log lines.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::layout::{self, Workload};
use super::supervisor::{Running, Supervisor, one_shot};
use super::{Plan, probe};

/// Steps in all (the progress lines say `[i/TOTAL]`).
const TOTAL: usize = 9;
/// Bound for one-shot commands (`ca init`, `token create`, ...).
const ONE_SHOT: Duration = Duration::from_secs(60);
/// Bound for a server to become ready.
const READY: Duration = Duration::from_secs(30);
/// Bound for a sidecar: its first Workload API answer waits for the agent to attest it, which
/// hashes the sidecar's binary (seconds for an unoptimised build on a busy machine).
const SIDECAR_READY: Duration = Duration::from_secs(90);
/// How many log lines a failure shows.
const TAIL: usize = 15;

/// A failed step: what and why, and the log that explains it.
#[derive(Debug)]
pub(crate) struct StepError {
    pub(crate) message: String,
    pub(crate) log: Option<(PathBuf, Vec<String>)>,
    /// What `warden up` exits with: 1, or 3 for an invalid policy set.
    pub(crate) exit: crate::command::Exit,
}

/// What must hold for a child to count as ready.
enum Probe<'a> {
    /// `GET path` answers 200.
    Http(u16, &'static str),
    /// The Unix socket accepts connections.
    Socket(&'a Path),
}

// === impl StepError ===

impl StepError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            log: None,
            exit: crate::command::Exit::Error,
        }
    }

    /// A failure explained by `child`'s log.
    pub(crate) fn child(child: &Running, message: String) -> Self {
        Self {
            message,
            log: Some((child.log().to_path_buf(), child.tail(TAIL))),
            exit: crate::command::Exit::Error,
        }
    }

    /// A failed one-shot command, with what it printed.
    fn command(what: &str, out: &super::supervisor::Output) -> Self {
        let mut lines: Vec<String> = out
            .stderr
            .lines()
            .chain(out.stdout.lines())
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        lines.truncate(TAIL);
        let mut message = format!("{what} failed ({})", out.status);
        for l in lines {
            message.push_str("\n    | ");
            message.push_str(&l);
        }
        Self::new(message)
    }
}

impl From<anyhow::Error> for StepError {
    fn from(e: anyhow::Error) -> Self {
        Self::new(format!("{e:#}"))
    }
}

/// Runs one numbered step with its progress line.
macro_rules! step {
    ($n:expr, $label:expr, $body:expr) => {{
        {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "[{}/{}] {} … ", $n, TOTAL, $label);
            let _ = out.flush();
        }
        let t = Instant::now();
        let r: Result<String, StepError> = $body.await;
        let secs = t.elapsed().as_secs_f64();
        match &r {
            Ok(note) if note.is_empty() => say!("ready ({secs:.1} s)"),
            Ok(note) => say!("{note} ({secs:.1} s)"),
            Err(_) => say!("failed ({secs:.1} s)"),
        }
        r?
    }};
}

/// Runs every step in order; stops at the first failure (the caller stops the children).
pub(crate) async fn start_all(plan: &Plan, sup: &mut Supervisor) -> Result<(), StepError> {
    step!(1, "checking the policy set", check_policies(plan));
    step!(2, "initialising the trust domain", init_ca(plan));
    step!(3, "starting the CA", start_ca(plan, sup));
    let (token, agent_id) = {
        let mut got = None;
        step!(4, "creating a join token", async {
            let (token, agent_id, note) = create_token(plan).await?;
            got = Some((token, agent_id));
            Ok(note)
        });
        got.ok_or_else(|| StepError::new("internal: no join token"))?
    };
    step!(
        5,
        "registering the demo workloads",
        register(plan, &agent_id)
    );
    step!(6, "starting the node agent", start_agent(plan, sup, &token));
    step!(7, "starting the demo apps", start_apps(plan, sup));
    for (i, w) in plan.workloads.iter().enumerate() {
        step!(
            8 + i,
            format!("starting the {} sidecar", w.name),
            start_sidecar(plan, sup, w)
        );
    }
    Ok(())
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

async fn run_json(what: &str, args: &[&str]) -> Result<Value, StepError> {
    let out = one_shot(&os(args), ONE_SHOT).await?;
    if !out.status.success() {
        return Err(StepError::command(what, &out));
    }
    serde_json::from_str(&out.stdout)
        .map_err(|e| StepError::new(format!("{what} printed no JSON: {e}")))
}

async fn check_policies(plan: &Plan) -> Result<String, StepError> {
    let out = one_shot(&os(&["policy", "validate", p(&plan.policies)]), ONE_SHOT).await?;
    if !out.status.success() {
        let mut err = StepError::command(
            &format!("`warden policy validate {}`", plan.policies.display()),
            &out,
        );
        // 3 when the set is invalid (what `policy validate` says with 3); 1 for anything else.
        if out.status.code() == Some(3) {
            err.exit = crate::command::Exit::Invalid;
        }
        return Err(err);
    }
    Ok(format!("valid: {}", plan.policies.display()))
}

async fn init_ca(plan: &Plan) -> Result<String, StepError> {
    let ca_dir = plan.layout.ca_dir();
    if plan.layout.root_cert().exists() {
        let td = warden_ca::authority::read_trust_domain(&ca_dir)
            .map_err(|e| StepError::new(format!("the existing CA cannot be read: {e}")))?;
        if td.to_string() != plan.trust_domain {
            return Err(StepError::new(format!(
                "`{}` holds a CA for trust domain `{td}`, not `{}`: pass --trust-domain {td}, \
                 or --reset to delete it and start over",
                plan.layout.root().display(),
                plan.trust_domain
            )));
        }
        return Ok("reusing the existing CA".to_owned());
    }
    let out = one_shot(
        &os(&[
            "ca",
            "init",
            "--trust-domain",
            &plan.trust_domain,
            "--data-dir",
            p(&ca_dir),
        ]),
        ONE_SHOT,
    )
    .await?;
    if !out.status.success() {
        return Err(StepError::command("`warden ca init`", &out));
    }
    Ok("new root CA created".to_owned())
}

/// Polls `probes` until all pass, the child exits, or `timeout` passes.
async fn wait_ready(
    child: &mut Running,
    probes: &[Probe<'_>],
    timeout: Duration,
) -> Result<(), StepError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.exited() {
            return Err(StepError::child(
                child,
                format!("{} exited while starting ({status})", child.what),
            ));
        }
        let mut why = None;
        for probe in probes {
            let r = match probe {
                Probe::Http(port, path) => match probe::http_status(*port, path).await {
                    Ok(200) => Ok(()),
                    Ok(code) => Err(format!("127.0.0.1:{port}{path} answered {code}")),
                    Err(e) => Err(e),
                },
                Probe::Socket(path) => {
                    if probe::socket_accepts(path).await {
                        Ok(())
                    } else {
                        Err(format!(
                            "its socket `{}` accepts no connection",
                            path.display()
                        ))
                    }
                }
            };
            if let Err(e) = r {
                why = Some(e);
                break;
            }
        }
        let Some(why) = why else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(StepError::child(
                child,
                format!(
                    "{} was not ready within {} s: {why}",
                    child.what,
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_config(path: &Path, text: &str) -> Result<(), StepError> {
    std::fs::write(path, text)
        .map_err(|e| StepError::new(format!("cannot write `{}`: {e}", path.display())))
}

fn me() -> Result<PathBuf, StepError> {
    std::env::current_exe()
        .map_err(|e| StepError::new(format!("cannot find the `warden` binary: {e}")))
}

async fn start_ca(plan: &Plan, sup: &mut Supervisor) -> Result<String, StepError> {
    let l = &plan.layout;
    let admin = l.admin_socket();
    if probe::socket_accepts(&admin).await {
        return Err(StepError::new(format!(
            "another CA is already serving `{}` (its admin socket `{}` answers): stop it first",
            l.root().display(),
            admin.display()
        )));
    }
    // A socket file left by a killed run would stop the CA from binding.
    let _ = std::fs::remove_file(&admin);
    write_config(&l.ca_config(), &layout::ca_toml(l, plan.ports))?;
    let child = sup.start(
        "the CA",
        &me()?,
        &os(&["ca", "serve", "--config", p(&l.ca_config())]),
        &[],
        &l.log("ca"),
    )?;
    wait_ready(
        child,
        &[
            Probe::Http(plan.ports.ca_http(), "/readyz"),
            Probe::Socket(&admin),
        ],
        READY,
    )
    .await?;
    Ok(format!(
        "ready on 127.0.0.1:{} (SQLite datastore)",
        plan.ports.ca()
    ))
}

/// A fresh join token (its agent ID parents the entries); agents of earlier runs are evicted.
async fn create_token(plan: &Plan) -> Result<(String, String, String), StepError> {
    let admin = plan.layout.admin_socket();
    let conn = ["--admin-socket", p(&admin), "--output", "json"];
    let agents = run_json(
        "`warden node list`",
        &[&["node", "list"], &conn[..]].concat(),
    )
    .await?;
    let mut evicted = 0;
    for a in agents.as_array().into_iter().flatten() {
        let (Some(id), Some(false)) = (
            a.get("spiffe_id").and_then(Value::as_str),
            a.get("banned").and_then(Value::as_bool),
        ) else {
            continue;
        };
        run_json(
            "`warden node evict`",
            &[&["node", "evict", id], &conn[..]].concat(),
        )
        .await?;
        evicted += 1;
    }
    let t = run_json(
        "`warden token create`",
        &[&["token", "create", "--ttl", "10m"], &conn[..]].concat(),
    )
    .await?;
    let (Some(token), Some(agent_id)) = (
        t.get("token").and_then(Value::as_str),
        t.get("agent_id").and_then(Value::as_str),
    ) else {
        return Err(StepError::new("`warden token create` printed no token"));
    };
    let note = if evicted > 0 {
        format!("done; evicted {evicted} agent(s) of an earlier run")
    } else {
        "done".to_owned()
    };
    Ok((token.to_owned(), agent_id.to_owned(), note))
}

/// Links the sidecar binaries and (re)creates one entry per workload: its SPIFFE ID for a
/// process of this uid running that sidecar binary, minted by the new agent.
async fn register(plan: &Plan, agent_id: &str) -> Result<String, StepError> {
    let admin = plan.layout.admin_socket();
    let conn = ["--admin-socket", p(&admin), "--output", "json"];
    let exe = me()?;
    for w in &plan.workloads {
        let link = plan.layout.sidecar_exe(w.name);
        link_binary(&exe, &link)?;
        let existing = run_json(
            "`warden entry list`",
            &[&["entry", "list", "--spiffe-id", &w.spiffe_id], &conn[..]].concat(),
        )
        .await?;
        for e in existing.as_array().into_iter().flatten() {
            if let Some(id) = e.get("id").and_then(Value::as_str) {
                run_json(
                    "`warden entry delete`",
                    &[&["entry", "delete", id], &conn[..]].concat(),
                )
                .await?;
            }
        }
        let path_sel = format!("unix:path:{}", link.display());
        let uid_sel = format!("unix:uid:{}", plan.uid);
        run_json(
            "`warden entry create`",
            &[
                &[
                    "entry",
                    "create",
                    "--spiffe-id",
                    &w.spiffe_id,
                    "--parent-id",
                    agent_id,
                    "--selector",
                    &path_sel,
                    "--selector",
                    &uid_sel,
                ],
                &conn[..],
            ]
            .concat(),
        )
        .await?;
    }
    Ok(format!(
        "{} entries (unix:path of each sidecar binary + unix:uid:{})",
        plan.workloads.len(),
        plan.uid
    ))
}

/// `link` becomes a hard link to `exe` (a copy across file systems), replacing an old one so a
/// rebuilt binary is picked up.
fn link_binary(exe: &Path, link: &Path) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |e: std::io::Error| {
        StepError::new(format!(
            "cannot place the sidecar binary `{}`: {e}",
            link.display()
        ))
    };
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    if std::fs::hard_link(exe, link).is_err() {
        std::fs::copy(exe, link).map_err(fail)?;
        std::fs::set_permissions(link, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    }
    Ok(())
}

async fn start_agent(plan: &Plan, sup: &mut Supervisor, token: &str) -> Result<String, StepError> {
    let l = &plan.layout;
    // A fresh agent every run: it attests with the new token, so its ID is the entries' parent.
    let dir = l.agent_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StepError::new(format!(
                "cannot clear `{}`: {e}",
                dir.display()
            )));
        }
    }
    write_config(&l.agent_config(), &layout::agent_toml(l, plan.ports))?;
    let socket = l.agent_socket();
    let child = sup.start(
        "the node agent",
        &me()?,
        &os(&["agent", "run", "--config", p(&l.agent_config())]),
        &[("WARDEN_JOIN_TOKEN", token)],
        &l.log("agent"),
    )?;
    wait_ready(
        child,
        &[
            Probe::Http(plan.ports.agent_http(), "/readyz"),
            Probe::Socket(&socket),
        ],
        READY,
    )
    .await?;
    Ok(format!("attested; workload API at {}", socket.display()))
}

async fn start_apps(plan: &Plan, sup: &mut Supervisor) -> Result<String, StepError> {
    let exe = me()?;
    for w in &plan.workloads {
        let listen = format!("127.0.0.1:{}", w.app_port);
        let child = sup.start(
            &format!("the {} demo app", w.name),
            &exe,
            &os(&["demo-app", "--listen", &listen, "--name", w.name]),
            &[],
            &plan.layout.log(&format!("app-{}", w.name)),
        )?;
        wait_ready(child, &[Probe::Http(w.app_port, "/healthz")], READY).await?;
    }
    let names: Vec<&str> = plan.workloads.iter().map(|w| w.name).collect();
    Ok(format!("ready: {}", names.join(", ")))
}

async fn start_sidecar(
    plan: &Plan,
    sup: &mut Supervisor,
    w: &Workload,
) -> Result<String, StepError> {
    let l = &plan.layout;
    let config = l.sidecar_config(w.name);
    write_config(&config, &layout::sidecar_toml(l, w, &plan.policies))?;
    let child = sup.start(
        &format!("the {} sidecar", w.name),
        &l.sidecar_exe(w.name),
        &os(&["sidecar", "run", "--config", p(&config)]),
        &[],
        &l.log(&format!("sidecar-{}", w.name)),
    )?;
    wait_ready(
        child,
        &[Probe::Http(w.admin_port, "/readyz")],
        SIDECAR_READY,
    )
    .await?;
    Ok(format!("ready as {}", w.spiffe_id))
}
