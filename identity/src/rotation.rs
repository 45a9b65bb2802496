//! When to renew a short-lived credential: at half its lifetime, with jitter so that many
//! workloads issued together do not all renew at once.

use std::time::{Duration, SystemTime};

/// Largest jitter, as a fraction of the lifetime, that [`refresh_at`] applies.
pub const MAX_JITTER: f64 = 0.1;

/// The time to renew a credential valid from `not_before` to `not_after`: half-way through,
/// moved by `jitter` (a fraction of the lifetime, clamped to `[-0.1, 0.1]`; NaN counts as 0).
///
/// The result is strictly between `not_before` and `not_after` whenever the lifetime is at
/// least 2 ns; for a shorter or inverted lifetime it is `not_before` (renew now).
pub fn refresh_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return not_before;
    };
    if lifetime < Duration::from_nanos(2) {
        return not_before;
    }
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-MAX_JITTER, MAX_JITTER)
    };
    let offset = lifetime.mul_f64(0.5 + jitter);
    let offset = offset.clamp(Duration::from_nanos(1), lifetime - Duration::from_nanos(1));
    not_before + offset
}

/// A random jitter in `[-0.1, 0.1]` for [`refresh_at`], from the system's secure RNG
/// (0 if the RNG fails).
pub fn random_jitter() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    let unit = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    (unit * 2.0 - 1.0) * MAX_JITTER
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn refresh_is_at_half_life_without_jitter() {
        let nb = UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(3600);
        assert_eq!(refresh_at(nb, na, 0.0), nb + Duration::from_secs(1800));
        assert_eq!(refresh_at(nb, na, 0.1), nb + Duration::from_secs(2160));
        assert_eq!(refresh_at(nb, na, 5.0), nb + Duration::from_secs(2160));
        assert_eq!(refresh_at(nb, na, f64::NAN), nb + Duration::from_secs(1800));
    }

    #[test]
    fn inverted_or_empty_lifetime_refreshes_now() {
        let nb = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(refresh_at(nb, nb, 0.0), nb);
        assert_eq!(refresh_at(nb, nb - Duration::from_secs(1), 0.0), nb);
    }

    #[test]
    fn random_jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-MAX_JITTER..=MAX_JITTER).contains(&j), "{j}");
        }
    }

    proptest! {
        #[test]
        fn refresh_at_is_strictly_inside_the_lifetime(
            start in 0u64..4_000_000_000,
            lifetime_ns in 2u64..(400 * 24 * 3600 * 1_000_000_000),
            jitter in proptest::num::f64::ANY,
        ) {
            let nb = UNIX_EPOCH + Duration::from_secs(start);
            let na = nb + Duration::from_nanos(lifetime_ns);
            let at = refresh_at(nb, na, jitter);
            prop_assert!(nb < at && at < na);
        }

        #[test]
        fn refresh_at_is_within_ten_percent_of_half_life(
            lifetime_s in 10u64..(400 * 24 * 3600),
            jitter in -1.0f64..1.0,
        ) {
            let nb = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let lifetime = Duration::from_secs(lifetime_s);
            let at = refresh_at(nb, nb + lifetime, jitter).duration_since(nb).unwrap();
            prop_assert!(at >= lifetime.mul_f64(0.4) && at <= lifetime.mul_f64(0.6));
        }
    }
}
