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
