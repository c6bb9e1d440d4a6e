//! Parsing of the client commands' compact arguments (claims, attributes, KEY=VALUE).

/// `--claim NAME:KIND:VALUE` and the dates of `--attr NAME=@DATE`: the compact syntax the
/// policy file shares.
pub use writ_api::compact::{parse_claim, parse_time};
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
    ConsentRequested,
    ConsentApproved,
    ConsentDenied,
    ConsentRedeemed,
    ConsentExpired,
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
            KindArg::ConsentRequested => pb::EventKind::ConsentRequested,
            KindArg::ConsentApproved => pb::EventKind::ConsentApproved,
            KindArg::ConsentDenied => pb::EventKind::ConsentDenied,
            KindArg::ConsentRedeemed => pb::EventKind::ConsentRedeemed,
            KindArg::ConsentExpired => pb::EventKind::ConsentExpired,
        }
    }
}

/// `writ consent list --status`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ConsentStatusArg {
    Pending,
    Approved,
    Denied,
    Redeemed,
    Expired,
}

impl ConsentStatusArg {
    pub fn pb(self) -> pb::ConsentStatus {
        match self {
            ConsentStatusArg::Pending => pb::ConsentStatus::Pending,
            ConsentStatusArg::Approved => pb::ConsentStatus::Approved,
            ConsentStatusArg::Denied => pb::ConsentStatus::Denied,
            ConsentStatusArg::Redeemed => pb::ConsentStatus::Redeemed,
            ConsentStatusArg::Expired => pb::ConsentStatus::Expired,
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
    fn attributes_and_scoped_claims_parse() {
        use writ_client::build as b;
        assert_eq!(parse_attr("amount=5").unwrap().1, b::int(5));
        assert_eq!(parse_attr("c=health").unwrap().1, b::str("health"));
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
        // The shared syntax builds what the client's builders do.
        assert_eq!(parse_claim("amount:max:500").unwrap().1, b::max(500));
        assert_eq!(
            parse_claim("c:deny-ci:Gambling").unwrap().1,
            b::case_insensitive(b::deny(&["Gambling"]))
        );
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
