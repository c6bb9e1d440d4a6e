//! The compact claim syntax the command line and the policy file share:
//! `NAME:KIND:VALUE`, such as `amount:max:500`, `merchant:allow:tap,ryanair` or
//! `trip:window:2026-12-01..2026-12-15`.
//!
//! Parsing only shapes the text into a wire [`pb::Constraint`]; whether the result is a
//! valid claim (canonical text, bounds, a canonical path) is decided where every claim is
//! decided, in [`crate::convert::claim`]. [`render`] writes a core claim back in this
//! syntax, whole (for reports of the operator's own policy, not for messages: those show
//! claims bounded).

use crate::pb;
use writ_core::claims::Time;
use writ_core::{Claim, Constraint, Value};

/// The kinds [`parse_claim`] accepts.
pub const KINDS: &str =
    "max, min, range, window, allow, deny, allow-ci, deny-ci, prefix, exact, exact-int, exact-time";

/// `NAME:KIND:VALUE` (the value may itself contain `:`). Kinds: `max`, `min` (an
/// integer); `range` (`LOW..HIGH`, integers); `window` (`FROM..TO`, Unix seconds or UTC
/// dates as [`parse_time`] reads them; a bare date as `TO` means the whole day); `allow`,
/// `deny`, `allow-ci`, `deny-ci` (comma-separated members, empty ones skipped; `-ci`
/// compares case-insensitively); `prefix` (a resource path); `exact` (a string);
/// `exact-int`; `exact-time`.
pub fn parse_claim(s: &str) -> Result<(String, pb::Constraint), String> {
    let mut parts = s.splitn(3, ':');
    let (Some(name), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected NAME:KIND:VALUE, got {s:?}"));
    };
    let int = || {
        value
            .parse::<i64>()
            .map_err(|_| format!("{kind} needs an integer, got {value:?}"))
    };
    let set = |case_insensitive| pb::StringSet {
        values: value
            .split(',')
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect(),
        case_insensitive,
    };
    let span = || {
        value
            .split_once("..")
            .ok_or_else(|| format!("{kind} needs LOW..HIGH, got {value:?}"))
    };
    use pb::constraint::Kind;
    let c = match kind {
        "max" => Kind::Max(int()?),
        "min" => Kind::Min(int()?),
        "range" => {
            let (lo, hi) = span()?;
            let n = |x: &str| {
                x.parse::<i64>()
                    .map_err(|_| format!("range needs integers, got {x:?}"))
            };
            Kind::Range(pb::Range {
                min: n(lo)?,
                max: n(hi)?,
            })
        }
        "window" => {
            let (lo, hi) = span()?;
            // A bare date as the end means the whole day.
            let end = parse_time(hi)?
                + if hi.contains('T') || hi.parse::<i64>().is_ok() {
                    0
                } else {
                    86_399
                };
            Kind::Window(pb::Window {
                not_before: parse_time(lo)?,
                not_after: end,
            })
        }
        "allow" => Kind::Allow(set(false)),
        "deny" => Kind::Deny(set(false)),
        "allow-ci" => Kind::Allow(set(true)),
        "deny-ci" => Kind::Deny(set(true)),
        "prefix" => Kind::Prefix(value.to_owned()),
        "exact" => Kind::Exact(value_of(pb::value::Kind::Str(value.to_owned()))),
        "exact-int" => Kind::Exact(value_of(pb::value::Kind::Int(int()?))),
        "exact-time" => Kind::Exact(value_of(pb::value::Kind::Time(parse_time(value)?))),
        other => return Err(format!("unknown claim kind {other:?} ({KINDS})")),
    };
    Ok((
        name.to_owned(),
        pb::Constraint {
            kind: Some(c),
            applies_to: Vec::new(),
        },
    ))
}

fn value_of(kind: pb::value::Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

/// Unix seconds, or a UTC date (`2026-12-03`, the day's first second) or date-time
/// (`2026-12-03T10:00:00Z`), years 1970..=9999.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs);
    }
    let bad = |why: &dyn std::fmt::Display| {
        format!("expected Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, got {s:?}: {why}")
    };
    let at = if s.contains('T') {
        humantime::parse_rfc3339(s)
    } else {
        humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
    }
    .map_err(|e| bad(&e))?;
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| bad(&e))?
        .as_secs();
    i64::try_from(secs).map_err(|e| bad(&e))
}

/// A claim's constraint in the compact syntax, `NAME:KIND:VALUE`, with every member of a
/// set (case-insensitive sets show their members folded, as they are compared) and times
/// as RFC 3339 dates. [`parse_claim`] reads it back to the same claim, unless a set member
/// contains a `,`. The scopes the claim applies to are not part of the syntax.
pub fn render(name: &str, claim: &Claim) -> String {
    let time = |t: i64| {
        let shown = Time(t).to_string();
        // Out of the date range, `Time` shows `@seconds`; plain seconds parse back.
        shown
            .strip_prefix('@')
            .map_or_else(|| shown.clone(), str::to_owned)
    };
    let join = |s: &std::collections::BTreeSet<String>| {
        s.iter().map(String::as_str).collect::<Vec<_>>().join(",")
    };
    let (kind, value) = match &claim.constraint {
        Constraint::Max(v) => ("max", v.to_string()),
        Constraint::Min(v) => ("min", v.to_string()),
        Constraint::Range { min, max } => ("range", format!("{min}..{max}")),
        Constraint::Window {
            not_before,
            not_after,
        } => (
            "window",
            format!("{}..{}", time(*not_before), time(*not_after)),
        ),
        Constraint::AllowSet(s) => ("allow", join(s)),
        Constraint::DenySet(s) => ("deny", join(s)),
        Constraint::AllowFolded(s) => ("allow-ci", join(s)),
        Constraint::DenyFolded(s) => ("deny-ci", join(s)),
        Constraint::Prefix(p) => ("prefix", p.clone()),
        Constraint::Exact(Value::Str(v)) => ("exact", v.clone()),
        Constraint::Exact(Value::Int(v)) => ("exact-int", v.to_string()),
        Constraint::Exact(Value::Time(t)) => ("exact-time", time(*t)),
    };
    format!("{name}:{kind}:{value}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pb::constraint::Kind;

    fn c(kind: Kind) -> pb::Constraint {
        pb::Constraint {
            kind: Some(kind),
            applies_to: Vec::new(),
        }
    }

    fn set(values: &[&str], case_insensitive: bool) -> pb::StringSet {
        pb::StringSet {
            values: values.iter().map(|s| s.to_string()).collect(),
            case_insensitive,
        }
    }

    #[test]
    fn claims_parse() {
        let (n, got) = parse_claim("amount:max:500").unwrap();
        assert_eq!(n, "amount");
        assert_eq!(got, c(Kind::Max(500)));
        assert_eq!(parse_claim("n:min:-3").unwrap().1, c(Kind::Min(-3)));
        assert_eq!(
            parse_claim("cat:deny:a,b").unwrap().1,
            c(Kind::Deny(set(&["a", "b"], false)))
        );
        assert_eq!(
            parse_claim("m:allow:tap,,ryanair").unwrap().1,
            c(Kind::Allow(set(&["tap", "ryanair"], false)))
        );
        assert_eq!(
            parse_claim("p:prefix:/a:b/").unwrap().1,
            c(Kind::Prefix("/a:b/".into()))
        );
        assert!(parse_claim("amount:max:lots").is_err());
        assert!(parse_claim("amount:bigger:5").is_err());
        assert!(parse_claim("amount").is_err());
        assert_eq!(
            parse_claim("a:range:100..500").unwrap().1,
            c(Kind::Range(pb::Range { min: 100, max: 500 }))
        );
        assert_eq!(
            parse_claim("d:window:2025-12-01..2025-12-15").unwrap().1,
            c(Kind::Window(pb::Window {
                not_before: 1_764_547_200,
                not_after: 1_765_843_199
            }))
        );
        assert_eq!(
            parse_claim("d:window:5..2025-12-01T01:00:00Z").unwrap().1,
            c(Kind::Window(pb::Window {
                not_before: 5,
                not_after: 1_764_550_800
            }))
        );
        assert_eq!(
            parse_claim("c:deny-ci:Gambling").unwrap().1,
            c(Kind::Deny(set(&["Gambling"], true)))
        );
        assert_eq!(
            parse_claim("c:allow-ci:A,b").unwrap().1,
            c(Kind::Allow(set(&["A", "b"], true)))
        );
        assert_eq!(
            parse_claim("cur:exact:EUR").unwrap().1,
            c(Kind::Exact(value_of(pb::value::Kind::Str("EUR".into()))))
        );
        assert_eq!(
            parse_claim("n:exact-int:7").unwrap().1,
            c(Kind::Exact(value_of(pb::value::Kind::Int(7))))
        );
        assert_eq!(
            parse_claim("t:exact-time:2025-12-01").unwrap().1,
            c(Kind::Exact(value_of(pb::value::Kind::Time(1_764_547_200))))
        );
        assert!(parse_claim("a:range:100").is_err());
        assert!(parse_claim("a:range:1..x").is_err());
        assert!(parse_claim("d:window:2025-13-01..2025-12-02").is_err());
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("5"), Ok(5));
        assert_eq!(parse_time("-5"), Ok(-5));
        assert_eq!(parse_time("2025-12-01"), Ok(1_764_547_200));
        assert_eq!(parse_time("2025-12-01T01:00:00Z"), Ok(1_764_550_800));
        assert!(parse_time("2025-13-01").is_err());
        assert!(parse_time("2026-02-31").is_err(), "no such day");
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn rendered_claims_parse_back_to_themselves() {
        for text in [
            "a:max:500",
            "a:min:-3",
            "a:range:1..9",
            "d:window:2025-12-01T00:00:00Z..2025-12-15T23:59:59Z",
            "d:window:-5..253402300800",
            "m:allow:ryanair,tap",
            "m:deny:health",
            "c:allow-ci:food,travel",
            "c:deny-ci:gambling",
            "p:prefix:/trips/",
            "cur:exact:EUR",
            "n:exact-int:7",
            "t:exact-time:2025-12-01T00:00:00Z",
        ] {
            let (name, pb) = parse_claim(text).unwrap();
            let claim = crate::convert::claim("c", pb).unwrap();
            assert_eq!(render(&name, &claim), text);
        }
        // Case-insensitive members are shown as they are compared.
        let (name, pb) = parse_claim("c:deny-ci:Gambling").unwrap();
        let claim = crate::convert::claim("c", pb).unwrap();
        assert_eq!(render(&name, &claim), "c:deny-ci:gambling");
    }
}
