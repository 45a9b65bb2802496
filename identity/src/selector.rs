//! Workload and node selectors: `<type>:<key>:<value>`, e.g. `unix:uid:1000`, `docker:id:abc`.

use std::fmt;
use std::str::FromStr;

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// Not of the form `type:key:value`.
    #[error("selector `{0}` must have the form `type:key:value`")]
    Shape(String),
    /// The type or key has a character other than lowercase letters, digits, `_` or `-`.
    #[error("selector `{0}`: type and key may hold only lowercase letters, digits, `_` and `-`")]
    BadName(String),
    /// The value has a control character or whitespace.
    #[error("selector `{0}`: value may not hold whitespace or control characters")]
    BadValue(String),
    /// Longer than the limit.
    #[error("selector is {0} bytes long; the limit is 1024")]
    TooLong(usize),
}

/// A selector: the type (attestor), the key and the value. Values may contain `:`.
///
/// INVARIANT: `kind` and `key` are non-empty `[a-z0-9_-]`, `value` is non-empty and printable;
/// upheld by `FromStr` and `Selector::new`, the only constructors.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    key: String,
    value: String,
}

// === impl Selector ===

impl Selector {
    /// Builds a selector from its parts, checking each.
    pub fn new(kind: &str, key: &str, value: &str) -> Result<Self, SelectorError> {
        format!("{kind}:{key}:{value}").parse()
    }

    /// The selector type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The key, e.g. `uid`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, e.g. `1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong(s.len()));
        }
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SelectorError::Shape(s.to_owned()));
        };
        if kind.is_empty() || key.is_empty() || value.is_empty() {
            return Err(SelectorError::Shape(s.to_owned()));
        }
        let name_ok = |n: &str| {
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        };
        if !name_ok(kind) || !name_ok(key) {
            return Err(SelectorError::BadName(s.to_owned()));
        }
        if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(SelectorError::BadValue(s.escape_debug().to_string()));
        }
        Ok(Self {
            kind: kind.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.key, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({self})")
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_selectors_with_colons_in_value() {
        let s: Selector = "docker:label:app:web".parse().unwrap();
        assert_eq!(
            (s.kind(), s.key(), s.value()),
            ("docker", "label", "app:web")
        );
        assert_eq!(s.to_string(), "docker:label:app:web");
    }

    #[test]
    fn rejects_malformed_selectors() {
        assert!(matches!(
            "unix:uid".parse::<Selector>(),
            Err(SelectorError::Shape(_))
        ));
        assert!(matches!(
            "unix::1".parse::<Selector>(),
            Err(SelectorError::Shape(_))
        ));
        assert!(matches!(
            "Unix:uid:1".parse::<Selector>(),
            Err(SelectorError::BadName(_))
        ));
        assert!(matches!(
            "unix:uid:1 2".parse::<Selector>(),
            Err(SelectorError::BadValue(_))
        ));
        let long = format!("unix:path:{}", "a".repeat(2000));
        assert!(matches!(
            long.parse::<Selector>(),
            Err(SelectorError::TooLong(_))
        ));
    }
}
