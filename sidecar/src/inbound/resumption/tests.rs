use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_identity::test_util::TestCa;
use warden_identity::tls::BundleSource;
use warden_identity::{BundleSet, JwtAuthority, SharedBundles};

use super::*;

const MINUTE: Duration = Duration::from_secs(60);

fn tickets(source: &Arc<SharedBundles>, lifetime: Duration, settle: Duration) -> Tickets {
    Tickets::new(epochs(source), lifetime, settle).unwrap()
}

fn epochs(source: &Arc<SharedBundles>) -> Arc<TrustEpochs> {
    let source: Arc<dyn BundleSource> = Arc::clone(source) as _;
    Arc::new(TrustEpochs::new(source))
}

fn source(cas: &[&TestCa]) -> Arc<SharedBundles> {
    Arc::new(SharedBundles::new(TestCa::bundle_set(cas)))
}

#[test]
fn a_ticket_gives_back_the_session_it_was_made_from() {
    let ca = TestCa::new("example.org");
    let t = tickets(&source(&[&ca]), MINUTE, MINUTE);
    let ticket = t.encrypt(b"session").unwrap();
    assert!(
        !ticket.windows(7).any(|w| w == b"session"),
        "the session is encrypted"
    );
    assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
    assert_eq!(t.lifetime(), 60);
}

#[test]
fn a_ticket_altered_cut_or_made_up_is_refused() {
    let ca = TestCa::new("example.org");
    let t = tickets(&source(&[&ca]), MINUTE, MINUTE);
    let ticket = t.encrypt(b"session").unwrap();
    for i in [0, ticket.len() / 2, ticket.len() - 1] {
        let mut altered = ticket.clone();
        altered[i] ^= 1;
        assert_eq!(t.decrypt(&altered), None, "byte {i} flipped");
    }
    assert_eq!(t.decrypt(&ticket[..ticket.len() - 1]), None);
    assert_eq!(t.decrypt(&[]), None);
    assert_eq!(t.decrypt(&[0u8; 64]), None);
    // Another sidecar's (another key's) ticket.
    let other = tickets(&source(&[&ca]), MINUTE, MINUTE);
    assert_eq!(other.decrypt(&ticket), None);
}

#[test]
fn a_change_of_x509_authorities_voids_earlier_tickets_and_new_ones_wait_out_the_handshake_timeout()
{
    let ca = TestCa::new("example.org");
    let src = source(&[&ca]);
    let settle = Duration::from_millis(300);
    let t = tickets(&src, MINUTE, settle);
    let before = t.encrypt(b"session").unwrap();
    let rotated = TestCa::new("example.org");
    let mut both = ca.bundle();
    both.add_x509_authority(rotated.root_cert().clone());
    src.set(std::iter::once(both).collect());
    assert_eq!(t.decrypt(&before), None, "issued under the old authorities");
    assert_eq!(
        t.encrypt(b"session"),
        None,
        "a handshake verified under the old authorities may still be finishing"
    );
    let waited = Instant::now();
    let after = loop {
        if let Some(ticket) = t.encrypt(b"session") {
            break ticket;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(waited.elapsed() >= settle - Duration::from_millis(50));
    assert_eq!(t.decrypt(&after).as_deref(), Some(&b"session"[..]));
}

#[test]
fn a_federated_trust_domain_added_or_removed_is_a_change_of_authorities() {
    let ca = TestCa::new("example.org");
    let partner = TestCa::new("partner.org");
    let src = source(&[&ca, &partner]);
    let t = tickets(&src, MINUTE, Duration::ZERO);
    let ticket = t.encrypt(b"session").unwrap();
    src.set(TestCa::bundle_set(&[&ca]));
    assert_eq!(t.decrypt(&ticket), None, "partner.org removed");
    let ticket = t.encrypt(b"session").unwrap();
    src.set(TestCa::bundle_set(&[&ca, &partner]));
    assert_eq!(t.decrypt(&ticket), None, "partner.org added");
}

#[test]
fn the_same_authorities_again_or_new_jwt_keys_keep_tickets() {
    let ca = TestCa::new("example.org");
    let src = source(&[&ca]);
    let t = tickets(&src, MINUTE, MINUTE);
    let ticket = t.encrypt(b"session").unwrap();
    // The Workload API sends the bundle again with every SVID.
    src.set(TestCa::bundle_set(&[&ca]));
    assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
    let mut with_jwt = ca.bundle();
    with_jwt.add_jwt_authority(JwtAuthority::new("k1", vec![1, 2, 3], None));
    src.set(std::iter::once(with_jwt).collect());
    assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
    assert!(
        t.encrypt(b"session").is_some(),
        "no settling without a change"
    );
}

#[test]
fn tickets_are_issued_at_once_when_the_first_authorities_arrive() {
    // Before the first bundle no chain verified, so no handshake can be finishing under it.
    let src = Arc::new(SharedBundles::new(BundleSet::new()));
    let t = tickets(&src, MINUTE, MINUTE);
    let ca = TestCa::new("example.org");
    src.set(TestCa::bundle_set(&[&ca]));
    let ticket = t.encrypt(b"session").unwrap();
    assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
}

#[test]
fn a_ticket_is_not_honoured_past_its_lifetime() {
    let ca = TestCa::new("example.org");
    let t = tickets(&source(&[&ca]), Duration::from_secs(1), Duration::ZERO);
    assert_eq!(t.lifetime(), 1);
    let ticket = t.encrypt(b"session").unwrap();
    // Issue times are whole seconds: 1 s lifetime ends within 2 s.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(t.decrypt(&ticket), None);
}

#[test]
fn a_ticket_from_the_future_is_refused() {
    let ca = TestCa::new("example.org");
    let t = tickets(&source(&[&ca]), MINUTE, Duration::ZERO);
    let mut tagged = 0u64.to_le_bytes().to_vec();
    let later = unix_secs(SystemTime::now()) + 3600;
    tagged.extend_from_slice(&later.to_le_bytes());
    tagged.extend_from_slice(b"session");
    let forged = t.inner.encrypt(&tagged).unwrap();
    assert_eq!(t.decrypt(&forged), None);
    // The same made now is honoured: the header is what was refused.
    let mut tagged = 0u64.to_le_bytes().to_vec();
    tagged.extend_from_slice(&unix_secs(SystemTime::now()).to_le_bytes());
    tagged.extend_from_slice(b"session");
    let made = t.inner.encrypt(&tagged).unwrap();
    assert_eq!(t.decrypt(&made).as_deref(), Some(&b"session"[..]));
}

#[test]
fn debug_shows_no_key() {
    let ca = TestCa::new("example.org");
    let t = tickets(&source(&[&ca]), MINUTE, MINUTE);
    let shown = format!("{t:?}");
    assert!(shown.starts_with("Tickets {"), "{shown}");
    assert!(!shown.contains("key"), "{shown}");
}

/// Authorities A, then B, then A again, with no ticket issued or presented under B: a chain
/// verified under B (the verifier reads the epochs) must not get a ticket that resumes under A.
#[test]
fn a_change_seen_only_by_the_verifier_and_undone_still_moves_the_epoch() {
    let a = TestCa::new("example.org");
    let b = TestCa::new("example.org");
    let src = source(&[&a]);
    let epochs = epochs(&src);
    let t = Tickets::new(Arc::clone(&epochs), MINUTE, Duration::from_millis(300)).unwrap();
    let before = t.encrypt(b"session").unwrap();
    src.set(TestCa::bundle_set(&[&b]));
    let verified_under = epochs.bundles();
    assert_eq!(
        verified_under
            .get(b.trust_domain())
            .unwrap()
            .x509_authorities(),
        [b.root_cert().clone()]
    );
    src.set(TestCa::bundle_set(&[&a]));
    assert_eq!(
        t.encrypt(b"session"),
        None,
        "the handshake verified under B may be finishing"
    );
    assert_eq!(
        t.decrypt(&before),
        None,
        "A, B and A again are three epochs"
    );
}

/// A, then a set without X.509 authorities, then B, all within one handshake timeout: a
/// handshake verified under A may still be finishing under B.
#[test]
fn a_set_without_authorities_between_two_does_not_end_the_settle_window() {
    let a = TestCa::new("example.org");
    let b = TestCa::new("example.org");
    let src = source(&[&a]);
    let t = tickets(&src, MINUTE, MINUTE);
    assert!(t.encrypt(b"session").is_some());
    src.set(BundleSet::new());
    assert_eq!(t.encrypt(b"session"), None);
    src.set(TestCa::bundle_set(&[&b]));
    assert_eq!(
        t.encrypt(b"session"),
        None,
        "still within A's settle window"
    );
}
