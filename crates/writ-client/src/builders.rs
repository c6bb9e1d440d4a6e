//! Convenience constructors for the wire types agents build most: parties, claim
//! constraints and action values.

use crate::proto as pb;

/// A party with a kind and client type.
pub fn party(id: &str, kind: pb::ActorKind, client_type: pb::ClientType) -> pb::Party {
    pb::Party {
        id: id.to_string(),
        kind: kind.into(),
        client_type: client_type.into(),
    }
}

/// A confidential agent.
pub fn agent(id: &str) -> pb::Party {
    party(id, pb::ActorKind::Agent, pb::ClientType::Confidential)
}

/// A confidential workload (API, service).
pub fn workload(id: &str) -> pb::Party {
    party(id, pb::ActorKind::Workload, pb::ClientType::Confidential)
}

fn c(kind: pb::constraint::Kind) -> pb::Constraint {
    pb::Constraint {
        kind: Some(kind),
        applies_to: Vec::new(),
    }
}

fn string_set(set: &[&str]) -> pb::StringSet {
    pb::StringSet {
        values: set.iter().map(|s| s.to_string()).collect(),
        case_insensitive: false,
    }
}

/// value ≤ `v`.
pub fn max(v: i64) -> pb::Constraint {
    c(pb::constraint::Kind::Max(v))
}
/// value ≥ `v`.
pub fn min(v: i64) -> pb::Constraint {
    c(pb::constraint::Kind::Min(v))
}
/// value ∈ `set`.
pub fn allow(set: &[&str]) -> pb::Constraint {
    c(pb::constraint::Kind::Allow(string_set(set)))
}
/// value ∉ `set`.
pub fn deny(set: &[&str]) -> pb::Constraint {
    c(pb::constraint::Kind::Deny(string_set(set)))
}
/// `min <= value <= max`.
pub fn range(min: i64, max: i64) -> pb::Constraint {
    c(pb::constraint::Kind::Range(pb::Range { min, max }))
}
/// `not_before <= time <= not_after`, Unix seconds.
pub fn window(not_before: i64, not_after: i64) -> pb::Constraint {
    c(pb::constraint::Kind::Window(pb::Window {
        not_before,
        not_after,
    }))
}
/// The same allow or deny set, compared case-insensitively.
pub fn case_insensitive(mut c: pb::Constraint) -> pb::Constraint {
    if let Some(pb::constraint::Kind::Allow(s) | pb::constraint::Kind::Deny(s)) = &mut c.kind {
        s.case_insensitive = true;
    }
    c
}
/// The claim, limited to actions of these scopes.
pub fn applies_to(mut c: pb::Constraint, scopes: &[&str]) -> pb::Constraint {
    c.applies_to = scopes.iter().map(|s| s.to_string()).collect();
    c
}
/// value starts with `p`.
pub fn prefix(p: &str) -> pb::Constraint {
    c(pb::constraint::Kind::Prefix(p.to_string()))
}
/// value == `v`.
pub fn exact(v: pb::Value) -> pb::Constraint {
    c(pb::constraint::Kind::Exact(v))
}
/// An integer value.
pub fn int(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Int(v)),
    }
}
/// A string value.
pub fn str(v: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Str(v.to_string())),
    }
}
/// A point in time, Unix seconds.
pub fn time(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Time(v)),
    }
}
/// Several items of one action attribute; every one must pass.
pub fn list(values: Vec<pb::Value>) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::List(pb::ValueList { values })),
    }
}
