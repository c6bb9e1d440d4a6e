//! Typed claim constraints and their partial order.
//!
//! A claim is a named constraint on one attribute of an action (`amount ≤ 500`,
//! `category ∉ {health}`, `path` starts with `/trips/`). Each kind has a partial order
//! "at least as narrow as", so a child's claims can be proven to permit no more than
//! its parent's, and an evaluation rule that decides one attribute value.
//!
//! Evaluation fails closed: an action that does not state an attribute a claim
//! constrains, or states it with the wrong type, is denied.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// An attribute value: an integer (amounts in minor units, timestamps in Unix seconds)
/// or a string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A signed 64-bit integer.
    Int(i64),
    /// A UTF-8 string.
    Str(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// One typed constraint. The variants are closed: a kind this build does not know can
/// never be decoded, so it can never be skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// Numeric upper bound: value ≤ bound. Narrower: a smaller bound.
    Max(i64),
    /// Numeric or timestamp lower bound: value ≥ bound. Narrower: a larger bound.
    Min(i64),
    /// Allow-set: value ∈ set. Narrower: a subset.
    AllowSet(BTreeSet<String>),
    /// Deny-set: value ∉ set. Narrower: a superset.
    DenySet(BTreeSet<String>),
    /// Resource prefix: value starts with prefix. Narrower: a longer prefix extending it.
    /// Matching is by bytes; end a prefix with `/` to match whole path segments.
    Prefix(String),
    /// Exact value, which may never change along the chain.
    Exact(Value),
}

impl Constraint {
    /// Short name of the kind, used in messages and the CLI.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::Max(_) => "max",
            Constraint::Min(_) => "min",
            Constraint::AllowSet(_) => "allow",
            Constraint::DenySet(_) => "deny",
            Constraint::Prefix(_) => "prefix",
            Constraint::Exact(_) => "exact",
        }
    }

    /// True when `child` permits no value that `self` does not: `child ⊑ self`.
    /// Constraints of different kinds are never comparable.
    pub fn is_narrowed_by(&self, child: &Constraint) -> bool {
        use Constraint::*;
        match (self, child) {
            (Max(p), Max(c)) => c <= p,
            (Min(p), Min(c)) => c >= p,
            (AllowSet(p), AllowSet(c)) => c.is_subset(p),
            (DenySet(p), DenySet(c)) => c.is_superset(p),
            (Prefix(p), Prefix(c)) => c.starts_with(p.as_str()),
            (Exact(p), Exact(c)) => p == c,
            _ => false,
        }
    }

    /// Does this constraint permit `value`? `Err` says why not.
    pub fn permits(&self, value: &Value) -> Result<(), String> {
        use Constraint::*;
        let ok = match (self, value) {
            (Max(b), Value::Int(v)) => v <= b,
            (Min(b), Value::Int(v)) => v >= b,
            (AllowSet(s), Value::Str(v)) => s.contains(v),
            (DenySet(s), Value::Str(v)) => !s.contains(v),
            (Prefix(p), Value::Str(v)) => v.starts_with(p.as_str()),
            (Exact(e), v) => e == v,
            (_, v) => {
                return Err(format!(
                    "{v} has the wrong type for a {} constraint",
                    self.kind()
                ));
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{value} violates {self}"))
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Constraint::Max(v) => write!(f, "max {v}"),
            Constraint::Min(v) => write!(f, "min {v}"),
            Constraint::AllowSet(s) => write!(f, "allow {{{}}}", set(s)),
            Constraint::DenySet(s) => write!(f, "deny {{{}}}", set(s)),
            Constraint::Prefix(p) => write!(f, "prefix {p:?}"),
            Constraint::Exact(v) => write!(f, "exact {v}"),
        }
    }
}

/// A token's claims: claim name → constraint.
pub type Claims = BTreeMap<String, Constraint>;

/// Why an action was denied: the claim (or `scope`) that denied it, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `"scope"` or the name of the claim that denied.
    pub denied_by: String,
    /// Human-readable reason.
    pub reason: String,
}

/// Checks one action, a required scope plus attributes, against scopes and claims.
/// Every claim must permit its attribute; attributes no claim names are unconstrained.
pub fn authorize(
    scopes: &BTreeSet<String>,
    claims: &Claims,
    scope: &str,
    attributes: &BTreeMap<String, Value>,
) -> Result<(), Denial> {
    if !scopes.contains(scope) {
        return Err(Denial {
            denied_by: "scope".into(),
            reason: format!("scope {scope:?} is not granted"),
        });
    }
    for (name, c) in claims {
        let verdict = match attributes.get(name) {
            None => Err(format!(
                "attribute {name:?} is required by claim {name} ({c})"
            )),
            Some(v) => c.permits(v),
        };
        verdict.map_err(|reason| Denial {
            denied_by: name.clone(),
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn narrowing_order_per_kind() {
        use Constraint::*;
        assert!(Max(500).is_narrowed_by(&Max(100)));
        assert!(Max(500).is_narrowed_by(&Max(500)));
        assert!(!Max(500).is_narrowed_by(&Max(501)));
        assert!(Min(10).is_narrowed_by(&Min(20)));
        assert!(!Min(10).is_narrowed_by(&Min(9)));
        assert!(AllowSet(set(&["a", "b"])).is_narrowed_by(&AllowSet(set(&["a"]))));
        assert!(!AllowSet(set(&["a"])).is_narrowed_by(&AllowSet(set(&["a", "c"]))));
        assert!(DenySet(set(&["h"])).is_narrowed_by(&DenySet(set(&["h", "x"]))));
        assert!(!DenySet(set(&["h", "x"])).is_narrowed_by(&DenySet(set(&["h"]))));
        assert!(Prefix("/t/".into()).is_narrowed_by(&Prefix("/t/1/".into())));
        assert!(!Prefix("/t/1/".into()).is_narrowed_by(&Prefix("/t/".into())));
        assert!(Exact(Value::Int(1)).is_narrowed_by(&Exact(Value::Int(1))));
        assert!(!Exact(Value::Int(1)).is_narrowed_by(&Exact(Value::Str("1".into()))));
        assert!(!Max(5).is_narrowed_by(&Min(5)), "kinds never compare");
    }

    #[test]
    fn evaluation_fails_closed() {
        let claims: Claims = [
            ("amount".to_string(), Constraint::Max(500)),
            (
                "category".to_string(),
                Constraint::DenySet(set(&["health"])),
            ),
        ]
        .into();
        let scopes = set(&["pay"]);
        let attrs = |a: i64, c: &str| -> BTreeMap<String, Value> {
            [
                ("amount".into(), Value::Int(a)),
                ("category".into(), Value::Str(c.into())),
            ]
            .into()
        };
        assert_eq!(
            authorize(&scopes, &claims, "pay", &attrs(500, "travel")),
            Ok(())
        );
        assert_eq!(
            authorize(&scopes, &claims, "pay", &attrs(501, "travel"))
                .unwrap_err()
                .denied_by,
            "amount"
        );
        assert_eq!(
            authorize(&scopes, &claims, "pay", &attrs(5, "health"))
                .unwrap_err()
                .denied_by,
            "category"
        );
        assert_eq!(
            authorize(&scopes, &claims, "refund", &attrs(5, "x"))
                .unwrap_err()
                .denied_by,
            "scope"
        );
        let missing: BTreeMap<String, Value> = [("amount".into(), Value::Int(1))].into();
        assert_eq!(
            authorize(&scopes, &claims, "pay", &missing)
                .unwrap_err()
                .denied_by,
            "category"
        );
        let wrong_type: BTreeMap<String, Value> = [
            ("amount".into(), Value::Str("1".into())),
            ("category".into(), Value::Str("x".into())),
        ]
        .into();
        assert_eq!(
            authorize(&scopes, &claims, "pay", &wrong_type)
                .unwrap_err()
                .denied_by,
            "amount"
        );
    }
}
