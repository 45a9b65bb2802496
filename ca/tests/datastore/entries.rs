//! Registration entries: CRUD, validation that leaves the store unchanged, alias resolution.

use warden_ca::datastore::{DatastoreError, EntryError, EntryFilter, MAX_X509_SVID_TTL};

use super::harness::{ADMIN, AGENT, audit_kinds, backends, new_entry};

#[tokio::test]
async fn entry_crud_round_trips_bumps_revision_and_audits_each_change() {
    for b in backends().await {
        let ds = &b.ds;
        let mut e = new_entry(
            "web",
            AGENT,
            &["unix:uid:1000", "unix:gid:10", "unix:uid:1000"],
        );
        e.dns_names = vec!["Web.Example.org".into()];
        e.x509_svid_ttl = 600;
        e.federates_with = vec!["other.org".parse().unwrap()];
        e.hint = "internal".into();
        let created = ds.create_entry(&e, ADMIN).await.unwrap();
        assert_eq!(created.id.len(), 32, "{}", b.name);
        assert_eq!(created.revision, 1);
        assert_eq!(created.selectors.len(), 2, "selectors are deduplicated");
        assert_eq!(created.dns_names, vec!["web.example.org".to_owned()]);
        assert_eq!(
            ds.get_entry(&created.id).await.unwrap(),
            created,
            "{}",
            b.name
        );

        let mut changed = created.clone();
        changed.selectors = vec!["unix:uid:2000".parse().unwrap()];
        let updated = ds.update_entry(&changed, ADMIN).await.unwrap();
        assert_eq!(updated.revision, 2);
        assert_eq!(updated.created_at, created.created_at);
        assert_eq!(ds.get_entry(&created.id).await.unwrap(), updated);

        // A stale revision is refused; revision 0 means "whatever is stored".
        let err = ds.update_entry(&changed, ADMIN).await.unwrap_err();
        assert!(
            matches!(err, DatastoreError::Conflict { expected: 1, .. }),
            "{err}"
        );
        changed.revision = 0;
        assert_eq!(ds.update_entry(&changed, ADMIN).await.unwrap().revision, 3);

        ds.delete_entry(&created.id, ADMIN).await.unwrap();
        let err = ds.get_entry(&created.id).await.unwrap_err();
        assert_eq!(err.to_string(), format!("entry `{}` not found", created.id));
        let err = ds.delete_entry(&created.id, ADMIN).await.unwrap_err();
        assert!(
            matches!(err, DatastoreError::NotFound { what: "entry", .. }),
            "{err}"
        );

        let kinds = audit_kinds(ds).await;
        assert_eq!(
            kinds,
            [
                "entry.created",
                "entry.updated",
                "entry.updated",
                "entry.deleted"
            ],
            "{}",
            b.name
        );
        assert!(
            ds.list_audit(0, 0)
                .await
                .unwrap()
                .iter()
                .all(|r| r.actor == ADMIN)
        );
    }
}

#[tokio::test]
async fn invalid_entries_are_refused_and_leave_the_store_unchanged() {
    for b in backends().await {
        let ds = &b.ds;
        let mut no_selectors = new_entry("a", AGENT, &[]);
        no_selectors.selectors.clear();
        let mut ttl = new_entry("a", AGENT, &["unix:uid:1"]);
        ttl.x509_svid_ttl = MAX_X509_SVID_TTL + 1;
        let mut short_ttl = new_entry("a", AGENT, &["unix:uid:1"]);
        short_ttl.jwt_svid_ttl = 1;
        let mut dns = new_entry("a", AGENT, &["unix:uid:1"]);
        dns.dns_names = vec!["bad_name.example.org".into()];
        let mut root = new_entry("a", AGENT, &["unix:uid:1"]);
        root.spiffe_id = "spiffe://example.org".parse().unwrap();
        // The CA's own ID (agents trust the CA by it) and agent IDs (the agent API takes a caller
        // with one for that agent) are reserved, under any parent, node aliases included.
        let ca_id = new_entry("warden/ca", AGENT, &["unix:uid:1"]);
        let agent_id = new_entry("agent/join_token/ffffffffffffffff", AGENT, &["unix:uid:1"]);
        let alias_as_agent = new_entry(
            "agent/x509pop/aa",
            "spiffe://example.org/warden/ca",
            &["x509pop:subject:cn:web"],
        );
        for (bad, want) in [
            (no_selectors, "has no selectors"),
            (ttl, "x509_svid_ttl `2592001` is out of range"),
            (short_ttl, "jwt_svid_ttl `1` is out of range"),
            (dns, "dns name `bad_name.example.org` is invalid"),
            (root, "has no path"),
            (
                ca_id,
                "entry spiffe id `spiffe://example.org/warden/ca` is reserved: it is the ca's own id",
            ),
            (agent_id, "is reserved: ids under `/agent/` are agent ids"),
            (
                alias_as_agent,
                "`spiffe://example.org/agent/x509pop/aa` is reserved",
            ),
        ] {
            let err = ds.create_entry(&bad, ADMIN).await.unwrap_err();
            assert!(matches!(err, DatastoreError::InvalidEntry(_)), "{err}");
            assert!(err.to_string().contains(want), "{}: {err}", b.name);
        }
        // An invalid update of an existing entry changes nothing either.
        let good = ds
            .create_entry(&new_entry("ok", AGENT, &["unix:uid:1"]), ADMIN)
            .await
            .unwrap();
        let mut short_ttl = good.clone();
        short_ttl.x509_svid_ttl = 2;
        let mut reserved = good.clone();
        reserved.spiffe_id = "spiffe://example.org/warden/ca".parse().unwrap();
        for bad in [short_ttl, reserved] {
            let err = ds.update_entry(&bad, ADMIN).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    DatastoreError::InvalidEntry(
                        EntryError::TtlOutOfRange { .. } | EntryError::ReservedId { .. }
                    )
                ),
                "{err}"
            );
        }
        assert_eq!(ds.get_entry(&good.id).await.unwrap(), good);
        assert_eq!(b.count("entries").await, 1, "{}", b.name);
        assert_eq!(
            b.count("audit_log").await,
            1,
            "only the good entry was audited ({})",
            b.name
        );
    }
}

#[tokio::test]
async fn duplicate_entry_is_refused_as_already_exists() {
    for b in backends().await {
        let e = new_entry("web", AGENT, &["unix:uid:1", "unix:gid:2"]);
        b.ds.create_entry(&e, ADMIN).await.unwrap();
        // Same selectors in another order are the same entry.
        let again = new_entry("web", AGENT, &["unix:gid:2", "unix:uid:1"]);
        let err = b.ds.create_entry(&again, ADMIN).await.unwrap_err();
        assert!(
            matches!(err, DatastoreError::AlreadyExists { what: "entry", .. }),
            "{}: {err}",
            b.name
        );
        assert!(
            err.to_string().contains("spiffe://example.org/web"),
            "{err}"
        );
        assert_eq!(b.count("entries").await, 1);
        assert_eq!(b.count("audit_log").await, 1);
    }
}

#[tokio::test]
async fn list_entries_filters_by_parent_spiffe_id_and_selector() {
    for b in backends().await {
        let ds = &b.ds;
        let other = "spiffe://example.org/agent/join_token/ffffffffffffffff";
        ds.create_entry(&new_entry("a", AGENT, &["unix:uid:1"]), ADMIN)
            .await
            .unwrap();
        ds.create_entry(&new_entry("b", AGENT, &["unix:uid:2"]), ADMIN)
            .await
            .unwrap();
        ds.create_entry(&new_entry("a", other, &["unix:uid:2"]), ADMIN)
            .await
            .unwrap();
        assert_eq!(
            ds.list_entries(&EntryFilter::default())
                .await
                .unwrap()
                .len(),
            3
        );
        let by_parent = EntryFilter {
            parent_id: Some(AGENT.parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            ds.list_entries(&by_parent).await.unwrap().len(),
            2,
            "{}",
            b.name
        );
        let by_id = EntryFilter {
            spiffe_id: Some("spiffe://example.org/a".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(ds.list_entries(&by_id).await.unwrap().len(), 2);
        let by_sel = EntryFilter {
            selector: Some("unix:uid:2".parse().unwrap()),
            ..Default::default()
        };
        let found = ds.list_entries(&by_sel).await.unwrap();
        assert_eq!(found.len(), 2);
        let all = EntryFilter {
            selector: Some("unix:uid:2".parse().unwrap()),
            ..by_parent
        };
        let found = ds.list_entries(&all).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].spiffe_id.as_str(), "spiffe://example.org/b");
    }
}

#[tokio::test]
async fn entries_for_agent_resolves_node_aliases_whose_selectors_the_agent_has() {
    for b in backends().await {
        let ds = &b.ds;
        let ca = "spiffe://example.org/warden/ca";
        // Alias 1 matches (all its selectors are the agent's); alias 2 needs one it lacks.
        ds.create_entry(
            &new_entry("alias/web-nodes", ca, &["x509pop:subject:cn:web"]),
            ADMIN,
        )
        .await
        .unwrap();
        ds.create_entry(
            &new_entry(
                "alias/db-nodes",
                ca,
                &["x509pop:subject:cn:web", "x509pop:subject:cn:db"],
            ),
            ADMIN,
        )
        .await
        .unwrap();
        let direct = ds
            .create_entry(&new_entry("direct", AGENT, &["unix:uid:1"]), ADMIN)
            .await
            .unwrap();
        let via_alias = ds
            .create_entry(
                &new_entry(
                    "via-alias",
                    "spiffe://example.org/alias/web-nodes",
                    &["unix:uid:2"],
                ),
                ADMIN,
            )
            .await
            .unwrap();
        ds.create_entry(
            &new_entry(
                "via-db",
                "spiffe://example.org/alias/db-nodes",
                &["unix:uid:3"],
            ),
            ADMIN,
        )
        .await
        .unwrap();
        ds.create_entry(
            &new_entry(
                "elsewhere",
                "spiffe://example.org/agent/x509pop/aa",
                &["unix:uid:4"],
            ),
            ADMIN,
        )
        .await
        .unwrap();

        let agent = AGENT.parse().unwrap();
        let selectors = vec!["x509pop:subject:cn:web".parse().unwrap()];
        let got = ds.entries_for_agent(&agent, &selectors).await.unwrap();
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [direct.id.as_str(), via_alias.id.as_str()],
            "{}",
            b.name
        );

        // Without node selectors only the direct entry remains.
        let got = ds.entries_for_agent(&agent, &[]).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, direct.id);
    }
}

/// An entry whose SPIFFE ID is reserved (the CA's own, an agent's) that is in the datastore
/// anyway (stored before such IDs were refused, or written around the CA) is never handed to
/// an agent, so never issued.
#[tokio::test]
async fn a_stored_entry_with_a_reserved_id_is_not_handed_to_agents() {
    for b in backends().await {
        let ds = &b.ds;
        let kept = ds
            .create_entry(&new_entry("web", AGENT, &["unix:uid:1"]), ADMIN)
            .await
            .unwrap();
        for (name, reserved) in [
            ("as-ca", "spiffe://example.org/warden/ca"),
            (
                "as-agent",
                "spiffe://example.org/agent/join_token/0123456789abcdef",
            ),
        ] {
            let e = ds
                .create_entry(&new_entry(name, AGENT, &["unix:uid:1"]), ADMIN)
                .await
                .unwrap();
            b.raw_exec(&format!(
                "UPDATE entries SET spiffe_id = '{reserved}' WHERE id = '{}'",
                e.id
            ))
            .await;
        }
        let got = ds
            .entries_for_agent(&AGENT.parse().unwrap(), &[])
            .await
            .unwrap();
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, [kept.id.as_str()], "{}", b.name);

        // A node alias with another agent's ID would hand that agent's entries to every agent
        // with its selectors: it is no parent.
        let other = "spiffe://example.org/agent/x509pop/other";
        ds.create_entry(&new_entry("theirs", other, &["unix:uid:2"]), ADMIN)
            .await
            .unwrap();
        let alias = ds
            .create_entry(
                &new_entry(
                    "alias/nodes",
                    "spiffe://example.org/warden/ca",
                    &["x509pop:subject:cn:n"],
                ),
                ADMIN,
            )
            .await
            .unwrap();
        b.raw_exec(&format!(
            "UPDATE entries SET spiffe_id = '{other}' WHERE id = '{}'",
            alias.id
        ))
        .await;
        let selectors = ["x509pop:subject:cn:n".parse().unwrap()];
        let got = ds
            .entries_for_agent(&AGENT.parse().unwrap(), &selectors)
            .await
            .unwrap();
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [kept.id.as_str()],
            "{}: an alias with a reserved id",
            b.name
        );
    }
}
