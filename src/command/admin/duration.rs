//! Lifetimes on the admin command line: `600`, `90s`, `10m`, `2h`, `1d`, in whole seconds.

/// Seconds from `600`, `90s`, `10m`, `2h` or `1d`; never 0, which on the wire means "the CA's
/// default": a flag that said 0 would get that silently.
pub(super) fn parse_duration(s: &str) -> Result<u32, String> {
    match parse_seconds(s)? {
        0 => Err(format!(
            "`{}` is no lifetime: give at least 1s, or leave the flag out for the default",
            s.trim()
        )),
        n => Ok(n),
    }
}

/// [`parse_duration`], or `0` (in any unit), which on an update sets the CA default back.
pub(super) fn parse_duration_or_default(s: &str) -> Result<u32, String> {
    parse_seconds(s)
}

fn parse_seconds(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like `600`, `90s`, `10m`, `2h` or `1d`"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use s, m, h or d)"
            ));
        }
    };
    n.checked_mul(mult)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("duration `{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_duration("600"), Ok(600));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .contains("unknown duration unit `x`")
        );
        assert!(
            parse_duration("m")
                .unwrap_err()
                .contains("`m` is not a duration")
        );
        assert!(
            parse_duration("99999999999d")
                .unwrap_err()
                .contains("too long")
        );
        for zero in ["0", "0s", "0d"] {
            assert!(
                parse_duration(zero).unwrap_err().contains("is no lifetime"),
                "{zero}"
            );
            // An update's way back to the CA default.
            assert_eq!(parse_duration_or_default(zero), Ok(0), "{zero}");
        }
        assert_eq!(parse_duration_or_default("2h"), Ok(7200));
        assert!(parse_duration_or_default("0x").is_err());
    }
}
