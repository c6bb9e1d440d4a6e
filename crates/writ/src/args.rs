//! Parsing of the client commands' compact arguments (claims, attributes, KEY=VALUE).

use writ_api::pb;

/// `--audience-kind`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    Agent,
    User,
    Workload,
}

/// `--audience-client`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ClientKind {
    Confidential,
    Public,
}

/// `--status`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StatusArg {
    Active,
    Expired,
    Revoked,
    Exhausted,
}

impl StatusArg {
    pub fn pb(self) -> pb::TokenStatus {
        match self {
            StatusArg::Active => pb::TokenStatus::Active,
            StatusArg::Expired => pb::TokenStatus::Expired,
            StatusArg::Revoked => pb::TokenStatus::Revoked,
            StatusArg::Exhausted => pb::TokenStatus::Exhausted,
        }
    }
}

/// `--kind`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KindArg {
    Minted,
    Downscoped,
    Validated,
    Refused,
    Revoked,
    Aggregated,
}

impl KindArg {
    pub fn pb(self) -> pb::EventKind {
        match self {
            KindArg::Minted => pb::EventKind::Minted,
            KindArg::Downscoped => pb::EventKind::Downscoped,
            KindArg::Validated => pb::EventKind::Validated,
            KindArg::Refused => pb::EventKind::Refused,
            KindArg::Revoked => pb::EventKind::Revoked,
            KindArg::Aggregated => pb::EventKind::Aggregated,
        }
    }
}

/// `--since`/`--until`: a span back from now, or an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// This many milliseconds before now.
    Ago(u64),
    /// This Unix time in milliseconds.
    At(u64),
}

impl Since {
    /// The instant, given `now` in Unix milliseconds.
    pub fn at(self, now: u64) -> u64 {
        match self {
            Since::Ago(ms) => now.saturating_sub(ms).max(1),
            Since::At(ms) => ms,
        }
    }
}

/// `30s`, `15m`, `1h`, `2d`, `1w`, or Unix milliseconds.
pub fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Since::At(ms));
    }
    let split = s.len().saturating_sub(1);
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        format!("expected a span like 30s, 15m, 1h, 2d or 1w, or Unix milliseconds, got {s:?}")
    })?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(format!("unknown unit in {s:?}: use s, m, h, d or w")),
    };
    Ok(Since::Ago(n.saturating_mul(unit_ms)))
}

/// The wall clock in Unix milliseconds (for `--since`).
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A wire party from the command line.
pub fn party(id: &str, kind: Kind, client: ClientKind) -> pb::Party {
    let kind = match kind {
        Kind::Agent => pb::ActorKind::Agent,
        Kind::User => pb::ActorKind::User,
        Kind::Workload => pb::ActorKind::Workload,
    };
    let client = match client {
        ClientKind::Confidential => pb::ClientType::Confidential,
        ClientKind::Public => pb::ClientType::Public,
    };
    writ_client::build::party(id, kind, client)
}

/// `KEY=VALUE`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.to_string(), v.to_string()))
}

/// `KEY=VALUE`: an integer when it parses as one, a time for `@` and a date or Unix
/// seconds (`@2026-12-03`, `@2026-12-03T10:00:00Z`, `@1796000000`), else a string.
pub fn parse_attr(s: &str) -> Result<(String, pb::Value), String> {
    use writ_client::build as b;
    let (k, v) = parse_kv(s)?;
    let value = if let Some(t) = v.strip_prefix('@') {
        b::time(parse_time(t)?)
    } else {
        match v.parse::<i64>() {
            Ok(i) => b::int(i),
            Err(_) => b::str(&v),
        }
    };
    Ok((k, value))
}

/// Attributes from repeated `--attr`: a key given more than once becomes a list.
pub fn attributes(attrs: Vec<(String, pb::Value)>) -> std::collections::HashMap<String, pb::Value> {
    let mut grouped: std::collections::BTreeMap<String, Vec<pb::Value>> = Default::default();
    for (k, v) in attrs {
        grouped.entry(k).or_default().push(v);
    }
    grouped
        .into_iter()
        .map(|(k, mut v)| {
            let value = if v.len() == 1 {
                v.remove(0)
            } else {
                writ_client::build::list(v)
            };
            (k, value)
        })
        .collect()
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

/// What `writ revoke` revokes as an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One token (and its descendants) by id.
    TokenId(String),
    /// A whole transaction.
    Txn(String),
}

/// `tid_...` or `txn_...`. The error never repeats the input, which may be a secret.
pub fn parse_target(s: &str) -> Result<Target, String> {
    if s.starts_with("tid_") {
        Ok(Target::TokenId(s.to_string()))
    } else if s.starts_with("txn_") {
        Ok(Target::Txn(s.to_string()))
    } else if s.starts_with("writ_") {
        Err("that is a token, not a token id: pass it in WRIT_TOKEN or --token-file".to_string())
    } else {
        Err("expected a token id (tid_...) or a transaction (txn_...)".to_string())
    }
}

/// `NAME:KIND:VALUE`.
pub fn parse_claim(s: &str) -> Result<(String, pb::Constraint), String> {
    const KINDS: &str = "max, min, range, window, allow, deny, allow-ci, deny-ci, prefix, exact, exact-int, exact-time";
    use writ_client::build as b;
    let mut parts = s.splitn(3, ':');
    let (Some(name), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected NAME:KIND:VALUE, got {s:?}"));
    };
    let int = || {
        value
            .parse::<i64>()
            .map_err(|_| format!("{kind} needs an integer, got {value:?}"))
    };
    let set = || {
        value
            .split(',')
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
    };
    let span = || {
        value
            .split_once("..")
            .ok_or_else(|| format!("{kind} needs LOW..HIGH, got {value:?}"))
    };
    let c = match kind {
        "max" => b::max(int()?),
        "min" => b::min(int()?),
        "range" => {
            let (lo, hi) = span()?;
            let n = |x: &str| {
                x.parse::<i64>()
                    .map_err(|_| format!("range needs integers, got {x:?}"))
            };
            b::range(n(lo)?, n(hi)?)
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
            b::window(parse_time(lo)?, end)
        }
        "allow" => b::allow(&set()),
        "deny" => b::deny(&set()),
        "allow-ci" => b::case_insensitive(b::allow(&set())),
        "deny-ci" => b::case_insensitive(b::deny(&set())),
        "prefix" => b::prefix(value),
        "exact" => b::exact(b::str(value)),
        "exact-int" => b::exact(b::int(int()?)),
        "exact-time" => b::exact(b::time(parse_time(value)?)),
        other => return Err(format!("unknown claim kind {other:?} ({KINDS})")),
    };
    Ok((name.to_string(), c))
}

/// Claims from `--claim`, each limited to the scopes `--claim-scope NAME=SCOPE` names.
pub fn claims(
    claims: Vec<(String, pb::Constraint)>,
    scoped: Vec<(String, String)>,
) -> Result<std::collections::HashMap<String, pb::Constraint>, String> {
    let mut claims: std::collections::HashMap<String, pb::Constraint> =
        claims.into_iter().collect();
    for (name, scope) in scoped {
        let c = claims
            .get_mut(&name)
            .ok_or_else(|| format!("--claim-scope {name}={scope}: no --claim named {name:?}"))?;
        c.applies_to.push(scope);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn claims_parse() {
        let (n, c) = parse_claim("amount:max:500").unwrap();
        assert_eq!(n, "amount");
        assert_eq!(c, writ_client::build::max(500));
        assert_eq!(
            parse_claim("cat:deny:a,b").unwrap().1,
            writ_client::build::deny(&["a", "b"])
        );
        assert_eq!(
            parse_claim("p:prefix:/a:b/").unwrap().1,
            writ_client::build::prefix("/a:b/")
        );
        assert!(parse_claim("amount:max:lots").is_err());
        assert!(parse_claim("amount:bigger:5").is_err());
        assert!(parse_claim("amount").is_err());
        assert_eq!(
            parse_attr("amount=5").unwrap().1,
            writ_client::build::int(5)
        );
        assert_eq!(
            parse_attr("c=health").unwrap().1,
            writ_client::build::str("health")
        );
        use writ_client::build as b;
        assert_eq!(
            parse_claim("a:range:100..500").unwrap().1,
            b::range(100, 500)
        );
        assert_eq!(
            parse_claim("d:window:2025-12-01..2025-12-15").unwrap().1,
            b::window(1_764_547_200, 1_765_843_199)
        );
        assert_eq!(
            parse_claim("c:deny-ci:Gambling").unwrap().1,
            b::case_insensitive(b::deny(&["Gambling"]))
        );
        assert!(parse_claim("a:range:100").is_err());
        assert_eq!(
            parse_attr("d=@2025-12-01T01:00:00Z").unwrap().1,
            b::time(1_764_550_800)
        );
        assert_eq!(parse_attr("d=@5").unwrap().1, b::time(5));
        assert!(parse_attr("d=@2025-13-01").is_err());
        assert!(parse_attr("d=@2026-02-31").is_err(), "no such day");
        let attrs = attributes(vec![
            ("item".into(), b::str("a")),
            ("item".into(), b::str("b")),
            ("n".into(), b::int(1)),
        ]);
        assert_eq!(attrs["item"], b::list(vec![b::str("a"), b::str("b")]));
        assert_eq!(attrs["n"], b::int(1));
        let scoped = claims(
            vec![("amount".into(), b::max(5))],
            vec![("amount".into(), "pay".into())],
        )
        .unwrap();
        assert_eq!(scoped["amount"].applies_to, vec!["pay".to_string()]);
        assert!(claims(vec![], vec![("x".into(), "pay".into())]).is_err());
    }

    #[test]
    fn spans_parse() {
        assert_eq!(parse_since("1h").unwrap(), Since::Ago(3_600_000));
        assert_eq!(parse_since("30s").unwrap(), Since::Ago(30_000));
        assert_eq!(parse_since("2d").unwrap(), Since::Ago(172_800_000));
        assert_eq!(
            parse_since("1700000000000").unwrap(),
            Since::At(1_700_000_000_000)
        );
        assert_eq!(Since::Ago(1_000).at(5_000), 4_000);
        assert_eq!(Since::Ago(9_000).at(5_000), 1);
        for bad in ["", "h", "1y", "-1h", "1.5h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("tid_abc").unwrap(),
            Target::TokenId("tid_abc".into())
        );
        assert_eq!(
            parse_target("txn_abc").unwrap(),
            Target::Txn("txn_abc".into())
        );
        assert!(
            parse_target("writ_secret")
                .unwrap_err()
                .contains("WRIT_TOKEN")
        );
        assert!(parse_target("abc").is_err());
    }
}
