//! Admin commands (`token`, `entry`, `node`, `bundle`, `audit`): thin clients of the CA's admin
//! API on its Unix socket. Tables for people (`--output table`), JSON for scripts (`--output json`).

mod bundle_fetch;
mod client;
mod duration;
mod output;

use std::path::PathBuf;

use anyhow::Context as _;
use warden_api::v1;

use self::client::{Conn, connect, rpc};
use self::duration::{parse_duration, parse_duration_or_default};
use self::output::{
    Output, print_agents, print_audit, print_bundles, print_entries, print_entry, print_json,
};
use super::Exit;

/// `warden token ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a single-use join token for a node agent (printed once; only its hash is stored).
    Create {
        /// How long the token stays valid: `600`, `90s`, `10m`, `2h`, `1d`.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        ttl: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a join token that has not been used (a leaked one, or one no longer needed).
    Revoke {
        /// The agent ID `token create` printed for it,
        /// `spiffe://<td>/agent/join_token/<token id>`.
        agent_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `warden entry ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EntryCommand {
    /// Register a workload (or node alias) entry.
    Create {
        #[command(flatten)]
        fields: EntryFields,
        #[command(flatten)]
        conn: Conn,
    },
    /// List entries, optionally filtered (all filters must match).
    List {
        /// Only entries with this parent.
        #[arg(long)]
        parent_id: Option<String>,
        /// Only entries with this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only entries having this selector.
        #[arg(long)]
        selector: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one entry.
    Show {
        /// The entry ID.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change an entry: given options replace the stored values (repeatable ones as a whole).
    Update {
        /// The entry ID.
        id: String,
        #[command(flatten)]
        fields: EntryUpdate,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an entry.
    Delete {
        /// The entry ID.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// The fields of a new entry.
#[derive(Debug, clap::Args)]
pub(crate) struct EntryFields {
    /// The SPIFFE ID handed out, e.g. `spiffe://example.org/web`; not the CA's own
    /// (`/warden/ca`) nor under `/agent/` (reserved).
    #[arg(long)]
    spiffe_id: String,
    /// The agent (or node alias) that may mint it; `spiffe://<td>/warden/ca` makes a node alias.
    #[arg(long)]
    parent_id: String,
    /// `type:key:value`, e.g. `unix:uid:1000`; repeat for several (all must match).
    #[arg(long = "selector", required = true)]
    selectors: Vec<String>,
    /// X.509-SVID lifetime (`1h`, `300`); the CA default when omitted.
    #[arg(long, value_parser = parse_duration)]
    x509_ttl: Option<u32>,
    /// JWT-SVID lifetime (`5m`); the CA default when omitted.
    #[arg(long, value_parser = parse_duration)]
    jwt_ttl: Option<u32>,
    /// DNS SAN for the X.509-SVID; repeatable.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// Trust domain whose bundle the workload also receives; repeatable.
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    /// Workload API hint.
    #[arg(long)]
    hint: Option<String>,
}

/// Changes to an entry; omitted options keep the stored value.
#[derive(Debug, clap::Args)]
pub(crate) struct EntryUpdate {
    /// New SPIFFE ID.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// New parent ID.
    #[arg(long)]
    parent_id: Option<String>,
    /// New selectors (replace all); repeatable.
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// New X.509-SVID lifetime (`0` for the CA default).
    #[arg(long, value_parser = parse_duration_or_default)]
    x509_ttl: Option<u32>,
    /// New JWT-SVID lifetime (`0` for the CA default).
    #[arg(long, value_parser = parse_duration_or_default)]
    jwt_ttl: Option<u32>,
    /// New DNS names (replace all); repeatable.
    #[arg(long = "dns-name", conflicts_with = "clear_dns_names")]
    dns_names: Vec<String>,
    /// Remove every DNS name.
    #[arg(long)]
    clear_dns_names: bool,
    /// New federated trust domains (replace all); repeatable.
    #[arg(long = "federates-with", conflicts_with = "clear_federates_with")]
    federates_with: Vec<String>,
    /// Remove every federated trust domain.
    #[arg(long)]
    clear_federates_with: bool,
    /// New hint (`""` clears it).
    #[arg(long)]
    hint: Option<String>,
}

/// `warden node ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum NodeCommand {
    /// List attested agents (banned ones included).
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Forget an agent: it can renew nothing and must attest again. Evicting a banned agent
    /// lifts its ban (as SPIRE's `agent evict` does): an x509pop node then attests again by
    /// itself, with its certificate.
    Evict {
        /// The agent's SPIFFE ID.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Ban an agent: it is refused (renewals, signing, a new attestation for the same ID) until
    /// it is evicted, and kept in the list as banned.
    Ban {
        /// The agent's SPIFFE ID.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Bundle document formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BundleFormat {
    /// PEM CA certificates (X.509 authorities only).
    Pem,
    /// The SPIFFE bundle format (a JWK set).
    Jwks,
}

/// `warden bundle ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BundleCommand {
    /// Print a bundle document: the CA's own by default. With `--output json`, the SPIFFE
    /// bundle (JWKS), whatever `--format` says.
    Show {
        /// Document format.
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
        /// Another (federated) trust domain's bundle instead of the own one.
        #[arg(long)]
        trust_domain: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the own and federated bundles.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Set a federated trust domain's bundle from a PEM or SPIFFE bundle (JWKS) file.
    Set {
        /// The federated trust domain (not the CA's own).
        #[arg(long)]
        trust_domain: String,
        /// The bundle file; `-` reads stdin.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Fetch a federated trust domain's bundle from its SPIFFE bundle endpoint and set it. An
    /// `https_spiffe` endpoint (the default) must present an X.509-SVID for exactly
    /// `--endpoint-spiffe-id` that verifies against the bundle the CA holds for that ID's trust
    /// domain (set the first with `bundle set`, or give `--trust-bundle`); an `https_web` one
    /// (`--profile https_web`) a WebPKI certificate for the URL's host that chains to the
    /// system's root certificates. The bundle it serves must be a valid SPIFFE bundle. Run it
    /// again (by a timer) to follow the peer's rotations.
    Fetch(bundle_fetch::FetchArgs),
    /// Delete a federated trust domain's bundle.
    Delete {
        /// The federated trust domain.
        trust_domain: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `warden audit ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// List audit records, oldest first.
    List {
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many records (1..=1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Recompute the hash chain; exit 1 naming the first bad record if it was tampered with.
    Verify {
        #[command(flatten)]
        conn: Conn,
    },
}

pub(crate) fn run_token(cmd: TokenCommand) -> anyhow::Result<Exit> {
    super::runtime()?.block_on(async {
        match cmd {
            TokenCommand::Create { ttl, conn } => {
                let mut c = connect(&conn).await?;
                let t = rpc(c
                    .create_join_token(v1::CreateJoinTokenRequest { ttl })
                    .await)?;
                match conn.output {
                    Output::Json => print_json(&serde_json::json!({
                        "token": t.token, "expires_at": t.expires_at, "agent_id": t.agent_id,
                    })),
                    Output::Table => {
                        outln!("token:      {}", t.token);
                        outln!("agent id:   {}", t.agent_id);
                        outln!("expires at: {}", output::time(t.expires_at));
                    }
                }
            }
            TokenCommand::Revoke { agent_id, conn } => {
                let mut c = connect(&conn).await?;
                rpc(c
                    .revoke_join_token(v1::AgentId {
                        spiffe_id: agent_id.clone(),
                    })
                    .await)?;
                done(conn.output, &format!("join token of `{agent_id}` revoked"));
            }
        }
        Ok(Exit::Ok)
    })
}

pub(crate) fn run_entry(cmd: EntryCommand) -> anyhow::Result<Exit> {
    super::runtime()?.block_on(async {
        match cmd {
            EntryCommand::Create { fields, conn } => {
                let mut c = connect(&conn).await?;
                let entry = v1::Entry {
                    spiffe_id: fields.spiffe_id,
                    parent_id: fields.parent_id,
                    selectors: fields.selectors,
                    x509_svid_ttl: fields.x509_ttl.unwrap_or(0),
                    jwt_svid_ttl: fields.jwt_ttl.unwrap_or(0),
                    dns_names: fields.dns_names,
                    federates_with: fields.federates_with,
                    hint: fields.hint.unwrap_or_default(),
                    ..v1::Entry::default()
                };
                print_entry(conn.output, &rpc(c.create_entry(entry).await)?);
            }
            EntryCommand::List {
                parent_id,
                spiffe_id,
                selector,
                conn,
            } => {
                let mut c = connect(&conn).await?;
                let filter = v1::ListEntriesFilter {
                    parent_id: parent_id.unwrap_or_default(),
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    selector: selector.unwrap_or_default(),
                };
                print_entries(conn.output, &rpc(c.list_entries(filter).await)?.entries);
            }
            EntryCommand::Show { id, conn } => {
                let mut c = connect(&conn).await?;
                print_entry(conn.output, &rpc(c.get_entry(v1::EntryId { id }).await)?);
            }
            EntryCommand::Update { id, fields, conn } => {
                let mut c = connect(&conn).await?;
                let mut e = rpc(c.get_entry(v1::EntryId { id }).await)?;
                apply_update(&mut e, fields);
                print_entry(conn.output, &rpc(c.update_entry(e).await)?);
            }
            EntryCommand::Delete { id, conn } => {
                let mut c = connect(&conn).await?;
                rpc(c.delete_entry(v1::EntryId { id: id.clone() }).await)?;
                done(conn.output, &format!("entry `{id}` deleted"));
            }
        }
        Ok(Exit::Ok)
    })
}

/// Applies the given options to the fetched entry; its revision stays, so a concurrent change
/// in between is refused by the CA rather than overwritten.
fn apply_update(e: &mut v1::Entry, f: EntryUpdate) {
    if let Some(v) = f.spiffe_id {
        e.spiffe_id = v;
    }
    if let Some(v) = f.parent_id {
        e.parent_id = v;
    }
    if !f.selectors.is_empty() {
        e.selectors = f.selectors;
    }
    if let Some(v) = f.x509_ttl {
        e.x509_svid_ttl = v;
    }
    if let Some(v) = f.jwt_ttl {
        e.jwt_svid_ttl = v;
    }
    if !f.dns_names.is_empty() || f.clear_dns_names {
        e.dns_names = f.dns_names;
    }
    if !f.federates_with.is_empty() || f.clear_federates_with {
        e.federates_with = f.federates_with;
    }
    if let Some(v) = f.hint {
        e.hint = v;
    }
}

pub(crate) fn run_node(cmd: NodeCommand) -> anyhow::Result<Exit> {
    super::runtime()?.block_on(async {
        match cmd {
            NodeCommand::List { conn } => {
                let mut c = connect(&conn).await?;
                print_agents(conn.output, &rpc(c.list_agents(v1::Empty {}).await)?.agents);
            }
            NodeCommand::Evict { id, conn } => {
                let mut c = connect(&conn).await?;
                rpc(c
                    .evict_agent(v1::AgentId {
                        spiffe_id: id.clone(),
                    })
                    .await)?;
                done(conn.output, &format!("agent `{id}` evicted"));
            }
            NodeCommand::Ban { id, conn } => {
                let mut c = connect(&conn).await?;
                rpc(c
                    .ban_agent(v1::AgentId {
                        spiffe_id: id.clone(),
                    })
                    .await)?;
                done(conn.output, &format!("agent `{id}` banned"));
            }
        }
        Ok(Exit::Ok)
    })
}

pub(crate) fn run_bundle(cmd: BundleCommand) -> anyhow::Result<Exit> {
    super::runtime()?.block_on(async {
        match cmd {
            BundleCommand::Show {
                format,
                trust_domain,
                conn,
            } => {
                let mut c = connect(&conn).await?;
                let req = v1::TrustDomainName {
                    trust_domain: trust_domain.unwrap_or_default(),
                };
                let bundle = output::bundle_from_proto(&rpc(c.get_bundle(req).await)?)?;
                match (conn.output, format) {
                    (Output::Table, BundleFormat::Pem) => out!("{}", bundle.to_pem()),
                    (Output::Json, _) | (_, BundleFormat::Jwks) => outln!("{}", bundle.to_jwks()),
                }
            }
            BundleCommand::List { conn } => {
                let mut c = connect(&conn).await?;
                print_bundles(
                    conn.output,
                    &rpc(c.list_bundles(v1::Empty {}).await)?.bundles,
                );
            }
            BundleCommand::Set {
                trust_domain,
                file,
                conn,
            } => {
                let bytes = if file.as_os_str() == "-" {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .context("cannot read the bundle from stdin")?;
                    buf
                } else {
                    std::fs::read(&file).with_context(|| {
                        format!("cannot read the bundle file `{}`", file.display())
                    })?
                };
                let mut c = connect(&conn).await?;
                let set = rpc(c
                    .set_bundle(v1::SetBundleRequest {
                        trust_domain,
                        bundle: bytes,
                    })
                    .await)?;
                print_bundles(conn.output, std::slice::from_ref(&set));
            }
            BundleCommand::Fetch(args) => bundle_fetch::run(args).await?,
            BundleCommand::Delete { trust_domain, conn } => {
                let mut c = connect(&conn).await?;
                rpc(c
                    .delete_bundle(v1::TrustDomainName {
                        trust_domain: trust_domain.clone(),
                    })
                    .await)?;
                done(conn.output, &format!("bundle `{trust_domain}` deleted"));
            }
        }
        Ok(Exit::Ok)
    })
}

pub(crate) fn run_audit(cmd: AuditCommand) -> anyhow::Result<Exit> {
    super::runtime()?.block_on(async {
        match cmd {
            AuditCommand::List { after, limit, conn } => {
                let mut c = connect(&conn).await?;
                let list = rpc(c.list_audit(v1::ListAuditRequest { after, limit }).await)?;
                print_audit(conn.output, &list.records);
                Ok(Exit::Ok)
            }
            AuditCommand::Verify { conn } => {
                let mut c = connect(&conn).await?;
                let v = rpc(c.verify_audit(v1::Empty {}).await)?;
                match conn.output {
                    Output::Json => print_json(&serde_json::json!({
                        "ok": v.ok, "records": v.records,
                        "first_bad_seq": if v.ok { None } else { Some(v.first_bad_seq) },
                        "problem": if v.ok { None } else { Some(&v.problem) },
                    })),
                    Output::Table if v.ok => {
                        outln!("audit log verified: {} records, chain intact", v.records)
                    }
                    Output::Table => {
                        outln!(
                            "audit log does not verify: first bad record is {}: {}",
                            v.first_bad_seq,
                            v.problem
                        );
                    }
                }
                Ok(if v.ok { Exit::Ok } else { Exit::Error })
            }
        }
    })
}

fn done(out: Output, message: &str) {
    match out {
        Output::Json => print_json(&serde_json::json!({ "ok": true, "message": message })),
        Output::Table => outln!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_replaces_only_given_fields() {
        let mut e = v1::Entry {
            spiffe_id: "spiffe://example.org/a".into(),
            selectors: vec!["unix:uid:1".into()],
            dns_names: vec!["a.example.org".into()],
            revision: 4,
            ..Default::default()
        };
        let upd = EntryUpdate {
            spiffe_id: None,
            parent_id: None,
            selectors: vec!["unix:uid:2".into()],
            x509_ttl: Some(60),
            jwt_ttl: None,
            dns_names: vec![],
            clear_dns_names: false,
            federates_with: vec![],
            clear_federates_with: false,
            hint: Some(String::new()),
        };
        apply_update(&mut e, upd);
        assert_eq!(e.selectors, vec!["unix:uid:2".to_owned()]);
        assert_eq!(e.dns_names, vec!["a.example.org".to_owned()]);
        assert_eq!(e.x509_svid_ttl, 60);
        assert_eq!(
            e.revision, 4,
            "the revision is kept for the optimistic check"
        );
    }

    /// `--clear-dns-names` and `--clear-federates-with` empty those lists (no list flag can:
    /// an empty one means "keep").
    #[test]
    fn update_clears_dns_names_and_federation_when_asked() {
        let mut e = v1::Entry {
            dns_names: vec!["a.example.org".into()],
            federates_with: vec!["other.org".into()],
            ..Default::default()
        };
        let cli = <crate::command::Cli as clap::Parser>::try_parse_from([
            "warden",
            "entry",
            "update",
            "some-id",
            "--clear-dns-names",
            "--clear-federates-with",
        ])
        .unwrap();
        let crate::command::Command::Entry(EntryCommand::Update { fields, .. }) = cli.command
        else {
            panic!("not an entry update");
        };
        apply_update(&mut e, fields);
        assert!(
            e.dns_names.is_empty() && e.federates_with.is_empty(),
            "{e:?}"
        );
        // Both a list and its clearing is a usage error.
        assert!(
            <crate::command::Cli as clap::Parser>::try_parse_from([
                "warden",
                "entry",
                "update",
                "some-id",
                "--clear-dns-names",
                "--dns-name",
                "b.example.org",
            ])
            .is_err()
        );
    }
}
