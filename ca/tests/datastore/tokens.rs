//! Join tokens: hashed storage, single use under concurrency, expiry, unknown tokens.

use warden_ca::datastore::{
    AgentRecord, DatastoreError, TokenError, join_token_agent_id, join_token_hash,
};

use super::harness::{ADMIN, audit_kinds, backends};

#[tokio::test]
async fn join_token_is_single_use_under_concurrent_consumption() {
    for b in backends().await {
        let hash = join_token_hash("token-concurrent");
        b.ds.create_join_token(&hash, i64::MAX / 2, ADMIN)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let ds = b.ds.clone();
            tasks.push(tokio::spawn(async move {
                ds.consume_join_token(&hash, 1_000).await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => wins += 1,
                Err(TokenError::AlreadyUsed) => {}
                Err(other) => panic!("{}: unexpected {other}", b.name),
            }
        }
        assert_eq!(wins, 1, "exactly one concurrent consumer wins ({})", b.name);
        let used =
            b.ds.list_audit(0, 0)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.kind == "token.used")
                .count();
        assert_eq!(used, 1);
    }
}

#[tokio::test]
async fn expired_reused_and_unknown_tokens_are_refused_by_name() {
    for b in backends().await {
        let ds = &b.ds;
        let expired = join_token_hash("expired");
        ds.create_join_token(&expired, 100, ADMIN).await.unwrap();
        let err = ds.consume_join_token(&expired, 100).await.unwrap_err();
        assert!(matches!(err, TokenError::Expired), "{}: {err}", b.name);
        assert_eq!(err.to_string(), "join token expired");

        let fresh = join_token_hash("fresh");
        ds.create_join_token(&fresh, 200, ADMIN).await.unwrap();
        ds.consume_join_token(&fresh, 150).await.unwrap();
        let err = ds.consume_join_token(&fresh, 150).await.unwrap_err();
        assert!(matches!(err, TokenError::AlreadyUsed), "{err}");
        assert_eq!(err.to_string(), "join token was already used");

        let err = ds
            .consume_join_token(&join_token_hash("never"), 150)
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::Unknown), "{err}");
        assert_eq!(err.to_string(), "join token is unknown");
    }
}

#[tokio::test]
async fn token_is_stored_and_audited_only_as_a_hash() {
    for b in backends().await {
        let token = "s3cr3t-join-token-value";
        b.ds.create_join_token(&join_token_hash(token), 500, ADMIN)
            .await
            .unwrap();
        b.ds.consume_join_token(&join_token_hash(token), 10)
            .await
            .unwrap();
        let audit = b.ds.list_audit(0, 0).await.unwrap();
        assert_eq!(audit.len(), 2);
        let td = "example.org".parse().unwrap();
        let agent = join_token_agent_id(&td, token);
        let short = agent.as_str().rsplit('/').next().unwrap();
        assert_eq!(short.len(), 16);
        for r in &audit {
            assert!(
                !format!("{r:?}").contains(token),
                "{}: token leaked into {r:?}",
                b.name
            );
            assert_eq!(r.subject, short, "audit names the token by its hash prefix");
        }
        if b.name == "sqlite" {
            let file = std::fs::read(b.url.trim_start_matches("sqlite:")).unwrap();
            let wal = std::fs::read(format!("{}-wal", b.url.trim_start_matches("sqlite:")))
                .unwrap_or_default();
            let needle = token.as_bytes();
            assert!(
                !file.windows(needle.len()).any(|w| w == needle)
                    && !wal.windows(needle.len()).any(|w| w == needle)
            );
        }
    }
}

#[tokio::test]
async fn join_token_attestation_consumes_the_token_and_records_the_agent_or_neither() {
    for b in backends().await {
        let ds = &b.ds;
        let td = "example.org".parse().unwrap();
        let agent = |token: &str| AgentRecord {
            spiffe_id: join_token_agent_id(&td, token),
            attestor: "join_token".into(),
            selectors: vec![],
            serial: "01".into(),
            previous_serial: None,
            expires_at: 2_000,
            banned: false,
            attested_at: 1_000,
            renewed_at: 1_000,
        };
        // The agent's ID is banned: the agent is not written, so neither is the token's use.
        let hash = join_token_hash("tok-banned-id");
        ds.create_join_token(&hash, 500, ADMIN).await.unwrap();
        let rec = agent("tok-banned-id");
        ds.attest_agent(&rec).await.unwrap();
        ds.ban_agent(&rec.spiffe_id, ADMIN).await.unwrap();
        let err = ds
            .attest_agent_with_join_token(&hash, 10, &rec)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TokenError::Datastore(DatastoreError::AgentBanned(_))),
            "{}: {err}",
            b.name
        );
        assert_eq!(
            audit_kinds(ds).await,
            ["token.created", "agent.attested", "agent.banned"]
        );
        // An unknown token records no agent.
        let other = agent("tok-unknown");
        let err = ds
            .attest_agent_with_join_token(&join_token_hash("tok-unknown"), 10, &other)
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::Unknown), "{err}");
        assert_eq!(ds.get_agent(&other.spiffe_id).await.unwrap(), None);
        // A good one does both.
        let hash = join_token_hash("tok-good");
        ds.create_join_token(&hash, 500, ADMIN).await.unwrap();
        let good = agent("tok-good");
        ds.attest_agent_with_join_token(&hash, 10, &good)
            .await
            .unwrap();
        assert_eq!(ds.get_agent(&good.spiffe_id).await.unwrap(), Some(good));
        assert!(matches!(
            ds.consume_join_token(&hash, 10).await,
            Err(TokenError::AlreadyUsed)
        ));
        assert_eq!(
            audit_kinds(ds).await[3..],
            ["token.created", "token.used", "agent.attested"]
        );
    }
}

#[test]
fn join_token_agent_id_uses_the_first_16_hex_chars_of_the_token_hash() {
    let td = "example.org".parse().unwrap();
    let id = join_token_agent_id(&td, "abc");
    let expected = &hex::encode(join_token_hash("abc"))[..16];
    assert_eq!(
        id.as_str(),
        format!("spiffe://example.org/agent/join_token/{expected}")
    );
}

/// An unused token can be revoked by its ID (its agent ID's last segment): it then attests
/// nothing. A used one is refused (its agent is evicted or banned instead), as are an unknown
/// ID and one that is no token ID.
#[tokio::test]
async fn an_unused_join_token_can_be_revoked_and_then_attests_nothing() {
    for b in backends().await {
        let ds = &b.ds;
        let td = "example.org".parse().unwrap();
        let id_of = |token: &str| {
            join_token_agent_id(&td, token)
                .path()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        };
        let leaked = join_token_hash("leaked");
        ds.create_join_token(&leaked, i64::MAX / 2, ADMIN)
            .await
            .unwrap();
        ds.revoke_join_token(&id_of("leaked"), ADMIN).await.unwrap();
        let err = ds.consume_join_token(&leaked, 1_000).await.unwrap_err();
        assert!(matches!(err, TokenError::Unknown), "{}: {err}", b.name);
        assert!(
            audit_kinds(ds).await.contains(&"token.revoked".to_owned()),
            "{}",
            b.name
        );

        let used = join_token_hash("used");
        ds.create_join_token(&used, i64::MAX / 2, ADMIN)
            .await
            .unwrap();
        ds.consume_join_token(&used, 1_000).await.unwrap();
        let err = ds
            .revoke_join_token(&id_of("used"), ADMIN)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("already used"),
            "{}: {err}",
            b.name
        );

        let err = ds
            .revoke_join_token(&id_of("never-created"), ADMIN)
            .await
            .unwrap_err();
        assert!(
            matches!(err, DatastoreError::NotFound { .. }),
            "{}: {err}",
            b.name
        );
        let err = ds.revoke_join_token("0123'; --", ADMIN).await.unwrap_err();
        assert!(
            err.to_string().contains("is not a join token id"),
            "{}: {err}",
            b.name
        );
    }
}
