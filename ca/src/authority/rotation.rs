//! The rotation schedule of intermediates and JWT keys, and loading them from the journal.
//!
//! The plan is a pure function of the keys' lifetimes and phases at a point in time
//! ([`plan`]), so the schedule is unit-tested without a datastore or sleeping.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::CertificateDer;
use warden_identity::{Bundle, JwtAuthority, JwtSigner};
use zeroize::Zeroizing;

use super::{
    Authority, AuthorityError, Intermediate, JwtKey, KEYS_DIR, Phase, Published, files, keys,
};
use crate::datastore::{CA_ACTOR, CaRecord, CaRecordKind, CaRecordState, Datastore};

/// One key's schedule-relevant facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) phase: Phase,
    /// Whether its private key is at hand (a key without one can never become active).
    pub(crate) usable: bool,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Indexes of expired keys, to drop from the bundle (and retire in the journal).
    pub(crate) expire: Vec<usize>,
    /// Index of the key to retire (the active one being replaced).
    pub(crate) retire: Option<usize>,
    /// Index of the prepared key to activate.
    pub(crate) activate: Option<usize>,
    /// Create a new key in this phase.
    pub(crate) create: Option<Phase>,
}

/// The schedule: an active key is needed at all times; the next one is prepared at half of
/// the active one's life and activated when a sixth of it remains.
pub(crate) fn plan(slots: &[Slot], now: SystemTime) -> Plan {
    let mut out = Plan::default();
    let live = |s: &Slot| s.not_after > now;
    for (i, s) in slots.iter().enumerate() {
        if !live(s) {
            out.expire.push(i);
        }
    }
    let active = slots
        .iter()
        .position(|s| live(s) && s.usable && s.phase == Phase::Active);
    let prepared = slots
        .iter()
        .position(|s| live(s) && s.usable && s.phase == Phase::Prepared);
    match (active, prepared) {
        (None, Some(p)) => out.activate = Some(p),
        (None, None) => out.create = Some(Phase::Active),
        (Some(a), prepared) => {
            let Some(s) = slots.get(a) else {
                return out;
            };
            let life = s.not_after.duration_since(s.not_before).unwrap_or_default();
            let elapsed = now.duration_since(s.not_before).unwrap_or_default();
            let remaining = s.not_after.duration_since(now).unwrap_or_default();
            match prepared {
                None if elapsed * 2 >= life => out.create = Some(Phase::Prepared),
                Some(p) if remaining * 6 <= life => {
                    out.activate = Some(p);
                    out.retire = Some(a);
                }
                _ => {}
            }
        }
    }
    // Any other stale "active" key (e.g. without its key file) is retired too.
    for (i, s) in slots.iter().enumerate() {
        if s.phase == Phase::Active && live(s) && Some(i) != active && out.retire.is_none() {
            out.retire = Some(i);
        }
    }
    out
}

fn phase_of(state: CaRecordState) -> Phase {
    match state {
        CaRecordState::Prepared => Phase::Prepared,
        CaRecordState::Active => Phase::Active,
        CaRecordState::Retired => Phase::Retired,
    }
}

fn state_of(phase: Phase) -> CaRecordState {
    match phase {
        Phase::Prepared => CaRecordState::Prepared,
        Phase::Active => CaRecordState::Active,
        Phase::Retired => CaRecordState::Retired,
    }
}

fn intermediate_key_path(data_dir: &Path, serial: &str) -> std::path::PathBuf {
    data_dir
        .join(KEYS_DIR)
        .join(format!("intermediate-{serial}.key.pem"))
}

fn jwt_key_path(data_dir: &Path, kid: &str) -> std::path::PathBuf {
    data_dir.join(KEYS_DIR).join(format!("jwt-{kid}.key.pem"))
}

type Loaded = (Vec<(Arc<Intermediate>, Phase)>, Vec<(Arc<JwtKey>, Phase)>);

/// Whether `der` was signed by the key of `root` (so it chains to the current root).
fn issued_by(der: &[u8], root: &CertificateDer<'_>) -> bool {
    let Ok((_, root)) = x509_parser::parse_x509_certificate(root.as_ref()) else {
        return false;
    };
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, cert)| cert.verify_signature(Some(root.public_key())).is_ok())
}

/// Loads unexpired intermediates and JWT keys from the journal, with their keys when present.
/// Intermediates not signed by `root` (left from a root replaced with `ca init --force`) are
/// dropped: they must not stay trusted through the bundle.
pub(crate) async fn load_journal(
    data_dir: &Path,
    ds: &Datastore,
    root: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<Loaded, AuthorityError> {
    let mut x509 = Vec::new();
    let mut jwt = Vec::new();
    for r in ds.list_ca_records().await? {
        let not_after = keys::from_unix(r.not_after);
        if not_after <= now {
            continue;
        }
        let phase = phase_of(r.state);
        match r.kind {
            CaRecordKind::Root => {}
            CaRecordKind::Intermediate => {
                if !issued_by(&r.der, root) {
                    tracing::warn!(serial = %r.id, "intermediate not issued by the current root; dropped from the bundle");
                    continue;
                }
                let cert = CertificateDer::from(r.der.clone());
                let path = intermediate_key_path(data_dir, &r.id);
                let issuer = if phase == Phase::Retired {
                    None
                } else {
                    match files::read_key_pem(&path) {
                        Ok(key) => Issuer::from_ca_cert_der(&cert, key).ok(),
                        Err(err) if err.is_key_exposure() => {
                            tracing::error!(serial = %r.id, error = %err, "intermediate key not used; if it may have leaked, its holder can sign SVIDs that chain to the root until it expires: make a new root");
                            None
                        }
                        Err(err) => {
                            tracing::warn!(serial = %r.id, error = %err, "intermediate key unavailable; it will be replaced");
                            None
                        }
                    }
                };
                x509.push((
                    Arc::new(Intermediate {
                        serial: r.id.clone(),
                        cert,
                        issuer,
                        not_before: keys::from_unix(r.not_before),
                        not_after,
                    }),
                    phase,
                ));
            }
            CaRecordKind::Jwt => {
                let path = jwt_key_path(data_dir, &r.id);
                let signer = if phase == Phase::Retired {
                    None
                } else {
                    match files::read_secret(&path, "jwt signing key") {
                        Ok(b) => pem::parse(b.as_slice()).ok().and_then(|p| {
                            let der = Zeroizing::new(p.into_contents());
                            JwtSigner::from_pkcs8(r.id.clone(), &der).ok()
                        }),
                        Err(err) if err.is_key_exposure() => {
                            tracing::error!(kid = %r.id, error = %err, "jwt signing key not used; if it may have leaked, its holder can forge JWT-SVIDs while it is in the bundle: make a new root");
                            None
                        }
                        Err(err) => {
                            tracing::warn!(kid = %r.id, error = %err, "jwt signing key unavailable");
                            None
                        }
                    }
                };
                jwt.push((
                    Arc::new(JwtKey {
                        kid: r.id.clone(),
                        spki: r.der.clone(),
                        signer,
                        not_before: keys::from_unix(r.not_before),
                        not_after,
                    }),
                    phase,
                ));
            }
        }
    }
    Ok((x509, jwt))
}

// === impl Authority ===

impl Authority {
    pub(crate) async fn tick_inner(&self, force_publish: bool) -> Result<bool, AuthorityError> {
        let _guard = self.rotate_lock.lock().await;
        let now = self.clock.now();
        let current = self.read().clone();
        let mut changed = force_publish;

        // X.509 intermediates.
        let slots: Vec<Slot> = current
            .x509
            .iter()
            .map(|(i, p)| Slot {
                not_before: i.not_before,
                not_after: i.not_after,
                phase: *p,
                usable: i.issuer.is_some(),
            })
            .collect();
        let p = plan(&slots, now);
        let mut x509 = current.x509.clone();
        changed |= self.apply_x509(&p, &mut x509, now).await?;

        // JWT keys.
        let slots: Vec<Slot> = current
            .jwt
            .iter()
            .map(|(k, p)| Slot {
                not_before: k.not_before,
                not_after: k.not_after,
                phase: *p,
                usable: k.signer.is_some(),
            })
            .collect();
        let p = plan(&slots, now);
        let mut jwt = current.jwt.clone();
        changed |= self.apply_jwt(&p, &mut jwt, now).await?;

        if !changed {
            return Ok(false);
        }
        let mut bundle = Bundle::new(self.td.clone());
        bundle.add_x509_authority(self.root_cert.clone());
        for (i, _) in &x509 {
            bundle.add_x509_authority(i.cert.clone());
        }
        for (k, _) in &jwt {
            bundle.add_jwt_authority(JwtAuthority::new(
                k.kid.clone(),
                k.spki.clone(),
                Some(k.not_after),
            ));
        }
        bundle.set_sequence(current.bundle.sequence().saturating_add(1));
        let hint = (self.ttls.ca / 6).clamp(Duration::from_secs(1), Duration::from_secs(300));
        bundle.set_refresh_hint(hint);
        self.ds.set_bundle(&bundle, CA_ACTOR).await?;
        tracing::info!(
            sequence = bundle.sequence(),
            intermediates = x509.len(),
            jwt_keys = jwt.len(),
            "trust bundle published"
        );
        self.publish(Published {
            x509,
            jwt,
            bundle: Arc::new(bundle),
        });
        Ok(true)
    }

    /// The validity of a new CA key starting now, capped at the root's expiry.
    fn new_validity(&self, now: SystemTime) -> Result<SystemTime, AuthorityError> {
        let not_after = (now + self.ttls.ca).min(self.root_not_after);
        if not_after <= now + Duration::from_secs(1) {
            return Err(AuthorityError::Config(
                "the root ca has expired: no new intermediate can be signed (run `warden ca init --force`)".into(),
            ));
        }
        Ok(not_after)
    }

    async fn set_state(&self, id: &str, phase: Phase) -> Result<(), AuthorityError> {
        self.ds.set_ca_record_state(id, state_of(phase)).await?;
        Ok(())
    }

    async fn apply_x509(
        &self,
        p: &Plan,
        list: &mut Vec<(Arc<Intermediate>, Phase)>,
        now: SystemTime,
    ) -> Result<bool, AuthorityError> {
        let mut changed = false;
        if let Some(i) = p.retire
            && let Some(slot) = list.get_mut(i)
        {
            self.set_state(&slot.0.serial, Phase::Retired).await?;
            slot.1 = Phase::Retired;
            changed = true;
        }
        if let Some(i) = p.activate
            && let Some(slot) = list.get_mut(i)
        {
            self.set_state(&slot.0.serial, Phase::Active).await?;
            slot.1 = Phase::Active;
            tracing::info!(serial = %slot.0.serial, "intermediate ca activated");
            changed = true;
        }
        for &i in p.expire.iter().rev() {
            if let Some((old, phase)) = list.get(i) {
                if *phase != Phase::Retired {
                    self.set_state(&old.serial, Phase::Retired).await?;
                }
                list.remove(i);
                changed = true;
            }
        }
        if let Some(phase) = p.create {
            let not_after = self.new_validity(now)?;
            let (cert, key, serial) = keys::new_intermediate(
                &self.td,
                &self.root_issuer,
                &PKCS_ECDSA_P256_SHA256,
                now - keys::BACKDATE,
                not_after,
            )
            .map_err(AuthorityError::Certificate)?;
            files::write_secret(
                &intermediate_key_path(&self.data_dir, &serial),
                Zeroizing::new(key.serialize_pem()).as_bytes(),
            )?;
            self.ds
                .append_ca_record(&CaRecord {
                    kind: CaRecordKind::Intermediate,
                    id: serial.clone(),
                    der: cert.to_vec(),
                    not_before: keys::unix(now),
                    not_after: keys::unix(not_after),
                    state: state_of(phase),
                })
                .await?;
            let issuer = Issuer::from_ca_cert_der(&cert, key)
                .map_err(|e| AuthorityError::Certificate(e.to_string()))?;
            tracing::info!(serial = %serial, phase = phase.as_str(), "intermediate ca created");
            list.push((
                Arc::new(Intermediate {
                    serial,
                    cert,
                    issuer: Some(issuer),
                    not_before: now,
                    not_after,
                }),
                phase,
            ));
            changed = true;
        }
        Ok(changed)
    }

    async fn apply_jwt(
        &self,
        p: &Plan,
        list: &mut Vec<(Arc<JwtKey>, Phase)>,
        now: SystemTime,
    ) -> Result<bool, AuthorityError> {
        let mut changed = false;
        if let Some(i) = p.retire
            && let Some(slot) = list.get_mut(i)
        {
            self.set_state(&slot.0.kid, Phase::Retired).await?;
            slot.1 = Phase::Retired;
            changed = true;
        }
        if let Some(i) = p.activate
            && let Some(slot) = list.get_mut(i)
        {
            self.set_state(&slot.0.kid, Phase::Active).await?;
            slot.1 = Phase::Active;
            tracing::info!(kid = %slot.0.kid, "jwt key activated");
            changed = true;
        }
        for &i in p.expire.iter().rev() {
            if let Some((old, phase)) = list.get(i) {
                if *phase != Phase::Retired {
                    self.set_state(&old.kid, Phase::Retired).await?;
                }
                list.remove(i);
                changed = true;
            }
        }
        if let Some(phase) = p.create {
            let not_after = self.new_validity(now)?;
            let kid = hex::encode(rand::random::<[u8; 16]>());
            let signer = JwtSigner::generate(kid.clone())
                .map_err(|e| AuthorityError::Certificate(e.to_string()))?;
            let key_pem = Zeroizing::new(pem::encode(&pem::Pem::new(
                "PRIVATE KEY",
                Zeroizing::new(signer.pkcs8_der().to_vec()).as_slice(),
            )));
            files::write_secret(&jwt_key_path(&self.data_dir, &kid), key_pem.as_bytes())?;
            let spki = signer.public_key_spki_der();
            self.ds
                .append_ca_record(&CaRecord {
                    kind: CaRecordKind::Jwt,
                    id: kid.clone(),
                    der: spki.clone(),
                    not_before: keys::unix(now),
                    not_after: keys::unix(not_after),
                    state: state_of(phase),
                })
                .await?;
            tracing::info!(kid = %kid, phase = phase.as_str(), "jwt key created");
            list.push((
                Arc::new(JwtKey {
                    kid,
                    spki,
                    signer: Some(signer),
                    not_before: now,
                    not_after,
                }),
                phase,
            ));
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn slot(nb: u64, na: u64, phase: Phase) -> Slot {
        Slot {
            not_before: t(nb),
            not_after: t(na),
            phase,
            usable: true,
        }
    }

    #[test]
    fn no_key_creates_an_active_one() {
        assert_eq!(plan(&[], t(0)).create, Some(Phase::Active));
    }

    #[test]
    fn nothing_happens_before_half_life() {
        let p = plan(&[slot(0, 600, Phase::Active)], t(299));
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn next_key_is_prepared_at_half_life() {
        let p = plan(&[slot(0, 600, Phase::Active)], t(300));
        assert_eq!(p.create, Some(Phase::Prepared));
        assert_eq!(p.activate, None);
    }

    #[test]
    fn prepared_key_waits_until_a_sixth_remains() {
        let slots = [slot(0, 600, Phase::Active), slot(300, 900, Phase::Prepared)];
        assert_eq!(plan(&slots, t(499)), Plan::default());
        let p = plan(&slots, t(500));
        assert_eq!(p.activate, Some(1));
        assert_eq!(p.retire, Some(0));
        assert_eq!(p.create, None);
    }

    #[test]
    fn retired_key_expires_out_of_the_bundle() {
        let slots = [slot(0, 600, Phase::Retired), slot(300, 900, Phase::Active)];
        assert_eq!(plan(&slots, t(599)).expire, Vec::<usize>::new());
        assert_eq!(plan(&slots, t(600)).expire, vec![0]);
    }

    #[test]
    fn active_key_without_private_key_is_replaced() {
        let mut s = slot(0, 600, Phase::Active);
        s.usable = false;
        let p = plan(&[s], t(10));
        assert_eq!(p.create, Some(Phase::Active));
        assert_eq!(p.retire, Some(0));
    }

    #[test]
    fn expired_active_key_is_replaced_by_the_prepared_one() {
        let slots = [slot(0, 600, Phase::Active), slot(300, 900, Phase::Prepared)];
        let p = plan(&slots, t(700));
        assert_eq!(p.expire, vec![0]);
        assert_eq!(p.activate, Some(1));
    }
}
