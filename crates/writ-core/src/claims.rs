//! Typed claims: what each hop may do with which attributes, and their partial order.
//!
//! A claim is a named, typed constraint on one attribute of an action (`amount ≤ 500`,
//! `category ∉ {gambling}`, `path` under `/trips`), optionally limited to some scopes
//! (`amount` constrains `payments:charge`, not `trips:search`). Each kind has a partial
//! order "at least as narrow as", so a child's claims can be proven to permit no more
//! than its parent's, and an evaluation rule that decides one attribute value.
//!
//! Evaluation fails closed: an action that does not state an attribute a claim
//! constrains, or states it with the wrong type, is denied. An attribute may carry
//! several values (the items an action names); every one must pass.
//!
//! Strings are compared in the canonical form of [`crate::text`] (checked where they
//! enter), exactly or, for the case-insensitive set kinds, folded. Resource prefixes
//! match whole path segments (see [`Constraint::Prefix`]).

use crate::text::{self, Shown};
use icu_normalizer::ComposingNormalizer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// An attribute value or exact claim value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A signed 64-bit integer (amounts in minor units, counts).
    Int(i64),
    /// A string in canonical form.
    Str(String),
    /// A point in time, in Unix seconds (checked by windows).
    Time(i64),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Str(_) => "a string",
            Value::Time(_) => "a time",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{}", Shown(s)),
            Value::Time(t) => write!(f, "{}", Time(*t)),
        }
    }
}

/// A Unix-second timestamp shown as RFC 3339 UTC (or as seconds out of that range).
#[derive(Clone, Copy, Debug)]
pub struct Time(pub i64);

/// Latest Unix second shown as a date (9999-12-31T23:59:59Z).
const MAX_DATE_SECS: i64 = 253_402_300_799;

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Outside this range the formatter would fail (it shows years 1970..=9999).
        match u64::try_from(self.0) {
            Ok(secs) if self.0 <= MAX_DATE_SECS => {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                write!(f, "{}", humantime::format_rfc3339_seconds(at))
            }
            _ => write!(f, "@{}", self.0),
        }
    }
}

/// One typed constraint. The variants are closed: a kind this build does not know can
/// never be decoded, so it can never be skipped. (New kinds are only ever appended, so
/// older stored records keep decoding.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// Integer upper bound: value ≤ bound. Narrower: a smaller bound, or a range within it.
    Max(i64),
    /// Integer lower bound: value ≥ bound. Narrower: a larger bound, or a range within it.
    Min(i64),
    /// Allow-set, exact: value ∈ set. Narrower: a subset.
    AllowSet(BTreeSet<String>),
    /// Deny-set, exact: value ∉ set. Narrower: a superset, or a case-insensitive deny-set
    /// covering it.
    DenySet(BTreeSet<String>),
    /// Resource path prefix. A prefix ending in `/` matches the paths strictly below it;
    /// otherwise the path itself and every path below it (`/trips` matches `/trips` and
    /// `/trips/12`, never `/tripsX`). Matched values must be canonical paths: absolute,
    /// no empty, `.` or `..` segment, no backslash, no percent-encoded `/`, `\` or `.`.
    /// Narrower: a prefix the parent's matches.
    Prefix(String),
    /// Exact value, which may never change along the chain.
    Exact(Value),
    /// Integer range: `min ≤ value ≤ max` (`min ≤ max`). Narrower: a range inside it.
    Range {
        /// Least value permitted.
        min: i64,
        /// Greatest value permitted.
        max: i64,
    },
    /// Date window over time values, in Unix seconds: `not_before ≤ t ≤ not_after`.
    /// Narrower: a window inside it.
    Window {
        /// Earliest time permitted.
        not_before: i64,
        /// Latest time permitted.
        not_after: i64,
    },
    /// Allow-set, case-insensitive: `fold(value)` ∈ set; members are stored folded
    /// ([`text::fold`]). Narrower: a folded subset, or an exact set whose members it
    /// allows.
    AllowFolded(BTreeSet<String>),
    /// Deny-set, case-insensitive: `fold(value)` ∉ set; members are stored folded.
    /// Narrower: a folded superset.
    DenyFolded(BTreeSet<String>),
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
            Constraint::Range { .. } => "range",
            Constraint::Window { .. } => "window",
            Constraint::AllowFolded(_) => "allow-ci",
            Constraint::DenyFolded(_) => "deny-ci",
        }
    }

    /// The case-insensitive set kinds, with their members folded: the only form in
    /// which they are stored and compared.
    pub fn allow_folded(members: impl IntoIterator<Item = String>) -> Constraint {
        Constraint::AllowFolded(members.into_iter().map(|m| text::fold(&m)).collect())
    }

    /// See [`Constraint::allow_folded`].
    pub fn deny_folded(members: impl IntoIterator<Item = String>) -> Constraint {
        Constraint::DenyFolded(members.into_iter().map(|m| text::fold(&m)).collect())
    }

    /// True when `child` permits no value that `self` does not: `child ⊑ self`.
    /// Constraints of unrelated kinds are never comparable, except that an exact value is
    /// within any constraint that permits it.
    pub fn is_narrowed_by(&self, child: &Constraint) -> bool {
        use Constraint::*;
        match (self, child) {
            (Max(p), Max(c)) => c <= p,
            (Min(p), Min(c)) => c >= p,
            (Max(p), Range { max, .. }) => max <= p,
            (Min(p), Range { min, .. }) => min >= p,
            (Range { min: pl, max: ph }, Range { min: cl, max: ch }) => cl >= pl && ch <= ph,
            (
                Window {
                    not_before: pl,
                    not_after: ph,
                },
                Window {
                    not_before: cl,
                    not_after: ch,
                },
            ) => cl >= pl && ch <= ph,
            (AllowSet(p), AllowSet(c)) | (AllowFolded(p), AllowFolded(c)) => c.is_subset(p),
            (AllowFolded(p), AllowSet(c)) => c.iter().all(|v| p.contains(&text::fold(v))),
            (DenySet(p), DenySet(c)) | (DenyFolded(p), DenyFolded(c)) => c.is_superset(p),
            (DenySet(p), DenyFolded(c)) => p.iter().all(|v| c.contains(&text::fold(v))),
            (Prefix(p), Prefix(c)) => c == p || path_under(p, c),
            (Exact(p), Exact(c)) => p == c,
            // An exact value permits that value only: within any constraint that permits
            // it (how a consent's redeemed token pins each attribute under the parent's
            // bounds).
            (_, Exact(v)) => self.permits(v).is_ok(),
            _ => false,
        }
    }

    /// Does this constraint permit `value`? `Err` says why not, naming the offending
    /// value and the constraint's kind (never a whole set).
    pub fn permits(&self, value: &Value) -> Result<(), String> {
        use Constraint::*;
        let verdict = match (self, value) {
            (Max(b), Value::Int(v)) => (v <= b).then_some(()).ok_or("exceeds"),
            (Min(b), Value::Int(v)) => (v >= b).then_some(()).ok_or("is below"),
            (Range { min, max }, Value::Int(v)) => {
                (min <= v && v <= max).then_some(()).ok_or("is outside")
            }
            (
                Window {
                    not_before,
                    not_after,
                },
                Value::Time(t),
            ) => (not_before <= t && t <= not_after)
                .then_some(())
                .ok_or("is outside"),
            (AllowSet(s), Value::Str(v)) => s.contains(v).then_some(()).ok_or("is not in"),
            (DenySet(s), Value::Str(v)) => (!s.contains(v)).then_some(()).ok_or("is in"),
            (AllowFolded(s), Value::Str(v)) => {
                s.contains(&text::fold(v)).then_some(()).ok_or("is not in")
            }
            (DenyFolded(s), Value::Str(v)) => {
                (!s.contains(&text::fold(v))).then_some(()).ok_or("is in")
            }
            (Prefix(p), Value::Str(v)) => {
                if let Err(why) = path(v) {
                    return Err(format!("{} is not a canonical path: {why}", Shown(v)));
                }
                path_under(p, v).then_some(()).ok_or("is not under")
            }
            (Exact(e), v) if e == v => Ok(()),
            (Exact(e), v) if std::mem::discriminant(e) == std::mem::discriminant(v) => {
                Err("is not")
            }
            (_, v) => {
                return Err(format!(
                    "{v} is {}; the {} claim needs {}",
                    v.type_name(),
                    self.kind(),
                    self.needs()
                ));
            }
        };
        verdict.map_err(|how| format!("{value} {how} {self}"))
    }

    /// What type of value the kind evaluates.
    fn needs(&self) -> &'static str {
        use Constraint::*;
        match self {
            Max(_) | Min(_) | Range { .. } => "an integer",
            Window { .. } => "a time",
            AllowSet(_) | DenySet(_) | AllowFolded(_) | DenyFolded(_) | Prefix(_) => "a string",
            Exact(v) => v.type_name(),
        }
    }
}

/// Most bytes of set members a constraint's `Display` prints before `… (+N more)`.
const SHOWN_SET_BYTES: usize = 96;

/// A set as messages show it: its first members up to [`SHOWN_SET_BYTES`], then how many
/// more there are. Never the whole set (a set may hold 64 values of 512 bytes).
struct ShownSet<'a>(&'a BTreeSet<String>);

impl fmt::Display for ShownSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut used = 0;
        f.write_str("{")?;
        for (i, m) in self.0.iter().enumerate() {
            let shown = Shown(m).to_string();
            if i > 0 && used + shown.len() > SHOWN_SET_BYTES {
                return write!(f, ", … (+{} more)}}", self.0.len() - i);
            }
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&shown)?;
            used += shown.len() + 1;
        }
        f.write_str("}")
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Constraint::*;
        match self {
            Max(v) => write!(f, "max {v}"),
            Min(v) => write!(f, "min {v}"),
            Range { min, max } => write!(f, "range {min}..={max}"),
            Window {
                not_before,
                not_after,
            } => write!(f, "window {}..={}", Time(*not_before), Time(*not_after)),
            AllowSet(s) => write!(f, "allow {}", ShownSet(s)),
            DenySet(s) => write!(f, "deny {}", ShownSet(s)),
            AllowFolded(s) => write!(f, "allow-ci {}", ShownSet(s)),
            DenyFolded(s) => write!(f, "deny-ci {}", ShownSet(s)),
            Prefix(p) => write!(f, "prefix {}", Shown(p)),
            Exact(v) => write!(f, "exact {v}"),
        }
    }
}

/// Is `s` a canonical resource path? `Err` says why not. Absolute and `/`-separated, with
/// no empty (`//`), `.` or `..` segment (a trailing `/` is allowed), no backslash and no
/// `;` (a path parameter some servers strip: `..;`); percent-encoding only as `%XX`, never
/// of `/`, `\`, `.`, `%` or `;`, and decoding to UTF-8; and no segment that Unicode
/// compatibility normalisation turns into a dot segment or a separator (`．．`, `‥`, a
/// fullwidth solidus). So no decoding or normalising step after Writ's check can turn the
/// path into one outside the prefix the rules saw.
pub fn path(s: &str) -> Result<(), &'static str> {
    if !s.starts_with('/') {
        return Err("it does not start with /");
    }
    if s.contains('\\') {
        return Err("it contains a backslash");
    }
    if s.contains(';') {
        return Err("it contains a ;");
    }
    let decoded = percent_decoded(s)?;
    let rest = &decoded[1..];
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            if i == last {
                continue; // a trailing slash, or the root `/`
            }
            return Err("it has an empty segment");
        }
        let nfkc = ComposingNormalizer::new_nfkc().normalize(seg);
        if matches!(&*nfkc, "." | "..") {
            return Err("it has a . or .. segment");
        }
        if nfkc.contains(['/', '\\', ';', '%']) {
            return Err("it has a character that normalises to a separator");
        }
    }
    Ok(())
}

/// `s` with its `%XX` escapes decoded, refusing malformed escapes, escapes of `/`, `\`,
/// `.`, `%` or `;`, and bytes that are not UTF-8 once decoded.
fn percent_decoded(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
            return Err("it has a % that is not a %XX escape");
        };
        if matches!(v, b'/' | b'\\' | b'.' | b'%' | b';') {
            return Err("it percent-encodes a separator, a dot, a % or a ;");
        }
        out.push(v);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| "its percent-encoding does not decode to UTF-8")
}

/// Does prefix `p` match the canonical path `v` (see [`Constraint::Prefix`])? Also the
/// narrowing order: a child prefix `c` is within `p` exactly when `c == p` or `p` matches
/// `c` (everything `c` matches is then below or at what `p` matches).
fn path_under(p: &str, v: &str) -> bool {
    if p.ends_with('/') {
        v.len() > p.len() && v.starts_with(p)
    } else {
        v == p || v.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// One claim: a constraint, and the scopes whose actions it constrains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// What the attribute must satisfy.
    pub constraint: Constraint,
    /// The scopes this claim constrains; `None`: every scope. Never an empty set.
    pub applies_to: Option<BTreeSet<String>>,
}

impl Claim {
    /// A claim on every scope.
    pub fn on_every_scope(constraint: Constraint) -> Claim {
        Claim {
            constraint,
            applies_to: None,
        }
    }

    /// Does this claim constrain actions of `scope`?
    pub fn applies(&self, scope: &str) -> bool {
        self.applies_to.as_ref().is_none_or(|s| s.contains(scope))
    }

    /// `child ⊑ self`: a narrower constraint on at least the same scopes.
    pub fn is_narrowed_by(&self, child: &Claim) -> bool {
        let scopes = match (&self.applies_to, &child.applies_to) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(p), Some(c)) => c.is_superset(p),
        };
        scopes && self.constraint.is_narrowed_by(&child.constraint)
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.constraint)?;
        if let Some(scopes) = &self.applies_to {
            write!(f, " on {}", ShownSet(scopes))?;
        }
        Ok(())
    }
}

/// A token's claims: claim name → claim.
pub type Claims = BTreeMap<String, Claim>;

/// An action's attributes: name → the values it names (one or more; every one must pass).
pub type Attributes = BTreeMap<String, Vec<Value>>;

/// Why an action was denied: the claim (or `scope`) that denied it, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `"scope"` or the name of the claim that denied.
    pub denied_by: String,
    /// Human-readable reason, bounded: it names the offending value and the constraint's
    /// kind, never a whole set.
    pub reason: String,
}

/// Checks one action, a required scope plus attributes, against scopes and claims.
/// Every claim that applies to the scope must permit every value of its attribute;
/// attributes no claim names are unconstrained.
pub fn authorize(
    scopes: &BTreeSet<String>,
    claims: &Claims,
    scope: &str,
    attributes: &Attributes,
) -> Result<(), Denial> {
    if !scopes.contains(scope) {
        return Err(Denial {
            denied_by: "scope".into(),
            reason: format!("scope {} is not granted", Shown(scope)),
        });
    }
    for (name, claim) in claims.iter().filter(|(_, c)| c.applies(scope)) {
        let deny = |reason: String| Denial {
            denied_by: name.clone(),
            reason,
        };
        let values = match attributes.get(name) {
            Some(values) if !values.is_empty() => values,
            _ => {
                return Err(deny(format!(
                    "attribute {} is required by the {} claim on it",
                    Shown(name),
                    claim.constraint.kind()
                )));
            }
        };
        for (i, v) in values.iter().enumerate() {
            claim.constraint.permits(v).map_err(|r| {
                deny(if values.len() > 1 {
                    format!("item {i}: {r}")
                } else {
                    r
                })
            })?;
        }
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

    fn s(v: &str) -> Value {
        Value::Str(v.into())
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
        assert!(
            !Max(5).is_narrowed_by(&Min(5)),
            "unrelated kinds never compare"
        );
        // An exact value narrows any constraint that permits it, and no other.
        assert!(Max(500).is_narrowed_by(&Exact(Value::Int(450))));
        assert!(!Max(500).is_narrowed_by(&Exact(Value::Int(501))));
        assert!(!Max(500).is_narrowed_by(&Exact(Value::Str("450".into()))));
        assert!(DenySet(set(&["h"])).is_narrowed_by(&Exact(Value::Str("x".into()))));
        assert!(!DenySet(set(&["h"])).is_narrowed_by(&Exact(Value::Str("h".into()))));
        assert!(Prefix("/t/".into()).is_narrowed_by(&Exact(Value::Str("/t/1".into()))));
        assert!(!Exact(Value::Int(1)).is_narrowed_by(&Max(1)));
    }

    #[test]
    fn ranges_narrow_bounds_and_each_other() {
        use Constraint::*;
        let r = |min, max| Range { min, max };
        assert!(Max(500).is_narrowed_by(&r(100, 500)));
        assert!(!Max(500).is_narrowed_by(&r(100, 501)));
        assert!(Min(100).is_narrowed_by(&r(100, 500)));
        assert!(!Min(100).is_narrowed_by(&r(99, 500)));
        assert!(r(0, 10).is_narrowed_by(&r(2, 8)));
        assert!(!r(0, 10).is_narrowed_by(&r(-1, 8)));
        assert!(
            !r(0, 10).is_narrowed_by(&Max(5)),
            "a bare max is unbounded below"
        );
        assert_eq!(r(1, 3).permits(&Value::Int(3)), Ok(()));
        assert!(r(1, 3).permits(&Value::Int(4)).is_err());
        assert!(r(1, 3).permits(&Value::Time(2)).is_err(), "typed");
        let w = |a, b| Window {
            not_before: a,
            not_after: b,
        };
        assert!(w(100, 200).is_narrowed_by(&w(150, 200)));
        assert!(!w(100, 200).is_narrowed_by(&w(150, 201)));
        assert_eq!(w(100, 200).permits(&Value::Time(100)), Ok(()));
        assert!(
            w(100, 200).permits(&Value::Int(150)).is_err(),
            "a number is not a time"
        );
        assert_eq!(
            w(1_764_547_200, 1_765_843_199).to_string(),
            "window 2025-12-01T00:00:00Z..=2025-12-15T23:59:59Z"
        );
    }

    #[test]
    fn times_show_as_dates_and_out_of_range_as_seconds() {
        assert_eq!(Time(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Time(MAX_DATE_SECS).to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(Time(MAX_DATE_SECS + 1).to_string(), "@253402300800");
        assert_eq!(Time(-1).to_string(), "@-1");
        assert_eq!(Time(i64::MIN).to_string(), format!("@{}", i64::MIN));
    }

    #[test]
    fn case_insensitive_sets_compare_folded() {
        use Constraint::*;
        let deny = Constraint::deny_folded(["Gambling".to_string()]);
        for v in ["gambling", "GAMBLING", "ｇａｍｂｌｉｎｇ"] {
            assert!(deny.permits(&s(v)).is_err(), "{v}");
        }
        assert_eq!(deny.permits(&s("travel")), Ok(()));
        // Exact deny is covered by a case-insensitive one, not the other way round.
        assert!(DenySet(set(&["gambling"])).is_narrowed_by(&deny));
        assert!(!deny.is_narrowed_by(&DenySet(set(&["gambling", "GAMBLING"]))));
        let allow = Constraint::allow_folded(["Travel".to_string(), "Food".to_string()]);
        assert!(allow.is_narrowed_by(&AllowSet(set(&["TRAVEL"]))));
        assert!(!allow.is_narrowed_by(&AllowSet(set(&["hotel"]))));
        assert!(!AllowSet(set(&["travel"])).is_narrowed_by(&allow));
        assert_eq!(allow.permits(&s("tRaVeL")), Ok(()));
    }

    #[test]
    fn prefixes_match_whole_segments_of_canonical_paths() {
        let p = Constraint::Prefix("/trips".into());
        for ok in ["/trips", "/trips/", "/trips/12", "/trips/12/legs"] {
            assert_eq!(p.permits(&s(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "/tripsX",
            "/trip",
            "/trips/../admin",
            "/trips/./x",
            "/trips//x",
            "/trips/%2e%2e/admin",
            "/trips%2Fadmin",
            "/trips\\..\\admin",
            "trips/1",
            "/trips/..;/admin",
            "/trips/%252e%252e/admin",
            "/trips/%u002e%u002e/admin",
            "/trips/%c0%ae%c0%ae/admin",
            "/trips/．．/admin",
            "/trips/‥/admin",
            "/trips/x／..",
            "/trips/%zz",
        ] {
            assert!(p.permits(&s(bad)).is_err(), "{bad}");
        }
        // Percent-encoded UTF-8 and plain non-ASCII segments are paths like any other.
        for ok in ["/trips/caf%C3%A9", "/trips/café", "/trips/a%20b"] {
            assert_eq!(p.permits(&s(ok)), Ok(()), "{ok}");
        }
        let below = Constraint::Prefix("/trips/".into());
        assert!(below.permits(&s("/trips")).is_err());
        assert!(below.permits(&s("/trips/")).is_err(), "strictly below");
        assert!(below.is_narrowed_by(&below.clone()));
        assert_eq!(below.permits(&s("/trips/1")), Ok(()));
        assert!(p.is_narrowed_by(&below));
        assert!(!below.is_narrowed_by(&p));
        assert!(!p.is_narrowed_by(&Constraint::Prefix("/tripsX".into())));
        assert!(Constraint::Prefix("/".into()).is_narrowed_by(&p));
    }

    #[test]
    fn claims_scoped_to_some_scopes_constrain_only_those() {
        let claims: Claims = [(
            "amount".to_string(),
            Claim {
                constraint: Constraint::Max(500),
                applies_to: Some(set(&["pay"])),
            },
        )]
        .into();
        let scopes = set(&["pay", "search"]);
        let none = Attributes::new();
        assert_eq!(authorize(&scopes, &claims, "search", &none), Ok(()));
        assert_eq!(
            authorize(&scopes, &claims, "pay", &none)
                .unwrap_err()
                .denied_by,
            "amount"
        );
        let every = Claim::on_every_scope(Constraint::Max(500));
        let pay_only = claims["amount"].clone();
        assert!(pay_only.is_narrowed_by(&every), "more scopes is narrower");
        assert!(!every.is_narrowed_by(&pay_only), "fewer scopes is wider");
    }

    #[test]
    fn every_item_of_a_multi_valued_attribute_must_pass() {
        let claims: Claims = [(
            "item".to_string(),
            Claim::on_every_scope(Constraint::AllowSet(set(&["a", "b"]))),
        )]
        .into();
        let scopes = set(&["buy"]);
        let attrs = |v: &[&str]| -> Attributes {
            [("item".into(), v.iter().map(|x| s(x)).collect())].into()
        };
        assert_eq!(
            authorize(&scopes, &claims, "buy", &attrs(&["a", "b"])),
            Ok(())
        );
        let d = authorize(&scopes, &claims, "buy", &attrs(&["a", "c"])).unwrap_err();
        assert!(d.reason.starts_with("item 1:"), "{d:?}");
        assert!(
            authorize(&scopes, &claims, "buy", &attrs(&[])).is_err(),
            "no items"
        );
    }

    #[test]
    fn denials_name_the_value_not_the_whole_set() {
        let big: BTreeSet<String> = (0..64).map(|i| format!("{i:0>500}")).collect();
        let c = Constraint::AllowSet(big);
        let why = c.permits(&s(&"y".repeat(512))).unwrap_err();
        assert!(why.len() < 400, "{} bytes: {why}", why.len());
        assert!(why.contains("more)"), "{why}");
        assert!(c.to_string().len() < 300);
    }

    #[test]
    fn evaluation_fails_closed() {
        let claims: Claims = [
            (
                "amount".to_string(),
                Claim::on_every_scope(Constraint::Max(500)),
            ),
            (
                "category".to_string(),
                Claim::on_every_scope(Constraint::DenySet(set(&["health"]))),
            ),
        ]
        .into();
        let scopes = set(&["pay"]);
        let attrs = |a: i64, c: &str| -> Attributes {
            [
                ("amount".into(), vec![Value::Int(a)]),
                ("category".into(), vec![s(c)]),
            ]
            .into()
        };
        assert_eq!(
            authorize(&scopes, &claims, "pay", &attrs(500, "travel")),
            Ok(())
        );
        let denied_by = |a: &Attributes, scope: &str| {
            authorize(&scopes, &claims, scope, a).unwrap_err().denied_by
        };
        assert_eq!(denied_by(&attrs(501, "travel"), "pay"), "amount");
        assert_eq!(denied_by(&attrs(5, "health"), "pay"), "category");
        assert_eq!(denied_by(&attrs(5, "x"), "refund"), "scope");
        let missing: Attributes = [("amount".into(), vec![Value::Int(1)])].into();
        assert_eq!(denied_by(&missing, "pay"), "category");
        let wrong_type: Attributes = [
            ("amount".into(), vec![s("1")]),
            ("category".into(), vec![s("x")]),
        ]
        .into();
        assert_eq!(denied_by(&wrong_type, "pay"), "amount");
    }
}
