//! The request path that policies decide on and the app receives: normalized first, so that one
//! resource has one spelling. Without it, a `context.path like "/public/*"` permit would also
//! let `/public/../admin`, `/public/%2E%2E/admin` or `//admin` through to an app that resolves
//! them, and a `forbid` on `/admin*` would miss `/%61dmin` and `/./admin`.
//!
//! What is done (Envoy's `normalize_path` and `merge_slashes`, Istio's
//! `NORMALIZE_AND_MERGE_SLASHES`):
//! - percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) are decoded,
//!   and the hex digits of every other escape are upper-cased (§6.2.2.1, .2);
//! - a backslash becomes a slash (as Istio's `BASE` normalization does: many servers and
//!   frameworks treat `\` as a separator, so `/public\..\admin` is `/admin` to them);
//! - runs of slashes become one;
//! - `.` and `..` segments are removed (§5.2.4); `..` never climbs above the root.
//!
//! Escaped slashes and backslashes (`%2F`, `%5C`) stay escaped: they may be data (an object key,
//! a repository `group%2Fname`), as Envoy keeps them by default. A malformed escape (`%`
//! not followed by two hex digits), `%00`, and a `.` or `..` segment with `;` parameters
//! (`..;x`, which servers that drop parameters resolve as a dot segment) are refused (400). Paths that are not absolute (`*` of
//! `OPTIONS *`, the authority form of `CONNECT`) are left as they are.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadPath {
    /// `%` not followed by two hex digits.
    Malformed,
    /// `%00`: a NUL byte, which ends the path early for some servers.
    Nul,
    /// A `.` or `..` segment with parameters (`/v1/..;x/admin`): servers that drop a segment's
    /// `;` parameters (Tomcat, Spring, Jetty) resolve it as a dot segment, which the policy
    /// would not have seen.
    DotParameters,
}

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed percent-encoding in the request path",
            Self::Nul => "an encoded NUL (%00) in the request path",
            Self::DotParameters => "a `.` or `..` segment with `;` parameters in the request path",
        })
    }
}

/// The normalized form of `path`; borrowed when it already is normal (the common case costs
/// one scan and no allocation).
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') || is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let slashed;
    let path = if path.contains('\\') {
        slashed = path.replace('\\', "/");
        &slashed
    } else {
        path
    };
    let decoded = decode_unreserved(path)?;
    if decoded.split('/').any(dot_with_parameters) {
        return Err(BadPath::DotParameters);
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// No escapes, no backslash, no empty segment but a trailing one, no `.` or `..` segment.
fn is_normal(path: &str) -> bool {
    if path.contains(['%', '\\']) {
        return false;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last)
            || segment == "."
            || segment == ".."
            || dot_with_parameters(segment)
        {
            return false;
        }
    }
    true
}

/// `.;…` or `..;…`: a dot segment to a server that drops a segment's parameters.
fn dot_with_parameters(segment: &str) -> bool {
    segment
        .split_once(';')
        .is_some_and(|(name, _)| name == "." || name == "..")
}

/// Decodes the escapes of unreserved characters, upper-cases the others' hex digits.
fn decode_unreserved(path: &str) -> Result<String, BadPath> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        let (before, escape) = rest.split_at(at);
        out.push_str(before);
        // Exactly two hex digits (`from_str_radix` alone would take a leading `+`).
        let hex = escape
            .get(1..3)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(BadPath::Malformed)?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| BadPath::Malformed)?;
        if byte == 0 {
            return Err(BadPath::Nul);
        }
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_uppercase());
        }
        rest = escape.get(3..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

/// `path` (absolute) without empty, `.` and `..` segments; a trailing slash is kept when the
/// last segment was empty, `.` or `..` (RFC 3986 §5.2.4: `/a/b/..` is `/a/`).
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> String {
        normalize(path).unwrap().into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/a",
            "/a/",
            "/a/b.c",
            "/a/..b/.c/c.",
            "/v1/x_y~z-1",
            "*",
            "",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed_and_never_climb_above_the_root() {
        let cases = [
            ("/public/../admin", "/admin"),
            ("/public/./admin", "/public/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/./b/../../c", "/c"),
            ("/.", "/"),
        ];
        for (path, want) in cases {
            assert_eq!(n(path), want, "{path}");
        }
    }

    #[test]
    fn runs_of_slashes_become_one() {
        for (path, want) in [
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a//", "/a/"),
            ("//", "/"),
        ] {
            assert_eq!(n(path), want, "{path}");
        }
    }

    #[test]
    fn escaped_unreserved_characters_are_decoded_before_dot_segments_go() {
        let cases = [
            ("/%61dmin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/.%2E/admin", "/admin"),
            ("/%7Euser/%2D%5F", "/~user/-_"),
        ];
        for (path, want) in cases {
            assert_eq!(n(path), want, "{path}");
        }
    }

    #[test]
    fn escaped_slashes_and_other_reserved_characters_stay_escaped_in_upper_case() {
        let cases = [
            ("/repos/group%2fname", "/repos/group%2Fname"),
            ("/a%5Cb", "/a%5Cb"),
            ("/public/..%2Fadmin", "/public/..%2Fadmin"),
            ("/q%3fx%20y", "/q%3Fx%20y"),
        ];
        for (path, want) in cases {
            assert_eq!(n(path), want, "{path}");
        }
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for path in ["/a%", "/a%4", "/a%zz", "/a%+1", "/a%-1/b", "/%g0"] {
            assert_eq!(normalize(path), Err(BadPath::Malformed), "{path}");
        }
        for path in ["/a%00", "/%00/b"] {
            assert_eq!(normalize(path), Err(BadPath::Nul), "{path}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for path in [
            "/v1/..;/internal/x",
            "/v1/..;jsessionid=1/internal",
            "/v1/.;x/a",
            "/v1/%2E%2E;/internal",
            "/v1/.%2e;x/internal",
            "/..;",
        ] {
            assert_eq!(normalize(path), Err(BadPath::DotParameters), "{path}");
        }
        // Parameters on other segments, and dots that are part of a name, are data.
        for path in ["/v1/a;b/c", "/v1/...;x", "/v1/..a;x", "/v1/a..;x"] {
            assert_eq!(normalize(path).as_deref(), Ok(path), "{path}");
        }
    }

    #[test]
    fn backslashes_become_slashes_before_dot_segments_go() {
        for (path, want) in [
            ("/public\\..\\admin", "/admin"),
            ("/a\\b", "/a/b"),
            ("\\\\admin", "\\\\admin"),
            ("/a\\\\b/", "/a/b/"),
        ] {
            assert_eq!(n(path), want, "{path}");
        }
    }
}
