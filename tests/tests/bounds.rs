//! What one request can make the server store and send is bounded: records (the grant and
//! the context), audit events, refusal and denial messages, and the pages of the largest
//! transaction a chain may grow.

use prost::Message;
use tonic::Code;
use writ_e2e::*;

/// 64 distinct 500-byte members (the most one set may hold, near the longest values).
fn big_set(tag: char) -> Vec<String> {
    (0..64)
        .map(|i| format!("{i:02}{}", tag.to_string().repeat(498)))
        .collect()
}

fn set_claim(values: &[String], allow: bool) -> pb::Constraint {
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    if allow {
        build::allow(&refs)
    } else {
        build::deny(&refs)
    }
}

/// The longest message the server sends in a status.
const MAX_STATUS: usize = writ_server::error::MAX_STATUS_MESSAGE;
/// The largest encoded audit event.
const MAX_EVENT: usize = writ_core::limits::MAX_EVENT_BYTES;

#[tokio::test]
async fn a_denial_or_refusal_against_huge_sets_is_cheap_to_store_and_send() {
    let s = TestServer::start().await;
    let root = s
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking"],
            &["trips:book"],
            vec![("a", set_claim(&big_set('a'), true))],
        ))
        .await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    // A denied action: the reason names the value and the kind, not 32 KiB of set.
    let denied = s
        .validate(
            "planner",
            check(
                &root.token,
                "trips:book",
                vec![("a", build::str(&"z".repeat(512)))],
            ),
        )
        .await;
    let reason = assert_denied(&denied, "a");
    assert!(reason.len() <= 512, "{} bytes: {reason}", reason.len());
    // A refused widening: the grpc-message stays small though both sets are huge.
    let wider = child(
        &root.token,
        build::agent("booking"),
        &[],
        &["trips:book"],
        vec![("a", set_claim(&big_set('b'), true))],
    );
    let msg = assert_refused(
        s.party("planner").await.downscope(wider).await,
        Code::PermissionDenied,
        &["claims", "more)"],
    );
    assert!(msg.len() <= MAX_STATUS, "{} bytes: {msg}", msg.len());
    // Every event stored for the transaction is bounded, those two included.
    let events = s.events(&txn).await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind()).collect();
    assert!(kinds.contains(&pb::EventKind::Refused), "{kinds:?}");
    for e in &events {
        assert!(
            e.encoded_len() <= MAX_EVENT,
            "{} bytes: {e:?}",
            e.encoded_len()
        );
        assert!(e.detail.len() <= 512, "{e:?}");
    }
    let validated = events
        .iter()
        .find(|e| e.kind() == pb::EventKind::Validated)
        .expect("the denial was recorded");
    assert!(
        validated.encoded_len() < 1024,
        "{}",
        validated.encoded_len()
    );
}

#[tokio::test]
async fn a_child_whose_grant_would_pass_its_limit_is_refused_before_anything_is_stored() {
    let s = TestServer::start().await;
    let root = s
        .mint(mint_request(
            "alice",
            build::agent("planner"),
            &["booking"],
            &["trips:book"],
            vec![("a", set_claim(&big_set('a'), false))],
        ))
        .await;
    // Each hop may add a large claim of its own; together they would pass 32 KiB.
    let grow = child(
        &root.token,
        build::agent("booking"),
        &[],
        &["trips:book"],
        vec![("b", set_claim(&big_set('b'), false))],
    );
    assert_refused(
        s.party("planner").await.downscope(grow).await,
        Code::InvalidArgument,
        &["size", "limit"],
    );
    let node = ok(
        s.operator()
            .await
            .get_token(&token_id(root.info.as_ref()))
            .await,
        "get_token",
    )
    .token
    .expect("root");
    assert_eq!(node.children, 0, "nothing was stored for the refused child");
}

/// Builds the largest transaction a chain may grow: 4096 tokens (a tree four levels deep
/// under the default fan-out of 16), every record near the grant and context limits, and
/// reads it back page by page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_transaction_reads_back_whole_in_pages_within_the_cap() {
    const TOKENS: usize = 4096;
    let s = TestServer::start_with(|c| {
        c.storage.durability = writ_store::Durability::Buffered;
        c.audit.validations = writ_server::config::ValidationEvents::None;
    })
    .await;
    // A grant of about 29 KiB and a context of about 12 KiB, inherited by every token.
    let pool: Vec<String> = (0..16).map(|i| format!("agent-{i:02}")).collect();
    let claims: Vec<(String, pb::Constraint)> = (0..8)
        .map(|i| {
            let members: Vec<String> = (0..7)
                .map(|j| format!("{i}{j}{}", "m".repeat(490)))
                .collect();
            (format!("c{i}"), set_claim(&members, false))
        })
        .collect();
    let ctx: std::collections::HashMap<String, String> = (0..12)
        .map(|i| (format!("k{i:02}"), "v".repeat(500)))
        .collect();
    let root = s
        .mint(pb::MintRequest {
            subject: "alice".into(),
            audience: Some(build::agent("planner")),
            targets: pool.clone(),
            scopes: strings(&["trips:book", "trips:search"]),
            claims: claims.into_iter().collect(),
            tctx: ctx.clone(),
            rctx: ctx,
            ..Default::default()
        })
        .await;
    let txn = root.info.as_ref().expect("info").txn.clone();
    // Breadth first: each token derives one child per target it still has, each child
    // dropping its own audience from the targets it passes on.
    let mut clients = std::collections::HashMap::new();
    let mut queue =
        std::collections::VecDeque::from([(root.token.clone(), "planner".to_string(), pool)]);
    let mut total = 1;
    'build: while let Some((token, holder, targets)) = queue.pop_front() {
        for name in &targets {
            if total == TOKENS {
                queue.push_front((token, holder, targets.clone()));
                break 'build;
            }
            let rest: Vec<String> = targets.iter().filter(|t| *t != name).cloned().collect();
            let rest_refs: Vec<&str> = rest.iter().map(String::as_str).collect();
            if !clients.contains_key(&holder) {
                clients.insert(holder.clone(), s.party(&holder).await);
            }
            let c = clients.get_mut(&holder).expect("client");
            let req = child(
                &token,
                build::agent(name),
                &rest_refs,
                &["trips:book", "trips:search"],
                vec![],
            );
            let kid = ok(c.downscope(req).await, "downscope").token;
            total += 1;
            queue.push_back((kid, name.clone(), rest));
        }
    }
    // The transaction is full: one more token is refused.
    let (token, holder, targets) = queue.pop_front().expect("a token with room left");
    let extra = child(
        &token,
        build::agent(&targets[0]),
        &[],
        &["trips:book"],
        vec![],
    );
    assert_refused(
        s.party(&holder).await.downscope(extra).await,
        Code::ResourceExhausted,
        &["4096"],
    );
    // Read it back a page at a time: every page within the cap, every token once, in
    // depth-first order with each parent before its children.
    let mut op = s.operator().await;
    let (mut seen, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = ok(
            op.get_transaction_page(pb::GetTransactionRequest {
                txn: txn.clone(),
                cursor: cursor.clone(),
                page_size: 0,
            })
            .await,
            "get_transaction",
        );
        pages += 1;
        // The service's encoding cap is 32 MiB; a page stops at 4 MiB of tokens.
        assert!(
            page.encoded_len() <= 4 * 1024 * 1024 + 64 * 1024,
            "page of {} bytes",
            page.encoded_len()
        );
        assert!(!page.tokens.is_empty());
        for n in &page.tokens {
            let info = n.info.as_ref().expect("info");
            if !info.parent_token_id.is_empty() {
                assert!(
                    seen.contains(&info.parent_token_id),
                    "a parent comes before its child"
                );
            }
            seen.push(info.token_id.clone());
        }
        assert_eq!(page.truncated, !page.next_cursor.is_empty());
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen.len(), TOKENS);
    assert!(pages > 1, "the transaction did not need paging: {pages}");
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), TOKENS);
    // The client follows the cursor for `writ chain`, and gets the same order.
    let whole = ok(op.get_transaction(&txn).await, "get_transaction");
    let ids: Vec<String> = whole
        .tokens
        .iter()
        .map(|n| n.info.as_ref().expect("info").token_id.clone())
        .collect();
    assert_eq!(ids, seen);
}
