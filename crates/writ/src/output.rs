//! What the client commands print: aligned text for people, one JSON object for scripts.

use anyhow::Result;
use serde_json::{Map, Value as Json, json};
use std::process::ExitCode;
use writ_api::pb;
use writ_core::claims::Time;

/// The gRPC code as its canonical upper-case name.
pub fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, ch)| {
            let sep = (i > 0 && ch.is_uppercase()).then_some('_');
            sep.into_iter().chain(ch.to_uppercase())
        })
        .collect()
}

/// A refusal as JSON.
pub fn status_json(s: &tonic::Status) -> Json {
    json!({ "error": { "code": code_name(s.code()), "message": s.message() } })
}

fn value_json(v: &pb::Value) -> Json {
    match &v.kind {
        Some(pb::value::Kind::Int(i)) => json!(i),
        Some(pb::value::Kind::Str(s)) => json!(s),
        Some(pb::value::Kind::Time(t)) => json!({ "time": t }),
        Some(pb::value::Kind::List(l)) => l.values.iter().map(value_json).collect(),
        None => Json::Null,
    }
}

fn constraint_json(c: &pb::Constraint) -> Json {
    use pb::constraint::Kind;
    let set =
        |s: &pb::StringSet| json!({ "values": s.values, "case_insensitive": s.case_insensitive });
    let mut out = match &c.kind {
        Some(Kind::Max(v)) => json!({ "max": v }),
        Some(Kind::Min(v)) => json!({ "min": v }),
        Some(Kind::Range(r)) => json!({ "range": { "min": r.min, "max": r.max } }),
        Some(Kind::Window(w)) => {
            json!({ "window": { "not_before": w.not_before, "not_after": w.not_after } })
        }
        Some(Kind::Allow(s)) if s.case_insensitive => json!({ "allow": set(s) }),
        Some(Kind::Deny(s)) if s.case_insensitive => json!({ "deny": set(s) }),
        Some(Kind::Allow(s)) => json!({ "allow": s.values }),
        Some(Kind::Deny(s)) => json!({ "deny": s.values }),
        Some(Kind::Prefix(p)) => json!({ "prefix": p }),
        Some(Kind::Exact(v)) => json!({ "exact": value_json(v) }),
        None => Json::Null,
    };
    if !c.applies_to.is_empty()
        && let Some(o) = out.as_object_mut()
    {
        o.insert("applies_to".into(), json!(c.applies_to));
    }
    out
}

fn constraint_text(c: &pb::Constraint) -> String {
    use pb::constraint::Kind;
    let ci = |s: &pb::StringSet| {
        if s.case_insensitive {
            " (any case)"
        } else {
            ""
        }
    };
    let time = |t: i64| Time(t).to_string();
    let text = match &c.kind {
        Some(Kind::Max(v)) => format!("<= {v}"),
        Some(Kind::Min(v)) => format!(">= {v}"),
        Some(Kind::Range(r)) => format!("in {}..={}", r.min, r.max),
        Some(Kind::Window(w)) => {
            format!("between {} and {}", time(w.not_before), time(w.not_after))
        }
        Some(Kind::Allow(s)) => format!("in {{{}}}{}", s.values.join(","), ci(s)),
        Some(Kind::Deny(s)) => format!("not in {{{}}}{}", s.values.join(","), ci(s)),
        Some(Kind::Prefix(p)) => format!("under {p:?}"),
        Some(Kind::Exact(v)) => format!("== {}", value_json(v)),
        None => "?".into(),
    };
    if c.applies_to.is_empty() {
        text
    } else {
        format!("{text} (for {})", c.applies_to.join(" "))
    }
}

fn kind_name(k: i32) -> &'static str {
    match pb::ActorKind::try_from(k) {
        Ok(pb::ActorKind::User) => "user",
        Ok(pb::ActorKind::Agent) => "agent",
        Ok(pb::ActorKind::Workload) => "workload",
        _ => "unspecified",
    }
}

fn client_name(c: i32) -> &'static str {
    match pb::ClientType::try_from(c) {
        Ok(pb::ClientType::Confidential) => "confidential",
        Ok(pb::ClientType::Public) => "public",
        _ => "unspecified",
    }
}

/// How a party proved its identity, as `--json` and the text name it.
fn auth_name(m: i32) -> &'static str {
    match pb::AuthMethod::try_from(m) {
        Ok(pb::AuthMethod::Mtls) => "mtls",
        Ok(pb::AuthMethod::ClientAssertion) => "client_assertion",
        Ok(pb::AuthMethod::JwtSvid) => "jwt_svid",
        Ok(pb::AuthMethod::Bearer) => "bearer",
        Ok(pb::AuthMethod::Asserted) => "asserted",
        Ok(pb::AuthMethod::Internal) => "internal",
        Ok(pb::AuthMethod::ConsentLink) => "consent_link",
        Ok(pb::AuthMethod::OidcSignIn) => "oidc_sign_in",
        _ => "unspecified",
    }
}

fn actors(info: &pb::TokenInfo) -> Vec<&pb::Act> {
    let mut out = Vec::new();
    let mut cur = info.act.as_ref();
    while let Some(a) = cur {
        out.push(a);
        cur = a.act.as_deref();
    }
    out
}

fn act_json(a: &pb::Act) -> Json {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("kind".into(), json!(kind_name(a.kind)));
    m.insert("client_type".into(), json!(client_name(a.client_type)));
    if let Some(inner) = &a.act {
        m.insert("act".into(), act_json(inner));
    }
    Json::Object(m)
}

/// Everything a `TokenInfo` says, as JSON.
pub fn info_json(i: &pb::TokenInfo) -> Json {
    let claims: Map<String, Json> = i
        .claims
        .iter()
        .map(|(k, c)| (k.clone(), constraint_json(c)))
        .collect();
    let aud = i.audience.as_ref();
    json!({
        "token_id": i.token_id,
        "txn": i.txn,
        "parent_token_id": if i.parent_token_id.is_empty() { Json::Null } else { json!(i.parent_token_id) },
        "depth": i.depth,
        "subject": i.subject,
        "trust_domain": i.trust_domain,
        "act": i.act.as_ref().map_or(Json::Null, act_json),
        "audience": aud.map_or(Json::Null, |a| json!({
            "id": a.id, "kind": kind_name(a.kind), "client_type": client_name(a.client_type)
        })),
        "targets": i.targets,
        "scopes": i.scopes,
        "claims": claims,
        "purpose": i.purpose,
        "tctx": i.tctx,
        "rctx": i.rctx,
        "issued_at_unix_ms": i.issued_at_unix_ms,
        "expires_at_unix_ms": i.expires_at_unix_ms,
        "agent_traffic": i.agent_traffic,
        "actor_client_type": client_name(i.actor_client_type),
        "max_uses": i.max_uses,
        "require_action_check": i.require_action_check,
        "actor_auth": auth_name(i.actor_auth),
        "latent_scopes": i.latent_scopes,
        "consent_request_id": if i.consent_request_id.is_empty() { Json::Null } else { json!(i.consent_request_id) },
    })
}

fn info_text(i: &pb::TokenInfo) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("token_id", i.token_id.clone()),
        ("txn", i.txn.clone()),
        ("depth", i.depth.to_string()),
        ("subject", i.subject.clone()),
    ];
    // The current actor (the outermost, last here) with how it proved its identity.
    let acts = actors(i);
    let chain: Vec<String> = acts
        .iter()
        .rev()
        .enumerate()
        .map(|(k, a)| {
            if k + 1 == acts.len() && i.actor_auth() != pb::AuthMethod::Unspecified {
                format!(
                    "{} ({}, {})",
                    a.id,
                    kind_name(a.kind),
                    auth_name(i.actor_auth)
                )
            } else {
                format!("{} ({})", a.id, kind_name(a.kind))
            }
        })
        .collect();
    rows.push(("actors", chain.join(" -> ")));
    if let Some(a) = &i.audience {
        rows.push((
            "audience",
            format!(
                "{} ({}, {})",
                a.id,
                kind_name(a.kind),
                client_name(a.client_type)
            ),
        ));
    }
    rows.push(("targets", i.targets.join(" ")));
    rows.push(("scopes", i.scopes.join(" ")));
    if !i.latent_scopes.is_empty() {
        rows.push((
            "latent",
            format!(
                "{} (the user must consent first)",
                i.latent_scopes.join(" ")
            ),
        ));
    }
    if !i.consent_request_id.is_empty() {
        rows.push(("consent", i.consent_request_id.clone()));
    }
    let mut claims: Vec<String> = i
        .claims
        .iter()
        .map(|(k, c)| format!("{k} {}", constraint_text(c)))
        .collect();
    claims.sort();
    rows.push(("claims", claims.join("; ")));
    if !i.purpose.is_empty() {
        rows.push(("purpose", i.purpose.clone()));
    }
    rows.push(("expires_at", format!("{} (unix ms)", i.expires_at_unix_ms)));
    rows.push((
        "max_uses",
        if i.max_uses == 0 {
            "unlimited".to_string()
        } else {
            i.max_uses.to_string()
        },
    ));
    if i.require_action_check {
        rows.push(("checks", "action checks only".to_string()));
    }
    rows.iter()
        .map(|(k, v)| format!("{k:<11} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A freshly issued token (mint or downscope).
pub fn issued(json_out: bool, token: &str, info: Option<&pb::TokenInfo>) -> Result<ExitCode> {
    if json_out {
        let mut v = json!({ "token": token });
        if let (Some(i), Json::Object(m)) = (info, &mut v) {
            m.insert("info".into(), info_json(i));
        }
        println!("{v}");
    } else {
        println!("{:<11} {token}", "token");
        if let Some(i) = info {
            println!("{}", info_text(i));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reason_name(r: i32) -> &'static str {
    match pb::InactiveReason::try_from(r) {
        Ok(pb::InactiveReason::Expired) => "expired",
        Ok(pb::InactiveReason::Revoked) => "revoked",
        Ok(pb::InactiveReason::Unknown) => "unknown",
        Ok(pb::InactiveReason::WrongAudience) => "wrong_audience",
        Ok(pb::InactiveReason::Malformed) => "malformed",
        Ok(pb::InactiveReason::Exhausted) => "exhausted",
        Ok(pb::InactiveReason::ActionRequired) => "action_required",
        _ => "unspecified",
    }
}

/// A Validate answer; exit 1 when inactive or the action is denied.
pub fn validation(json_out: bool, r: &pb::ValidateResponse) -> Result<ExitCode> {
    let denied = r.decision.as_ref().is_some_and(|d| !d.allowed);
    if json_out {
        let mut v = json!({ "active": r.active });
        if let Json::Object(m) = &mut v {
            if r.active {
                if let Some(i) = &r.info {
                    m.insert("info".into(), info_json(i));
                }
                if let Some(d) = &r.decision {
                    m.insert(
                        "decision".into(),
                        json!({
                            "allowed": d.allowed, "denied_by": d.denied_by, "reason": d.reason,
                            "consent_required": d.consent_required,
                            "consent_request_id": d.consent_request_id,
                        }),
                    );
                }
                if !r.txn_token_jwt.is_empty() {
                    m.insert("txn_token_jwt".into(), json!(r.txn_token_jwt));
                }
            } else {
                m.insert(
                    "inactive_reason".into(),
                    json!(reason_name(r.inactive_reason)),
                );
            }
        }
        println!("{v}");
    } else if r.active {
        println!("{:<11} true", "active");
        if let Some(i) = &r.info {
            println!("{}", info_text(i));
        }
        if let Some(d) = &r.decision {
            if d.allowed {
                println!("{:<11} allowed", "action");
            } else {
                println!("{:<11} denied by {}: {}", "action", d.denied_by, d.reason);
                if d.consent_required {
                    let open = if d.consent_request_id.is_empty() {
                        "none open yet: the token's holder asks with `writ consent request`"
                    } else {
                        &d.consent_request_id
                    };
                    println!("{:<11} {open}", "consent");
                }
            }
        }
        if !r.txn_token_jwt.is_empty() {
            println!("{:<11} {}", "jwt", r.txn_token_jwt);
        }
    } else {
        println!("{:<11} false", "active");
        println!("{:<11} {}", "reason", reason_name(r.inactive_reason));
    }
    if !r.active {
        eprintln!("writ: token inactive: {}", reason_name(r.inactive_reason));
    } else if let Some(d) = r.decision.as_ref().filter(|_| denied) {
        eprintln!("writ: action denied by {}: {}", d.denied_by, d.reason);
    }
    Ok(if r.active && !denied {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A Revoke answer: the token ids this call revoked (none when already revoked).
pub fn revoked(json_out: bool, r: &pb::RevokeResponse) -> Result<ExitCode> {
    if json_out {
        println!("{}", json!({ "revoked_token_ids": r.revoked_token_ids }));
    } else {
        println!("revoked {} token(s)", r.revoked_token_ids.len());
        for id in &r.revoked_token_ids {
            println!("{id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_name(s: i32) -> &'static str {
    match pb::TokenStatus::try_from(s) {
        Ok(pb::TokenStatus::Active) => "active",
        Ok(pb::TokenStatus::Expired) => "expired",
        Ok(pb::TokenStatus::Revoked) => "revoked",
        Ok(pb::TokenStatus::Exhausted) => "exhausted",
        _ => "unspecified",
    }
}

/// The status, in ANSI colour when `colour` (stdout is a terminal).
fn status_text(s: i32, colour: bool) -> String {
    let name = status_name(s);
    if !colour {
        return name.to_string();
    }
    let code = match pb::TokenStatus::try_from(s) {
        Ok(pb::TokenStatus::Active) => "32",
        Ok(pb::TokenStatus::Expired) => "33",
        Ok(pb::TokenStatus::Revoked) => "31",
        Ok(pb::TokenStatus::Exhausted) => "35",
        _ => "2",
    };
    format!("\x1b[{code}m{name}\x1b[0m")
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn utc(ms: u64) -> String {
    Time(i64::try_from(ms / 1000).unwrap_or(i64::MAX)).to_string()
}

fn info_of(n: &pb::TokenNode) -> pb::TokenInfo {
    n.info.clone().unwrap_or_default()
}

/// `actor -> audience`, the actor being the outermost `act`.
fn hop(i: &pb::TokenInfo) -> String {
    let actor = i.act.as_ref().map_or("?", |a| a.id.as_str());
    let aud = i.audience.as_ref().map_or("?", |a| a.id.as_str());
    format!("{actor} -> {aud}")
}

/// One node in one line: id, hop, status, scopes, expiry, what narrowed.
fn node_line(n: &pb::TokenNode, colour: bool) -> String {
    let i = info_of(n);
    let mut line = format!(
        "{}  {}  {}  scopes={}  expires={}",
        i.token_id,
        hop(&i),
        status_text(n.status, colour),
        if i.scopes.is_empty() {
            "-".to_string()
        } else {
            i.scopes.join(",")
        },
        utc(i.expires_at_unix_ms),
    );
    if !n.narrowed.is_empty() {
        line.push_str(&format!("  [{}]", n.narrowed.join("; ")));
    }
    line
}

/// One node as JSON.
pub fn node_json(n: &pb::TokenNode) -> Json {
    let i = info_of(n);
    json!({
        "token_id": i.token_id,
        "parent_token_id": if i.parent_token_id.is_empty() { Json::Null } else { json!(i.parent_token_id) },
        "depth": i.depth,
        "status": status_name(n.status),
        "uses": n.uses,
        "children": n.children,
        "narrowed": n.narrowed,
        "revocation": n.revocation.as_ref().map_or(Json::Null, |r| json!({
            "at_unix_ms": r.at_unix_ms,
            "by": r.by,
            "reason": r.reason,
            "cause_token_id": r.cause_token_id,
        })),
        "info": info_json(&i),
    })
}

/// How `writ chain` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainFormat {
    Tree,
    Json,
    Dot,
}

/// For each node, the indices of its children, and the roots (no parent in the answer).
fn tree_shape(tokens: &[pb::TokenNode]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let ids: std::collections::HashMap<String, usize> = tokens
        .iter()
        .enumerate()
        .map(|(k, n)| (info_of(n).token_id, k))
        .collect();
    let mut roots = Vec::new();
    let mut kids = vec![Vec::new(); tokens.len()];
    for (k, n) in tokens.iter().enumerate() {
        let parent = n.info.as_ref().map_or("", |i| i.parent_token_id.as_str());
        match ids.get(parent) {
            Some(&p) if p != k => kids[p].push(k),
            _ => roots.push(k),
        }
    }
    (roots, kids)
}

fn tree_lines(
    tokens: &[pb::TokenNode],
    kids: &[Vec<usize>],
    k: usize,
    prefix: &str,
    colour: bool,
    out: &mut Vec<String>,
) {
    let n = kids[k].len();
    for (j, &c) in kids[k].iter().enumerate() {
        let last = j + 1 == n;
        let (guide, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        out.push(format!("{prefix}{guide}{}", node_line(&tokens[c], colour)));
        tree_lines(tokens, kids, c, &format!("{prefix}{next}"), colour, out);
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A GetTransaction answer: a tree, JSON, or a Graphviz digraph.
pub fn chain(format: ChainFormat, colour: bool, t: &pb::Transaction) -> Result<ExitCode> {
    let (roots, kids) = tree_shape(&t.tokens);
    match format {
        ChainFormat::Json => {
            let tokens: Vec<Json> = t.tokens.iter().map(node_json).collect();
            println!(
                "{}",
                json!({ "txn": t.txn, "subject": t.subject, "truncated": t.truncated, "tokens": tokens })
            );
        }
        ChainFormat::Tree => {
            let mut out = vec![format!(
                "{}  subject={}  tokens={}{}",
                t.txn,
                t.subject,
                t.tokens.len(),
                if t.truncated { " (truncated)" } else { "" }
            )];
            for &r in &roots {
                out.push(node_line(&t.tokens[r], colour));
                tree_lines(&t.tokens, &kids, r, "", colour, &mut out);
            }
            println!("{}", out.join("\n"));
        }
        ChainFormat::Dot => {
            let mut out = vec![
                format!("digraph \"{}\" {{", dot_escape(&t.txn)),
                "  node [shape=box];".to_string(),
            ];
            for n in &t.tokens {
                let i = info_of(n);
                let aud = i.audience.as_ref().map_or("?", |a| a.id.as_str());
                let label = format!(
                    "{}\\n{}\\n{}",
                    dot_escape(aud),
                    status_name(n.status),
                    dot_escape(&i.scopes.join(" "))
                );
                let style = match pb::TokenStatus::try_from(n.status) {
                    Ok(pb::TokenStatus::Revoked) => ", color=red, fontcolor=red",
                    Ok(pb::TokenStatus::Expired | pb::TokenStatus::Exhausted) => ", color=gray",
                    _ => "",
                };
                out.push(format!(
                    "  \"{}\" [label=\"{label}\"{style}];",
                    dot_escape(&i.token_id)
                ));
            }
            for (p, cs) in kids.iter().enumerate() {
                let pid = info_of(&t.tokens[p]).token_id;
                for &c in cs {
                    let child = &t.tokens[c];
                    let label = child
                        .narrowed
                        .iter()
                        .map(|l| dot_escape(l))
                        .collect::<Vec<_>>()
                        .join("\\n");
                    out.push(format!(
                        "  \"{}\" -> \"{}\" [label=\"{label}\"];",
                        dot_escape(&pid),
                        dot_escape(&info_of(child).token_id)
                    ));
                }
            }
            out.push("}".to_string());
            println!("{}", out.join("\n"));
        }
    }
    if t.truncated {
        eprintln!(
            "writ: truncated: the transaction has more tokens than one answer carries ({})",
            t.tokens.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A GetToken answer: the node and its ancestry, root first.
pub fn token(json_out: bool, colour: bool, r: &pb::GetTokenResponse) -> Result<ExitCode> {
    let node = r.token.clone().unwrap_or_default();
    if json_out {
        let ancestors: Vec<Json> = r.ancestors.iter().map(node_json).collect();
        println!(
            "{}",
            json!({ "token": node_json(&node), "ancestors": ancestors })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let i = info_of(&node);
    let mut rows: Vec<(&str, String)> = vec![
        ("status", status_text(node.status, colour)),
        ("uses", node.uses.to_string()),
        ("children", node.children.to_string()),
    ];
    if let Some(rv) = &node.revocation {
        rows.push((
            "revoked",
            format!(
                "{} by {}: {} (cause {})",
                utc(rv.at_unix_ms),
                rv.by,
                rv.reason,
                rv.cause_token_id
            ),
        ));
    }
    for l in &node.narrowed {
        rows.push(("narrowed", l.clone()));
    }
    for a in &r.ancestors {
        rows.push(("ancestor", node_line(a, colour)));
    }
    println!("{}", info_text(&i));
    for (k, v) in rows {
        println!("{k:<11} {v}");
    }
    Ok(ExitCode::SUCCESS)
}

fn event_kind_name(k: i32) -> &'static str {
    match pb::EventKind::try_from(k) {
        Ok(pb::EventKind::Minted) => "minted",
        Ok(pb::EventKind::Downscoped) => "downscoped",
        Ok(pb::EventKind::Validated) => "validated",
        Ok(pb::EventKind::Refused) => "refused",
        Ok(pb::EventKind::Revoked) => "revoked",
        Ok(pb::EventKind::Aggregated) => "aggregated",
        Ok(pb::EventKind::ConsentRequested) => "consent_requested",
        Ok(pb::EventKind::ConsentApproved) => "consent_approved",
        Ok(pb::EventKind::ConsentDenied) => "consent_denied",
        Ok(pb::EventKind::ConsentRedeemed) => "consent_redeemed",
        Ok(pb::EventKind::ConsentExpired) => "consent_expired",
        _ => "unspecified",
    }
}

/// One audit event as a JSON object (one line per event in `writ events --json`).
pub fn event_json(e: &pb::AuditEvent) -> Json {
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("at".into(), json!(utc(e.at_unix_ms)));
    m.insert("at_unix_ms".into(), json!(e.at_unix_ms));
    m.insert("kind".into(), json!(event_kind_name(e.kind)));
    m.insert("txn".into(), json!(e.txn));
    m.insert("subject".into(), json!(e.subject));
    m.insert("actor".into(), json!(e.actor));
    m.insert("actor_auth".into(), json!(auth_name(e.actor_auth)));
    m.insert("token_id".into(), json!(e.token_id));
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.into(), json!(v));
        }
    };
    put("audience", &e.audience);
    put("parent_token_id", &e.parent_token_id);
    put("action", &e.action);
    put("result", &e.result);
    put("detail", &e.detail);
    put("dimension", &e.dimension);
    put("reason", &e.reason);
    put("consent_request_id", &e.consent_request_id);
    put("channel", &e.channel);
    match e.kind() {
        pb::EventKind::Minted => {
            m.insert("scopes".into(), json!(e.scopes));
            m.insert("expires_at_unix_ms".into(), json!(e.expires_at_unix_ms));
        }
        pb::EventKind::Downscoped => {
            m.insert("scopes".into(), json!(e.scopes));
            m.insert("narrowed".into(), json!(e.narrowed));
        }
        pb::EventKind::Revoked => {
            m.insert("revoked".into(), json!(e.revoked));
        }
        pb::EventKind::Aggregated => {
            m.insert(
                "aggregated_kind".into(),
                json!(event_kind_name(e.aggregated_kind)),
            );
            m.insert("count".into(), json!(e.count));
            m.insert("window_start_unix_ms".into(), json!(e.window_start_unix_ms));
            m.insert("window_end_unix_ms".into(), json!(e.window_end_unix_ms));
        }
        pb::EventKind::ConsentRequested => {
            m.insert("attributes".into(), json!(e.attributes));
            m.insert("expires_at_unix_ms".into(), json!(e.expires_at_unix_ms));
        }
        pb::EventKind::ConsentRedeemed => {
            m.insert("scopes".into(), json!(e.scopes));
        }
        _ => {}
    }
    Json::Object(m)
}

/// "N refusals by X in this window": events counted instead of stored one by one.
fn aggregated_line(e: &pb::AuditEvent) -> String {
    let what = match e.aggregated_kind() {
        pb::EventKind::Refused => "refusals",
        pb::EventKind::Validated => "validations",
        _ => "events",
    };
    let by = if e.actor == "*" {
        "callers beyond the most tracked"
    } else {
        &e.actor
    };
    format!(
        "{} {what} by {by} in this window ({} to {}), counted, not stored one by one",
        e.count,
        utc(e.window_start_unix_ms),
        utc(e.window_end_unix_ms)
    )
}

/// One audit event as a line: time, kind, actor, then what happened.
pub fn event(json_out: bool, colour: bool, show_txn: bool, e: &pb::AuditEvent) -> String {
    if json_out {
        return event_json(e).to_string();
    }
    let kind = event_kind_name(e.kind);
    let kind = if colour {
        let code = match e.kind() {
            pb::EventKind::Minted | pb::EventKind::Downscoped => "32",
            pb::EventKind::Refused | pb::EventKind::Aggregated => "33",
            pb::EventKind::Revoked | pb::EventKind::ConsentDenied => "31",
            pb::EventKind::ConsentRequested
            | pb::EventKind::ConsentApproved
            | pb::EventKind::ConsentRedeemed => "36",
            _ => "0",
        };
        format!("\x1b[{code}m{kind:<10}\x1b[0m")
    } else {
        format!("{kind:<10}")
    };
    // An unproven (development mode) identity stands out in the trail.
    let asserted;
    let actor = if e.actor_auth() == pb::AuthMethod::Asserted {
        asserted = format!("{} (asserted)", e.actor);
        &asserted
    } else {
        &e.actor
    };
    let what = match e.kind() {
        pb::EventKind::Minted => format!(
            "{} -> {}  {}  scopes: {}",
            actor,
            e.audience,
            e.token_id,
            e.scopes.join(" ")
        ),
        pb::EventKind::Downscoped => {
            let mut s = format!(
                "{} -> {}  {} (from {})",
                actor, e.audience, e.token_id, e.parent_token_id
            );
            if !e.narrowed.is_empty() {
                s.push_str(&format!("  narrowed: {}", e.narrowed.join("; ")));
            }
            s
        }
        pb::EventKind::Validated => {
            let action = if e.action.is_empty() {
                "introspect"
            } else {
                &e.action
            };
            let mut s = format!("{}  {}  {action}: {}", actor, e.token_id, e.result);
            if !e.detail.is_empty() {
                s.push_str(&format!(" ({})", e.detail));
            }
            s
        }
        pb::EventKind::Refused => {
            format!("{}  {}  {}: {}", actor, e.token_id, e.dimension, e.detail)
        }
        pb::EventKind::Revoked => {
            let target = if e.token_id.is_empty() {
                "whole transaction"
            } else {
                &e.token_id
            };
            format!("{}  {target}  {} token(s): {}", actor, e.revoked, e.reason)
        }
        pb::EventKind::Aggregated => aggregated_line(e),
        pb::EventKind::ConsentRequested => {
            let with = if e.attributes.is_empty() {
                String::new()
            } else {
                format!(" with {}", e.attributes.join(", "))
            };
            format!(
                "{}  {}  asks the user: {}{with} at {} ({}); {}",
                actor, e.token_id, e.action, e.audience, e.reason, e.consent_request_id
            )
        }
        pb::EventKind::ConsentApproved | pb::EventKind::ConsentDenied => {
            let what = if e.kind() == pb::EventKind::ConsentApproved {
                "approved"
            } else {
                "denied"
            };
            format!(
                "{}  {what} {} via {}",
                actor, e.consent_request_id, e.channel
            )
        }
        pb::EventKind::ConsentRedeemed => format!(
            "{} -> {}  {} (from {}) redeemed {}  scopes: {}",
            actor,
            e.audience,
            e.token_id,
            e.parent_token_id,
            e.consent_request_id,
            e.scopes.join(" ")
        ),
        pb::EventKind::ConsentExpired => format!(
            "{} expired ({} when it expired)",
            e.consent_request_id, e.detail
        ),
        pb::EventKind::Unspecified => String::new(),
    };
    let txn = if show_txn {
        format!("{}  ", e.txn)
    } else {
        String::new()
    };
    format!("{}  {txn}{kind}  {what}", utc(e.at_unix_ms))
}

/// A ListTransactions answer: aligned columns, newest first, or one JSON object.
pub fn txns(json_out: bool, colour: bool, r: &pb::ListTransactionsResponse) -> Result<ExitCode> {
    if json_out {
        let list: Vec<Json> = r
            .transactions
            .iter()
            .map(|t| {
                json!({
                    "txn": t.txn,
                    "subject": t.subject,
                    "status": status_name(t.status),
                    "minted_at": utc(t.minted_at_unix_ms),
                    "minted_at_unix_ms": t.minted_at_unix_ms,
                    "expires_at_unix_ms": t.expires_at_unix_ms,
                    "minted_by": t.minted_by,
                    "audience": t.audience.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                    "root_token_id": t.root_token_id,
                    "scopes": t.scopes,
                    "purpose": t.purpose,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "transactions": list, "next_cursor": r.next_cursor })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = r
        .transactions
        .iter()
        .map(|t| {
            [
                utc(t.minted_at_unix_ms),
                t.txn.clone(),
                t.subject.clone(),
                t.audience
                    .as_ref()
                    .map(|a| a.id.clone())
                    .unwrap_or_default(),
                status_name(t.status).to_string(),
            ]
        })
        .collect();
    let header = ["MINTED", "TXN", "SUBJECT", "FIRST HOP", "STATUS"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let w: Vec<usize> = (0..4).map(width).collect();
    println!(
        "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
        header[0],
        header[1],
        header[2],
        header[3],
        header[4],
        w0 = w[0],
        w1 = w[1],
        w2 = w[2],
        w3 = w[3]
    );
    for (row, t) in rows.iter().zip(&r.transactions) {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            status_text(t.status, colour),
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    }
    if !r.next_cursor.is_empty() {
        eprintln!("writ: more: continue with --cursor {}", r.next_cursor);
    }
    Ok(ExitCode::SUCCESS)
}

/// A client certificate `writ certs issue` wrote.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The NAME it was issued for (what `--as` takes).
    pub name: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The certificate file.
    pub cert: std::path::PathBuf,
    /// The private key file (0600).
    pub key: std::path::PathBuf,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// What `writ certs issue` wrote: one line per certificate (SPIFFE ID, certificate, key),
/// then the expiry; or one JSON object.
pub fn certs_issued(json_out: bool, issued: &[IssuedCert]) {
    if json_out {
        let list: Vec<Json> = issued
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "spiffe_id": c.spiffe_id,
                    "cert": c.cert.display().to_string(),
                    "key": c.key.display().to_string(),
                    "expires_at": Time(c.expires_at).to_string(),
                    "expires_at_unix": c.expires_at,
                })
            })
            .collect();
        println!("{}", json!({ "issued": list }));
        return;
    }
    let rows: Vec<[String; 3]> = issued
        .iter()
        .map(|c| {
            [
                c.spiffe_id.clone(),
                c.cert.display().to_string(),
                c.key.display().to_string(),
            ]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    for r in &rows {
        println!("{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
    }
    if let Some(c) = issued.first() {
        println!("expires {}", Time(c.expires_at));
    }
}

fn signing_state_name(s: i32) -> &'static str {
    match pb::SigningKeyState::try_from(s) {
        Ok(pb::SigningKeyState::Next) => "next",
        Ok(pb::SigningKeyState::Current) => "current",
        Ok(pb::SigningKeyState::Retired) => "retired",
        _ => "unspecified",
    }
}

/// One signing key as JSON (times as RFC 3339 and Unix milliseconds; absent when unset).
fn signing_key_json(k: &pb::SigningKey) -> Json {
    let mut m = Map::new();
    m.insert("kid".into(), json!(k.kid));
    m.insert("alg".into(), json!(k.alg));
    m.insert("state".into(), json!(signing_state_name(k.state)));
    m.insert("signing".into(), json!(k.signing));
    for (name, ms) in [
        ("created_at", k.created_at_unix_ms),
        ("activated_at", k.activated_at_unix_ms),
        ("retired_at", k.retired_at_unix_ms),
        ("rotates_at", k.rotates_at_unix_ms),
        ("removed_at", k.removed_at_unix_ms),
    ] {
        if ms != 0 {
            m.insert(name.into(), json!(utc(ms)));
            m.insert(format!("{name}_unix_ms"), json!(ms));
        }
    }
    Json::Object(m)
}

/// `writ keys list` and `writ keys rotate`: one line per key (kid, algorithm, state, a
/// `*` on the key that signs, when it was created, and when it rotates or is removed),
/// or one JSON object (with the JWKS, when listed).
pub fn signing_keys(
    json_out: bool,
    keys: &[pb::SigningKey],
    jwks_json: Option<&str>,
) -> Result<ExitCode> {
    if json_out {
        let mut v = json!({ "keys": keys.iter().map(signing_key_json).collect::<Vec<_>>() });
        if let (Json::Object(m), Some(jwks)) = (&mut v, jwks_json) {
            m.insert("jwks".into(), serde_json::from_str(jwks)?);
        }
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = keys
        .iter()
        .map(|k| {
            let until = if k.removed_at_unix_ms != 0 {
                format!("removed {}", utc(k.removed_at_unix_ms))
            } else if k.rotates_at_unix_ms != 0 {
                format!("rotates {}", utc(k.rotates_at_unix_ms))
            } else {
                String::new()
            };
            [
                k.kid.clone(),
                k.alg.clone(),
                format!(
                    "{}{}",
                    signing_state_name(k.state),
                    if k.signing { "*" } else { "" }
                ),
                utc(k.created_at_unix_ms),
                until,
            ]
        })
        .collect();
    let header = ["KID", "ALG", "STATE", "CREATED", "UNTIL"].map(String::from);
    let all: Vec<&[String; 5]> = std::iter::once(&header).chain(&rows).collect();
    let width = |i: usize| all.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
    for r in all {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            r[0], r[1], r[2], r[3], r[4]
        );
    }
    println!("* signs new JWTs");
    Ok(ExitCode::SUCCESS)
}

fn consent_status_name(s: i32) -> &'static str {
    match pb::ConsentStatus::try_from(s) {
        Ok(pb::ConsentStatus::Pending) => "pending",
        Ok(pb::ConsentStatus::Approved) => "approved",
        Ok(pb::ConsentStatus::Denied) => "denied",
        Ok(pb::ConsentStatus::Redeemed) => "redeemed",
        Ok(pb::ConsentStatus::Expired) => "expired",
        _ => "unspecified",
    }
}

fn consent_party_json(p: &pb::ConsentParty) -> Json {
    json!({
        "id": p.id,
        "display_name": if p.display_name.is_empty() { Json::Null } else { json!(p.display_name) },
        "kind": kind_name(p.kind),
        "client_type": client_name(p.client_type),
    })
}

fn consent_party_text(p: &pb::ConsentParty) -> String {
    let name = if p.display_name.is_empty() {
        p.id.clone()
    } else {
        format!("{} ({})", p.display_name, p.id)
    };
    format!(
        "{name} [{}, {}]",
        kind_name(p.kind),
        client_name(p.client_type)
    )
}

/// Everything a consent request says, as JSON. (Never its link: only `RequestConsent`'s
/// answer carries the URL.)
pub fn consent_json(c: &pb::ConsentRequestInfo) -> Json {
    let action = c.action.as_ref();
    let attributes: Map<String, Json> = action
        .map(|a| {
            a.attributes
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect()
        })
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert("id".into(), json!(c.id));
    m.insert("status".into(), json!(consent_status_name(c.status)));
    m.insert("txn".into(), json!(c.txn));
    m.insert("token_id".into(), json!(c.token_id));
    m.insert("requester".into(), json!(c.requester));
    m.insert("requester_auth".into(), json!(auth_name(c.requester_auth)));
    m.insert("subject".into(), json!(c.subject));
    m.insert(
        "action".into(),
        json!({ "scope": action.map(|a| a.scope.clone()).unwrap_or_default(), "attributes": attributes }),
    );
    m.insert("scope_description".into(), json!(c.scope_description));
    m.insert(
        "resource".into(),
        c.resource.as_ref().map_or(Json::Null, consent_party_json),
    );
    m.insert(
        "chain".into(),
        c.chain.iter().map(consent_party_json).collect(),
    );
    m.insert("purpose".into(), json!(c.purpose));
    m.insert("reason".into(), json!(c.reason));
    m.insert("description".into(), json!(c.description));
    m.insert("created_at_unix_ms".into(), json!(c.created_at_unix_ms));
    m.insert("expires_at_unix_ms".into(), json!(c.expires_at_unix_ms));
    if !c.channel.is_empty() {
        m.insert(
            "decision".into(),
            json!({
                "by": c.decided_by,
                "auth": auth_name(c.decided_by_auth),
                "channel": c.channel,
                "at_unix_ms": c.decided_at_unix_ms,
            }),
        );
    }
    if !c.redeemed_token_id.is_empty() {
        m.insert(
            "redeemed".into(),
            json!({ "token_id": c.redeemed_token_id, "at_unix_ms": c.redeemed_at_unix_ms }),
        );
    }
    Json::Object(m)
}

fn consent_text(c: &pb::ConsentRequestInfo) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", c.id.clone()),
        ("status", consent_status_name(c.status).to_owned()),
        ("what", c.description.clone()),
        ("subject", c.subject.clone()),
    ];
    if let Some(a) = &c.action {
        rows.push(("scope", a.scope.clone()));
        let mut attrs: Vec<String> = a
            .attributes
            .iter()
            .map(|(k, v)| format!("{k} = {}", value_json(v)))
            .collect();
        attrs.sort();
        rows.push(("attributes", attrs.join(", ")));
    }
    if let Some(r) = &c.resource {
        rows.push(("resource", consent_party_text(r)));
    }
    let chain: Vec<String> = c.chain.iter().map(consent_party_text).collect();
    rows.push(("chain", chain.join(" -> ")));
    rows.push((
        "requester",
        format!("{} ({})", c.requester, auth_name(c.requester_auth)),
    ));
    if !c.purpose.is_empty() {
        rows.push(("purpose", c.purpose.clone()));
    }
    rows.push(("reason", c.reason.clone()));
    rows.push(("txn", c.txn.clone()));
    rows.push(("token_id", c.token_id.clone()));
    rows.push(("created_at", utc(c.created_at_unix_ms)));
    rows.push(("expires_at", utc(c.expires_at_unix_ms)));
    if !c.channel.is_empty() {
        rows.push((
            "decided",
            format!(
                "by {} ({}) via {} at {}",
                c.decided_by,
                auth_name(c.decided_by_auth),
                c.channel,
                utc(c.decided_at_unix_ms)
            ),
        ));
    }
    if !c.redeemed_token_id.is_empty() {
        rows.push((
            "redeemed",
            format!(
                "for {} at {}",
                c.redeemed_token_id,
                utc(c.redeemed_at_unix_ms)
            ),
        ));
    }
    rows.iter()
        .map(|(k, v)| format!("{k:<11} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One consent request (`writ consent show|approve|deny`).
pub fn consent(json_out: bool, c: &pb::ConsentRequestInfo) -> Result<ExitCode> {
    if json_out {
        println!("{}", consent_json(c));
    } else {
        println!("{}", consent_text(c));
    }
    Ok(ExitCode::SUCCESS)
}

/// A RequestConsent answer: the request and the URL to give to the user (only to the
/// user: it is a capability).
pub fn consent_requested(json_out: bool, r: &pb::RequestConsentResponse) -> Result<ExitCode> {
    let info = r.request.clone().unwrap_or_default();
    if json_out {
        println!(
            "{}",
            json!({
                "id": info.id,
                "consent_url": r.consent_url,
                "existing": r.existing,
                "request": consent_json(&info),
            })
        );
    } else {
        println!("{:<11} {}", "consent_url", r.consent_url);
        if r.existing {
            println!(
                "{:<11} an identical request was open: this is that one",
                "existing"
            );
        }
        println!("{}", consent_text(&info));
    }
    Ok(ExitCode::SUCCESS)
}

/// A ListConsents answer: one line per request, newest first, or one JSON object.
pub fn consents(json_out: bool, r: &pb::ListConsentsResponse) -> Result<ExitCode> {
    if json_out {
        let list: Vec<Json> = r.requests.iter().map(consent_json).collect();
        println!(
            "{}",
            json!({ "requests": list, "next_cursor": r.next_cursor })
        );
        return Ok(ExitCode::SUCCESS);
    }
    for c in &r.requests {
        println!(
            "{}  {}  {:<8}  {}  {}",
            utc(c.created_at_unix_ms),
            c.id,
            consent_status_name(c.status),
            c.subject,
            c.description
        );
    }
    if !r.next_cursor.is_empty() {
        eprintln!("writ: more: continue with --after {}", r.next_cursor);
    }
    Ok(ExitCode::SUCCESS)
}
