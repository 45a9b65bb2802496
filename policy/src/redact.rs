//! What the decision log never shows: the values of headers and query parameters whose names say
//! they carry a credential. The decision itself sees every value; only the log line is redacted,
//! so an auditor's copy of the log holds no bearer token, session cookie, password or request
//! signature (as Envoy's and Istio's access-log guidance asks). `warden policy diff` replays a
//! redacted value as [`REDACTED`](crate::REDACTED).
//!
//! A name is secret when, lowercased, it is one of [`SECRET_NAMES`], ends with
//! [`SECRET_SUFFIX`] (`key`) or contains one of [`SECRET_PARTS`]: `authorization`,
//! `x-auth-token`, `x-amz-security-token`, `set-cookie`, `client_secret`, `api_key`,
//! `x-functions-key`, `X-Amz-Signature`, `x-goog-iap-jwt-assertion`, `client_assertion`,
//! `password`, `pass`, `dpop` and `key` are; `x-request-id`, `keyword`, `keys`, `page` and
//! `accept` are not. Query parameters are split on `&` and `;`.

use std::borrow::Cow;

use crate::record::REDACTED;

/// Parts of a name that mark it as carrying a credential.
pub(crate) const SECRET_PARTS: &[&str] = &[
    "auth",
    "token",
    "secret",
    "passw",
    "cookie",
    "session",
    "credential",
    "signature",
    "api-key",
    "api_key",
    "apikey",
    "private",
    "jwt",
    "assertion",
];

/// Whole names that carry a credential though they contain no part above (query parameters of
/// API-key schemes, pre-signed URLs).
pub(crate) const SECRET_NAMES: &[&str] = &["key", "sig", "code", "pwd", "pass", "dpop"];

/// An ending that marks a name as carrying a credential (`x-functions-key`,
/// `ocp-apim-subscription-key`, `access_key`, `x-access-key`).
pub(crate) const SECRET_SUFFIX: &str = "key";

/// Whether a header or query parameter named `name` carries a credential.
///
/// Called for every header of every decision-log line, so it makes one pass over the name with
/// no allocation: at each byte, only the parts that begin with that letter are compared (ASCII
/// case-insensitively, as lowercasing the name first would).
pub fn is_secret_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let is = |part: &str, at: &[u8]| {
        at.get(..part.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(part.as_bytes()))
    };
    if SECRET_NAMES
        .iter()
        .any(|whole| is(whole, bytes) && whole.len() == bytes.len())
    {
        return true;
    }
    let suffix = bytes
        .len()
        .checked_sub(SECRET_SUFFIX.len())
        .and_then(|start| bytes.get(start..));
    if suffix.is_some_and(|end| is(SECRET_SUFFIX, end)) {
        return true;
    }
    (0..bytes.len()).any(|i| {
        let at = bytes.get(i..).unwrap_or_default();
        let first = at.first().map_or(0, u8::to_ascii_lowercase);
        PART_STARTS.get(usize::from(first)) == Some(&true)
            && SECRET_PARTS
                .iter()
                .any(|part| part.as_bytes().first() == Some(&first) && is(part, at))
    })
}

/// Which (lowercase) bytes begin a part of [`SECRET_PARTS`].
// Evaluated at compile time: a `u8` indexes 256 entries, and an empty part fails the build.
#[allow(clippy::indexing_slicing)]
const PART_STARTS: [bool; 256] = {
    let mut starts = [false; 256];
    let mut i = 0;
    while i < SECRET_PARTS.len() {
        starts[SECRET_PARTS[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    starts
};

/// `query` with the value of every secret parameter replaced by [`REDACTED`]; borrowed when
/// nothing is secret. Parameters are separated by `&` or `;` (some apps split on either).
pub fn redact_query(query: &str) -> Cow<'_, str> {
    let separators = ['&', ';'];
    let secret = |pair: &str| secret_param(pair.split_once('=').map_or(pair, |(name, _)| name));
    if !query
        .split(separators)
        .any(|pair| pair.contains('=') && secret(pair))
    {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    loop {
        let (pair, next) = match rest.find(separators) {
            Some(at) => (rest.get(..at).unwrap_or_default(), rest.get(at..)),
            None => (rest, None),
        };
        match pair.split_once('=') {
            Some((name, _)) if secret_param(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
        let Some(next) = next else { break };
        // The separator itself, then what follows it.
        let mut chars = next.chars();
        if let Some(separator) = chars.next() {
            out.push(separator);
        }
        rest = chars.as_str();
    }
    Cow::Owned(out)
}

/// Whether query parameter `name` carries a credential, read as the app reads it: percent-decoded
/// (`%74oken` is `token`).
fn secret_param(name: &str) -> bool {
    if !name.contains('%') {
        return is_secret_name(name);
    }
    let bytes = name.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|&h| (h as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    is_secret_name(&String::from_utf8_lossy(&decoded))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The rule as stated: lowercased, one of the names or containing one of the parts.
    fn by_definition(name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        SECRET_NAMES.contains(&lower.as_str())
            || lower.ends_with(SECRET_SUFFIX)
            || SECRET_PARTS.iter().any(|p| lower.contains(p))
    }

    proptest! {
        #[test]
        fn the_one_pass_check_is_the_rule(
            name in "[a-zA-Z_\\-]{0,4}(AUTH|Token|secrET|passw|cookie|session|credential|\
                      signature|api-key|API_KEY|apikey|private|jwt|assertion|api|key|sig|code|\
                      pwd|ses|jw|to|x|é)?[a-zA-Z_\\-é]{0,6}"
        ) {
            prop_assert_eq!(is_secret_name(&name), by_definition(&name), "{}", name);
        }
    }

    #[test]
    fn every_part_and_name_is_found_in_any_case_and_position() {
        for part in SECRET_PARTS.iter().chain(SECRET_NAMES) {
            for name in [
                part.to_string(),
                part.to_ascii_uppercase(),
                format!("x-{part}"),
                format!("{part}-x"),
            ] {
                assert_eq!(is_secret_name(&name), by_definition(&name), "{name}");
            }
            assert!(is_secret_name(part), "{part}");
        }
        // A part cut short at the end of the name is no part.
        for name in [
            "x-aut", "x-toke", "api-ke", "api_k", "apike", "jw", "passw0",
        ] {
            assert_eq!(is_secret_name(name), by_definition(name), "{name}");
        }
    }

    #[test]
    fn credential_names_are_secret_and_ordinary_ones_are_not() {
        for name in [
            "authorization",
            "proxy-authorization",
            "x-auth-token",
            "x-amz-security-token",
            "cookie",
            "set-cookie",
            "x-api-key",
            "api_key",
            "client_secret",
            "access_token",
            "Password",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "key",
            "sig",
            "jsessionid",
            "jwt",
            "x-goog-iap-jwt-assertion",
            "x-jwt-assertion",
            "client_assertion",
            "ocp-apim-subscription-key",
            "x-functions-key",
            "x-access-key",
            "access_key",
            "subscription-key",
            "pass",
            "DPoP",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "x-request-id",
            "accept",
            "host",
            "user-agent",
            "keyword",
            "keys",
            "passage",
            "page",
            "id",
            "content-type",
            "x-forwarded-client-cert",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn only_the_values_of_secret_query_parameters_are_redacted() {
        assert!(matches!(redact_query("a=1&b=%22&page=2"), Cow::Borrowed(_)));
        assert!(matches!(redact_query(""), Cow::Borrowed(_)));
        // A bare flag named like a secret has no value to hide.
        assert!(matches!(redact_query("token&a=1"), Cow::Borrowed(_)));
        assert_eq!(
            redact_query("a=1&access_token=abc.def&key=k1&X-Amz-Signature=f00&b="),
            "a=1&access_token=<redacted>&key=<redacted>&X-Amz-Signature=<redacted>&b="
        );
        assert_eq!(redact_query("password="), "password=<redacted>");
        // `;` separates parameters too, and each separator is kept as it was.
        assert_eq!(
            redact_query("a=1;access_token=x&b=2;pass=p"),
            "a=1;access_token=<redacted>&b=2;pass=<redacted>"
        );
        assert!(matches!(redact_query("a=1;b=2&c"), Cow::Borrowed(_)));
    }

    #[test]
    fn percent_encoded_secret_parameter_names_are_redacted_too() {
        assert_eq!(
            redact_query("%74oken=abc&a%5Fb=1&ke%79=k&%zz=1&pass%77ord=p"),
            "%74oken=<redacted>&a%5Fb=1&ke%79=<redacted>&%zz=1&pass%77ord=<redacted>"
        );
        assert!(matches!(redact_query("a%20b=1&%=2"), Cow::Borrowed(_)));
    }
}
