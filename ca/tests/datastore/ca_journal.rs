//! The CA journal, the issued-SVID log and the JWT-SVID issuance audit.

use warden_ca::datastore::{
    CaRecord, CaRecordKind, CaRecordState, DatastoreError, IssuedJwtSvid, IssuedSvid,
};

use super::harness::{AGENT, Backend, audit_kinds, backends};

fn record(id: &str, kind: CaRecordKind, state: CaRecordState, not_before: i64) -> CaRecord {
    CaRecord {
        kind,
        id: id.into(),
        der: vec![0x30, 0x03, 1, 2, 3],
        not_before,
        not_after: not_before + 100,
        state,
    }
}

#[tokio::test]
async fn ca_records_move_through_states_and_activation_is_audited_as_rotation() {
    for b in backends().await {
        let ds = &b.ds;
        ds.append_ca_record(&record(
            "root",
            CaRecordKind::Root,
            CaRecordState::Active,
            0,
        ))
        .await
        .unwrap();
        ds.append_ca_record(&record(
            "i1",
            CaRecordKind::Intermediate,
            CaRecordState::Active,
            10,
        ))
        .await
        .unwrap();
        ds.append_ca_record(&record(
            "i2",
            CaRecordKind::Intermediate,
            CaRecordState::Prepared,
            20,
        ))
        .await
        .unwrap();
        ds.set_ca_record_state("i2", CaRecordState::Active)
            .await
            .unwrap();
        ds.set_ca_record_state("i1", CaRecordState::Retired)
            .await
            .unwrap();
        ds.set_ca_record_state("i1", CaRecordState::Retired)
            .await
            .unwrap(); // no change, no record
        let records = ds.list_ca_records().await.unwrap();
        assert_eq!(
            records
                .iter()
                .map(|r| (r.id.as_str(), r.state))
                .collect::<Vec<_>>(),
            [
                ("root", CaRecordState::Active),
                ("i1", CaRecordState::Retired),
                ("i2", CaRecordState::Active)
            ]
        );
        assert_eq!(records[0].der, vec![0x30, 0x03, 1, 2, 3], "{}", b.name);
        let kinds = audit_kinds(ds).await;
        assert_eq!(
            kinds,
            [
                "ca.root",
                "ca.rotated",
                "ca.prepared",
                "ca.rotated",
                "ca.retired"
            ]
        );
        let err = ds
            .set_ca_record_state("nope", CaRecordState::Active)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "ca record `nope` not found");
        let err = ds
            .append_ca_record(&record(
                "i1",
                CaRecordKind::Jwt,
                CaRecordState::Prepared,
                30,
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, DatastoreError::AlreadyExists { .. }), "{err}");
    }
}

/// [`AGENT`] as attested, written without an audit record (the counts below are the SVIDs').
async fn admitted(b: &Backend) {
    b.raw_exec(&format!(
        "INSERT INTO agents (spiffe_id, attestor, selectors, serial, previous_serial, \
         expires_at, banned, attested_at, renewed_at) \
         VALUES ('{AGENT}', 'join_token', '[]', '01', NULL, 2000, false, 1000, 1000)"
    ))
    .await;
}

fn svid(n: usize) -> IssuedSvid {
    IssuedSvid {
        serial: format!("{n:032x}"),
        spiffe_id: format!("spiffe://example.org/w/{n}").parse().unwrap(),
        entry_id: format!("entry{n}"),
        issued_at: 1_000,
        expires_at: 4_600,
    }
}

#[tokio::test]
async fn issued_svids_are_logged_in_one_batch_with_one_audit_record_each() {
    for b in backends().await {
        let agent = AGENT.parse().unwrap();
        admitted(&b).await;
        let batch: Vec<IssuedSvid> = (0..1200).map(svid).collect();
        b.ds.record_issued_svids(&batch, &agent).await.unwrap();
        assert_eq!(b.count("issued_svids").await, 1200, "{}", b.name);
        let audit = b.ds.list_audit(0, 1000).await.unwrap();
        assert_eq!(audit.len(), 1000);
        assert_eq!(audit[7].kind, "svid.issued");
        assert_eq!(audit[7].actor, AGENT);
        assert_eq!(audit[7].subject, "spiffe://example.org/w/7");
        assert!(
            audit[7].detail.contains(&format!("{:032x}", 7)),
            "{}",
            audit[7].detail
        );
        assert!(b.ds.verify_audit().await.unwrap().is_ok());

        // A repeated serial fails the whole batch; nothing of it is written.
        let again = vec![svid(5000), svid(3)];
        let err = b.ds.record_issued_svids(&again, &agent).await.unwrap_err();
        assert!(matches!(err, DatastoreError::AlreadyExists { .. }), "{err}");
        assert_eq!(b.count("issued_svids").await, 1200);
        assert_eq!(b.count("audit_log").await, 1200);
    }
}

#[tokio::test]
async fn issued_jwt_svids_are_audited_with_audience_key_and_expiry() {
    for b in backends().await {
        let agent = AGENT.parse().unwrap();
        admitted(&b).await;
        let jwt = IssuedJwtSvid {
            spiffe_id: "spiffe://example.org/web".parse().unwrap(),
            entry_id: "entry1".into(),
            audience: vec!["billing".into(), "ledger".into()],
            kid: "jwt-key-1".into(),
            expires_at: 1_300,
        };
        b.ds.record_jwt_svid_issued(&jwt, &agent).await.unwrap();
        let audit = b.ds.list_audit(0, 0).await.unwrap();
        assert_eq!(audit.len(), 1, "{}", b.name);
        let r = &audit[0];
        assert_eq!(
            (r.kind.as_str(), r.actor.as_str(), r.subject.as_str()),
            ("jwt_svid.issued", AGENT, "spiffe://example.org/web")
        );
        let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
        assert_eq!(
            detail,
            serde_json::json!({
                "entry_id": "entry1",
                "audience": ["billing", "ledger"],
                "kid": "jwt-key-1",
                "expires_at": 1_300,
            })
        );
        assert_eq!(b.count("issued_svids").await, 0, "jwt-svids have no serial");
        assert!(b.ds.verify_audit().await.unwrap().is_ok());
    }
}

/// An agent evicted or banned while its request was signed gets nothing: the SVIDs are not
/// logged (nor, then, handed out), and the error names why.
#[tokio::test]
async fn svids_signed_for_an_agent_banned_or_evicted_meanwhile_are_not_logged() {
    for b in backends().await {
        let agent = AGENT.parse().unwrap();
        let jwt = IssuedJwtSvid {
            spiffe_id: "spiffe://example.org/web".parse().unwrap(),
            entry_id: "entry1".into(),
            audience: vec!["billing".into()],
            kid: "jwt-key-1".into(),
            expires_at: 1_300,
        };
        // Evicted (or never attested).
        let err =
            b.ds.record_issued_svids(&[svid(1)], &agent)
                .await
                .unwrap_err();
        assert!(
            matches!(err, DatastoreError::NotFound { .. }),
            "{}: {err}",
            b.name
        );
        let err = b.ds.record_jwt_svid_issued(&jwt, &agent).await.unwrap_err();
        assert!(matches!(err, DatastoreError::NotFound { .. }), "{err}");
        // Banned.
        admitted(&b).await;
        b.ds.ban_agent(&agent, "admin").await.unwrap();
        let err =
            b.ds.record_issued_svids(&[svid(1)], &agent)
                .await
                .unwrap_err();
        assert!(matches!(err, DatastoreError::AgentBanned(_)), "{err}");
        let err = b.ds.record_jwt_svid_issued(&jwt, &agent).await.unwrap_err();
        assert!(matches!(err, DatastoreError::AgentBanned(_)), "{err}");
        assert_eq!(b.count("issued_svids").await, 0, "{}", b.name);
        assert_eq!(b.count("audit_log").await, 1, "only the ban: {}", b.name);
    }
}
