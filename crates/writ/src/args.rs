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
}

impl KindArg {
    pub fn pb(self) -> pb::EventKind {
        match self {
            KindArg::Minted => pb::EventKind::Minted,
            KindArg::Downscoped => pb::EventKind::Downscoped,
            KindArg::Validated => pb::EventKind::Validated,
            KindArg::Refused => pb::EventKind::Refused,
            KindArg::Revoked => pb::EventKind::Revoked,
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

/// `KEY=VALUE`, the value an integer when it parses as one.
pub fn parse_attr(s: &str) -> Result<(String, pb::Value), String> {
    let (k, v) = parse_kv(s)?;
    let value = match v.parse::<i64>() {
        Ok(i) => writ_client::build::int(i),
        Err(_) => writ_client::build::str(&v),
    };
    Ok((k, value))
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
        Err("that is a token, not a token id: pass it with --token or WRIT_TOKEN".to_string())
    } else {
        Err("expected a token id (tid_...) or a transaction (txn_...)".to_string())
    }
}

/// `NAME:KIND:VALUE`.
pub fn parse_claim(s: &str) -> Result<(String, pb::Constraint), String> {
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
    let c = match kind {
        "max" => b::max(int()?),
        "min" => b::min(int()?),
        "allow" => b::allow(&set()),
        "deny" => b::deny(&set()),
        "prefix" => b::prefix(value),
        "exact" => b::exact(b::str(value)),
        "exact-int" => b::exact(b::int(int()?)),
        other => {
            return Err(format!(
                "unknown claim kind {other:?} (max, min, allow, deny, prefix, exact, exact-int)"
            ));
        }
    };
    Ok((name.to_string(), c))
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
        assert!(parse_target("writ_secret").unwrap_err().contains("--token"));
        assert!(parse_target("abc").is_err());
    }
}
