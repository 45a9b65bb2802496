//! SPIFFE IDs and trust domains, parsed exactly as the SPIFFE-ID standard says (rules ID-1..ID-6).
//!
//! `SpiffeId::from_str` and `TrustDomain::new` are the only constructors, so a value of either
//! type is always valid.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID, in bytes, that Warden accepts or generates (rule ID-6).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name, in bytes (rule ID-6).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("spiffe id is empty")]
    Empty,
    /// The scheme is not `spiffe://`.
    #[error("scheme must be `spiffe://`")]
    WrongScheme,
    /// No trust domain after the scheme.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9.-_]` in the trust domain. Characters and strings from the input
    /// are quoted and escaped (`{:?}`) in these messages: IDs come from certificates and tokens
    /// anyone can make, and a line break must not reach a log line as such.
    #[error(
        "trust domain has the invalid character {0:?} (only lowercase letters, digits, `.`, `-` and `_` are allowed)"
    )]
    BadTrustDomainChar(char),
    /// A character outside `[a-zA-Z0-9.-_]` in a path segment.
    #[error(
        "path has the invalid character {0:?} (only letters, digits, `.`, `-` and `_` are allowed in a segment)"
    )]
    BadPathChar(char),
    /// `//` in the path.
    #[error("path has an empty segment")]
    EmptySegment,
    /// `.` or `..` as a path segment.
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path has a trailing `/`")]
    TrailingSlash,
    /// The whole ID is longer than 2048 bytes.
    #[error("spiffe id is {0} bytes long; the limit is 2048")]
    TooLong(usize),
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {0} bytes long; the limit is 255")]
    TrustDomainTooLong(usize),
    /// A trust domain was given as a SPIFFE ID with a path.
    #[error("trust domain {0:?} must not have a path")]
    TrustDomainHasPath(String),
    /// A path joined to a trust domain does not start with `/` (it would extend the name).
    #[error("path must be empty or start with `/`")]
    PathWithoutLeadingSlash,
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A SPIFFE ID such as `spiffe://example.org/ns/prod/sa/api`.
///
/// INVARIANT: `uri` is a valid SPIFFE ID in canonical form (lowercase scheme and trust domain)
/// and `path_start` indexes the first byte of the path (or `uri.len()` for an ID with no path);
/// upheld by `FromStr`, the only constructor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    path_start: usize,
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses a trust domain name. Accepts a bare name (`example.org`) or a SPIFFE ID
    /// with no path (`spiffe://example.org`). Uppercase letters are folded (rule ID-1).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if let Some(rest) = strip_scheme(name)? {
            let id = SpiffeId::parse_parts(rest)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::TrustDomainHasPath(id.to_string()));
            }
            return Ok(id.trust_domain());
        }
        Ok(Self(parse_trust_domain(name)?))
    }

    /// The name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, used as the key of bundle maps (rule W-12).
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// The SPIFFE ID with the given path in this trust domain. The path is empty or starts
    /// with `/`: `td.id("evil.com/x")` would otherwise name another trust domain.
    pub fn id(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(SpiffeIdError::PathWithoutLeadingSlash);
        }
        SpiffeId::from_str(&format!("{SCHEME_PREFIX}{}{path}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    fn parse_parts(rest: &str) -> Result<Self, SpiffeIdError> {
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // Query, fragment, userinfo and port all show up as characters that are invalid in a
        // trust domain (`?`, `#`, `@`, `:`) or a path segment, so rules ID-2 and ID-4 hold.
        let td = parse_trust_domain(td)?;
        parse_path(path)?;
        let uri = format!("{SCHEME_PREFIX}{td}{path}");
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(uri.len()));
        }
        let path_start = SCHEME_PREFIX.len() + td.len();
        Ok(Self { uri, path_start })
    }

    /// The trust domain of this ID.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The trust domain name as a string slice.
    pub fn trust_domain_name(&self) -> &str {
        self.uri
            .get(SCHEME_PREFIX.len()..self.path_start)
            .unwrap_or_default()
    }

    /// The path, starting with `/`, or empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        self.uri.get(self.path_start..).unwrap_or_default()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Path segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// Every proper prefix of this ID, from the trust domain's ID down to the parent path:
    /// for `spiffe://td/a/b/c` that is `spiffe://td`, `spiffe://td/a`, `spiffe://td/a/b`.
    pub fn prefixes(&self) -> Vec<SpiffeId> {
        let path = self.path();
        if path.is_empty() {
            return Vec::new();
        }
        let ends = std::iter::once(0).chain(
            path.char_indices()
                .skip(1)
                .filter(|(_, c)| *c == '/')
                .map(|(i, _)| i),
        );
        ends.filter_map(|i| self.uri.get(..self.path_start + i))
            .map(|uri| Self {
                uri: uri.to_owned(),
                path_start: self.path_start,
            })
            .collect()
    }

    /// Whether this ID is in the given trust domain.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.name()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        match strip_scheme(s)? {
            Some(rest) => Self::parse_parts(rest),
            None => Err(SpiffeIdError::WrongScheme),
        }
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// === parsing helpers ===

/// Strips a case-insensitive `spiffe://` (rule ID-1). `Ok(None)` when the string has no scheme
/// at all, `Err(WrongScheme)` when it has another one.
fn strip_scheme(s: &str) -> Result<Option<&str>, SpiffeIdError> {
    match s.get(..SCHEME_PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(SCHEME_PREFIX) => Ok(s.get(SCHEME_PREFIX.len()..)),
        _ if s.contains("://") || s.contains(':') => Err(SpiffeIdError::WrongScheme),
        _ => Ok(None),
    }
}

fn parse_trust_domain(td: &str) -> Result<String, SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    let mut out = String::with_capacity(td.len());
    for c in td.chars() {
        let c = c.to_ascii_lowercase();
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')) {
            return Err(SpiffeIdError::BadTrustDomainChar(c));
        }
        out.push(c);
    }
    Ok(out)
}

fn parse_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(s: &str) -> SpiffeIdError {
        s.parse::<SpiffeId>().unwrap_err()
    }

    #[test]
    fn a_path_joined_to_a_trust_domain_cannot_extend_its_name() {
        let td = TrustDomain::new("example.org").unwrap();
        for path in ["evil.com/x", ".attacker.net/x", "x"] {
            assert_eq!(
                td.id(path),
                Err(SpiffeIdError::PathWithoutLeadingSlash),
                "{path}"
            );
        }
        assert_eq!(td.id("/w").unwrap().as_str(), "spiffe://example.org/w");
        assert_eq!(td.id("").unwrap().as_str(), "spiffe://example.org");
    }

    #[test]
    fn parses_valid_id_with_path() {
        let id: SpiffeId = "spiffe://example.org/ns/prod/sa/api".parse().unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/api");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "prod", "sa", "api"]
        );
    }

    #[test]
    fn scheme_and_trust_domain_are_case_insensitive_path_is_not_id1() {
        let id: SpiffeId = "SPIFFE://Example.ORG/Path/X".parse().unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/Path/X");
    }

    #[test]
    fn rejects_wrong_scheme_id1() {
        assert_eq!(err("https://example.org/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("example.org/x"), SpiffeIdError::WrongScheme);
    }

    #[test]
    fn rejects_missing_trust_domain_port_and_userinfo_id2() {
        assert_eq!(err("spiffe:///path"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(
            err("spiffe://example.org:8080/x"),
            SpiffeIdError::BadTrustDomainChar(':')
        );
        assert_eq!(
            err("spiffe://user@example.org/x"),
            SpiffeIdError::BadTrustDomainChar('@')
        );
    }

    #[test]
    fn rejects_bad_trust_domain_characters_id3() {
        assert_eq!(
            err("spiffe://exa%41mple.org"),
            SpiffeIdError::BadTrustDomainChar('%')
        );
        assert_eq!(
            err("spiffe://[::1]/x"),
            SpiffeIdError::BadTrustDomainChar('[')
        );
        assert!("spiffe://10.0.0.1/x".parse::<SpiffeId>().is_ok());
    }

    #[test]
    fn rejects_query_and_fragment_id4() {
        assert_eq!(
            err("spiffe://example.org/x?a=b"),
            SpiffeIdError::BadPathChar('?')
        );
        assert_eq!(
            err("spiffe://example.org/x#f"),
            SpiffeIdError::BadPathChar('#')
        );
        assert_eq!(
            err("spiffe://example.org?a"),
            SpiffeIdError::BadTrustDomainChar('?')
        );
    }

    #[test]
    fn rejects_bad_paths_id5() {
        assert_eq!(
            err("spiffe://example.org/a//b"),
            SpiffeIdError::EmptySegment
        );
        assert_eq!(err("spiffe://example.org/a/./b"), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://example.org/a/.."), SpiffeIdError::DotSegment);
        assert_eq!(err("spiffe://example.org/a/"), SpiffeIdError::TrailingSlash);
        assert_eq!(err("spiffe://example.org/"), SpiffeIdError::TrailingSlash);
        assert_eq!(
            err("spiffe://example.org/a%20b"),
            SpiffeIdError::BadPathChar('%')
        );
        assert_eq!(
            err("spiffe://example.org/é"),
            SpiffeIdError::BadPathChar('é')
        );
    }

    #[test]
    fn accepts_2048_bytes_and_rejects_longer_id6() {
        let base = "spiffe://example.org/";
        let ok = format!("{base}{}", "a".repeat(MAX_SPIFFE_ID_LEN - base.len()));
        assert_eq!(ok.len(), 2048);
        assert!(ok.parse::<SpiffeId>().is_ok());
        let long = format!("{ok}a");
        assert_eq!(err(&long), SpiffeIdError::TooLong(2049));
        let td = format!("spiffe://{}", "a".repeat(256));
        assert_eq!(err(&td), SpiffeIdError::TrustDomainTooLong(256));
    }

    #[test]
    fn trust_domain_accepts_bare_name_and_id() {
        assert_eq!(
            TrustDomain::new("Example.org").unwrap().name(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().name(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org/x"),
            Err(SpiffeIdError::TrustDomainHasPath(
                "spiffe://example.org/x".to_owned()
            ))
        );
        assert_eq!(
            TrustDomain::new("https://example.org"),
            Err(SpiffeIdError::WrongScheme)
        );
        assert!(TrustDomain::new("").is_err());
    }

    #[test]
    fn prefixes_lists_every_parent() {
        let id: SpiffeId = "spiffe://td/a/b/c".parse().unwrap();
        let p: Vec<String> = id.prefixes().iter().map(|p| p.to_string()).collect();
        assert_eq!(p, ["spiffe://td", "spiffe://td/a", "spiffe://td/a/b"]);
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,11}"
            .prop_filter("no dot segments", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(td in "[a-z0-9_-][a-z0-9._-]{0,30}", segs in prop::collection::vec(segment(), 0..6)) {
            let s = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
            let id: SpiffeId = s.parse().unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            let again: SpiffeId = id.to_string().parse().unwrap();
            prop_assert_eq!(again, id);
        }

        #[test]
        fn parser_never_panics(s in ".{0,80}") {
            let _ = s.parse::<SpiffeId>();
        }
    }
}
