//! What the client commands print: aligned text for people, one JSON object for scripts.

use anyhow::Result;
use serde_json::{Map, Value as Json, json};
use std::process::ExitCode;
use writ_api::pb;

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
        None => Json::Null,
    }
}

fn constraint_json(c: &pb::Constraint) -> Json {
    use pb::constraint::Kind;
    match &c.kind {
        Some(Kind::Max(v)) => json!({ "max": v }),
        Some(Kind::Min(v)) => json!({ "min": v }),
        Some(Kind::Allow(s)) => json!({ "allow": s.values }),
        Some(Kind::Deny(s)) => json!({ "deny": s.values }),
        Some(Kind::Prefix(p)) => json!({ "prefix": p }),
        Some(Kind::Exact(v)) => json!({ "exact": value_json(v) }),
        None => Json::Null,
    }
}

fn constraint_text(c: &pb::Constraint) -> String {
    use pb::constraint::Kind;
    match &c.kind {
        Some(Kind::Max(v)) => format!("<= {v}"),
        Some(Kind::Min(v)) => format!(">= {v}"),
        Some(Kind::Allow(s)) => format!("in {{{}}}", s.values.join(",")),
        Some(Kind::Deny(s)) => format!("not in {{{}}}", s.values.join(",")),
        Some(Kind::Prefix(p)) => format!("starts with {p:?}"),
        Some(Kind::Exact(v)) => format!("== {}", value_json(v)),
        None => "?".into(),
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
    })
}

fn info_text(i: &pb::TokenInfo) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("token_id", i.token_id.clone()),
        ("txn", i.txn.clone()),
        ("depth", i.depth.to_string()),
        ("subject", i.subject.clone()),
    ];
    let chain: Vec<String> = actors(i)
        .iter()
        .rev()
        .map(|a| format!("{} ({})", a.id, kind_name(a.kind)))
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
                        json!({ "allowed": d.allowed, "denied_by": d.denied_by, "reason": d.reason }),
                    );
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
            }
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
