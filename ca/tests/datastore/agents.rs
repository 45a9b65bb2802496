//! Agents: attestation (insert or replace), update-only renewal, eviction and bans.

use warden_ca::datastore::{AgentRecord, AgentRenewal, DatastoreError};

use super::harness::{ADMIN, AGENT, audit_kinds, backends};

fn agent(serial: &str) -> AgentRecord {
    AgentRecord {
        spiffe_id: AGENT.parse().unwrap(),
        attestor: "join_token".into(),
        selectors: vec!["x509pop:subject:cn:web".parse().unwrap()],
        serial: serial.into(),
        previous_serial: None,
        expires_at: 2_000,
        banned: false,
        attested_at: 1_000,
        renewed_at: 1_000,
    }
}

/// A renewal of [`AGENT`] from `presented` to `serial`.
fn renewal(presented: &str, serial: &str) -> AgentRenewal {
    AgentRenewal {
        spiffe_id: AGENT.parse().unwrap(),
        presented_serial: presented.into(),
        serial: serial.into(),
        expires_at: 2_500,
        renewed_at: 1_500,
    }
}

#[tokio::test]
async fn agent_attest_renew_and_list_round_trip() {
    for b in backends().await {
        let ds = &b.ds;
        let id = AGENT.parse().unwrap();
        assert_eq!(ds.get_agent(&id).await.unwrap(), None);
        ds.attest_agent(&agent("01")).await.unwrap();
        ds.renew_agent(&renewal("01", "02")).await.unwrap();
        let mut renewed = agent("02");
        renewed.previous_serial = Some("01".into());
        renewed.expires_at = 2_500;
        renewed.renewed_at = 1_500;
        assert_eq!(
            ds.get_agent(&id).await.unwrap(),
            Some(renewed.clone()),
            "{}",
            b.name
        );
        // Presenting a serial that is not the current one keeps the previous serial; presenting
        // the current one forgets it.
        ds.confirm_agent_serial(&id, "01").await.unwrap();
        assert_eq!(ds.get_agent(&id).await.unwrap(), Some(renewed.clone()));
        ds.confirm_agent_serial(&id, "02").await.unwrap();
        renewed.previous_serial = None;
        assert_eq!(ds.get_agent(&id).await.unwrap(), Some(renewed.clone()));
        assert_eq!(ds.list_agents().await.unwrap(), vec![renewed]);
        let audit = ds.list_audit(0, 0).await.unwrap();
        assert_eq!(
            audit.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            ["agent.attested", "agent.renewed"]
        );
        assert!(audit.iter().all(|r| r.actor == AGENT && r.subject == AGENT));
    }
}

#[tokio::test]
async fn renewal_after_eviction_ban_or_another_renewal_fails_and_writes_nothing() {
    for b in backends().await {
        let ds = &b.ds;
        let id = AGENT.parse().unwrap();
        ds.attest_agent(&agent("01")).await.unwrap();
        // A renewal that authenticated the agent just before an eviction commits after it.
        assert!(ds.get_agent(&id).await.unwrap().is_some());
        ds.evict_agent(&id, ADMIN).await.unwrap();
        let err = ds.renew_agent(&renewal("01", "02")).await.unwrap_err();
        assert!(
            matches!(err, DatastoreError::NotFound { what: "agent", .. }),
            "{}: {err}",
            b.name
        );
        assert_eq!(ds.get_agent(&id).await.unwrap(), None, "still evicted");

        // Two renewals from the same serial (a renewal whose reply was lost, done again; or an
        // agent and its copy): both succeed and the later one's serial is current; a renewal
        // from the serial it replaced is then refused.
        ds.attest_agent(&agent("01")).await.unwrap();
        ds.renew_agent(&renewal("01", "02")).await.unwrap();
        ds.renew_agent(&renewal("01", "03")).await.unwrap();
        let err = ds.renew_agent(&renewal("02", "04")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("agent `{AGENT}` svid serial `02` is no longer current (svid serial mismatch)")
        );
        let stored = ds.get_agent(&id).await.unwrap().unwrap();
        assert_eq!(
            (stored.serial.as_str(), stored.previous_serial.as_deref()),
            ("03", Some("01"))
        );

        ds.ban_agent(&id, ADMIN).await.unwrap();
        let err = ds.renew_agent(&renewal("03", "05")).await.unwrap_err();
        assert!(matches!(err, DatastoreError::AgentBanned(_)), "{err}");
        assert_eq!(ds.get_agent(&id).await.unwrap().unwrap().serial, "03");

        let kinds = audit_kinds(ds).await;
        assert_eq!(
            kinds,
            [
                "agent.attested",
                "agent.evicted",
                "agent.attested",
                "agent.renewed",
                "agent.renewed",
                "agent.banned"
            ],
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn banned_agent_is_kept_and_refused_until_evicted_and_evicted_agent_is_gone() {
    for b in backends().await {
        let ds = &b.ds;
        let id = AGENT.parse().unwrap();
        ds.attest_agent(&agent("01")).await.unwrap();
        ds.ban_agent(&id, ADMIN).await.unwrap();
        assert!(
            ds.get_agent(&id).await.unwrap().unwrap().banned,
            "{}",
            b.name
        );
        // A banned agent may not attest again.
        let err = ds.attest_agent(&agent("02")).await.unwrap_err();
        assert!(matches!(err, DatastoreError::AgentBanned(_)), "{err}");
        assert_eq!(err.to_string(), format!("agent `{AGENT}` is banned"));
        assert_eq!(
            ds.get_agent(&id).await.unwrap().unwrap().serial,
            "01",
            "the banned row is unchanged"
        );

        let other = "spiffe://example.org/agent/x509pop/abcd".parse().unwrap();
        let mut rec = agent("05");
        rec.spiffe_id = other;
        rec.attestor = "x509pop".into();
        ds.attest_agent(&rec).await.unwrap();
        ds.evict_agent(&rec.spiffe_id, ADMIN).await.unwrap();
        assert_eq!(ds.get_agent(&rec.spiffe_id).await.unwrap(), None);
        // An evicted agent may attest again.
        ds.attest_agent(&rec).await.unwrap();

        // Evicting the banned one lifts its ban (as SPIRE's eviction does), which the audit
        // record says.
        ds.evict_agent(&id, ADMIN).await.unwrap();
        ds.attest_agent(&agent("03")).await.unwrap();
        let evictions: Vec<String> = ds
            .list_audit(0, 0)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == "agent.evicted")
            .map(|r| r.detail)
            .collect();
        assert_eq!(
            evictions,
            [r#"{"was_banned":false}"#, r#"{"was_banned":true}"#],
            "{}",
            b.name
        );

        let unknown = "spiffe://example.org/agent/x509pop/none".parse().unwrap();
        let err = ds.evict_agent(&unknown, ADMIN).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "agent `spiffe://example.org/agent/x509pop/none` not found"
        );
        assert!(matches!(
            ds.ban_agent(&unknown, ADMIN).await,
            Err(DatastoreError::NotFound { .. })
        ));
        let kinds = audit_kinds(ds).await;
        assert_eq!(
            kinds,
            [
                "agent.attested",
                "agent.banned",
                "agent.attested",
                "agent.evicted",
                "agent.attested",
                "agent.evicted",
                "agent.attested"
            ]
        );
    }
}

#[tokio::test]
async fn agents_stored_before_the_previous_serial_column_upgrade_with_none() {
    for b in backends().await {
        // Back to the schema of migration 1, with an agent stored then.
        b.raw_exec(
            "DELETE FROM _sqlx_migrations WHERE version = 2; \
             ALTER TABLE agents DROP COLUMN previous_serial; \
             INSERT INTO agents (spiffe_id, attestor, selectors, serial, expires_at, banned, \
             attested_at, renewed_at) VALUES \
             ('spiffe://example.org/agent/join_token/0123456789abcdef', 'join_token', '[]', \
             '01', 2000, false, 1000, 1000)",
        )
        .await;
        b.ds.close().await;
        let ds = warden_ca::datastore::Datastore::open(&b.url).await.unwrap();
        let got = ds
            .get_agent(&AGENT.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.serial, "01", "{}", b.name);
        assert_eq!(got.previous_serial, None, "{}", b.name);
    }
}
