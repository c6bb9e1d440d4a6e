//! The README's table of gRPC status codes, checked row by row against the real server.
//!
//! The table is read from README.md itself: every row must have a scenario here that
//! produces exactly the code the row names, and every scenario must have its row, so the
//! documentation and the code cannot drift apart.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use tonic::Code;
use writ_client::ClientError;
use writ_e2e::*;

/// The rows of the "gRPC status codes" table: situation → code name.
fn readme_rows() -> Vec<(String, String)> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## gRPC status codes")
        .nth(1)
        .expect("README has a gRPC status codes section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 2, "a row of two cells: {l}");
            (cells[0].to_string(), cells[1].trim_matches('`').to_string())
        })
        .collect()
}

type Outcome = Pin<Box<dyn Future<Output = Code>>>;

/// Runs one situation against a fresh server and answers the code it met.
type Scenario = fn(TestServer) -> Outcome;

/// The code a refused call came back with.
fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(ClientError::Status(s)) => s.code(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A server with small limits, so each one can be reached in a few calls.
async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.tokens.max_depth = 2;
        c.tokens.max_children = 1;
    })
    .await
}

/// The trip root and a child for `booking` under it (the child for reuse as a parent).
async fn chain(s: &TestServer) -> (String, String) {
    let root = s.mint(trip_mint()).await.token;
    let kid = s
        .downscope(
            "planner",
            child(
                &root,
                build::agent("booking"),
                &["payments"],
                &["trips:book"],
                vec![],
            ),
        )
        .await
        .token;
    (root, kid)
}

/// Validate with two `x-writ-caller` values (the client library never sends that).
async fn validate_with_two_callers(s: &TestServer, token: &str) -> Code {
    let mut raw = pb::token_service_client::TokenServiceClient::new(s.channel().await);
    let mut req = tonic::Request::new(introspect(token));
    for who in ["planner", "mallory"] {
        req.metadata_mut()
            .append("x-writ-caller", who.parse().expect("ascii"));
    }
    match raw.validate(req).await {
        Err(status) => status.code(),
        Ok(answer) => panic!("two callers were accepted: {answer:?}"),
    }
}

/// Every situation the README's table names, with a scenario that produces it.
fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        (
            "a malformed field, or a cursor that names nothing to continue from (the message names it)",
            |s| {
                Box::pin(async move {
                    let malformed = code(
                        s.minter()
                            .await
                            .mint(pb::MintRequest {
                                subject: String::new(),
                                ..trip_mint()
                            })
                            .await,
                    );
                    // A token of another transaction is no place to continue this one from.
                    let (a, b) = (s.mint(trip_mint()).await, s.mint(trip_mint()).await);
                    let stray = code(
                        s.operator()
                            .await
                            .get_transaction_page(pb::GetTransactionRequest {
                                txn: a.info.expect("info").txn,
                                cursor: token_id(b.info.as_ref()),
                                page_size: 0,
                            })
                            .await,
                    );
                    assert_eq!(malformed, stray);
                    stray
                })
            },
        ),
        (
            "a token id collision between concurrent writes (retry)",
            |_| {
                Box::pin(async move {
                    let e =
                        writ_server::error::ServiceError::Store(writ_store::StoreError::Conflict);
                    tonic::Status::from(e).code()
                })
            },
        ),
        (
            "a string value not in canonical form (not NFC, or with a control, format or invisible character)",
            {
                |s| {
                    Box::pin(async move {
                        let req = pb::MintRequest {
                            purpose: "trip\u{200B}".into(),
                            ..trip_mint()
                        };
                        code(s.minter().await.mint(req).await)
                    })
                }
            },
        ),
        (
            "a grant or context over its size limit, or more than 32 claims after a child adds its own",
            {
                |s| {
                    Box::pin(async move {
                        let root = s.mint(trip_mint()).await.token;
                        let many: Vec<(String, pb::Constraint)> =
                            (0..31).map(|i| (format!("c{i}"), build::max(i))).collect();
                        let req = pb::DownscopeRequest {
                            claims: many.into_iter().collect(),
                            ..child(&root, build::agent("booking"), &[], &["trips:book"], vec![])
                        };
                        code(s.party("planner").await.downscope(req).await)
                    })
                }
            },
        ),
        ("a child that narrows nothing", |_| {
            Box::pin(async move {
                // Keeping every target (its own audience among them) takes loops allowed.
                let s = TestServer::start_with(|c| c.tokens.allow_actor_loops = true).await;
                let root = s.mint(trip_mint()).await.token;
                // The audience changes with every hop; the grant must narrow too.
                let same = child(
                    &root,
                    build::agent("booking"),
                    &["booking", "payments"],
                    &["trips:book", "payments:charge"],
                    vec![],
                );
                code(s.party("planner").await.downscope(same).await)
            })
        }),
        (
            "`drop_rctx` naming an entry the parent does not have",
            |s| {
                Box::pin(async move {
                    let root = s.mint(trip_mint()).await.token;
                    let req = pb::DownscopeRequest {
                        drop_rctx: strings(&["no_such_entry"]),
                        ..child(&root, build::agent("booking"), &[], &["trips:book"], vec![])
                    };
                    code(s.party("planner").await.downscope(req).await)
                })
            },
        ),
        ("an idempotency key reused for a different request", |s| {
            Box::pin(async move {
                let first = pb::MintRequest {
                    idempotency_key: "status-codes-key-1".into(),
                    ..trip_mint()
                };
                s.mint(first.clone()).await;
                let other = pb::MintRequest {
                    purpose: "another trip".into(),
                    ..first
                };
                code(s.minter().await.mint(other).await)
            })
        }),
        ("two values of `x-writ-caller` or `authorization`", |s| {
            Box::pin(async move {
                let (root, _) = chain(&s).await;
                validate_with_two_callers(&s, &root).await
            })
        }),
        ("a missing or wrong minter or operator credential", |s| {
            Box::pin(async move { code(s.anonymous().await.mint(trip_mint()).await) })
        }),
        ("Downscope or Validate without a caller identity", |s| {
            Box::pin(async move {
                let (root, _) = chain(&s).await;
                code(s.anonymous().await.validate(introspect(&root)).await)
            })
        }),
        (
            "a malformed, forged or unknown parent token (Downscope) or token (a holder's Revoke)",
            {
                |s| {
                    Box::pin(async move {
                        let req = child(
                            "writ_not-a-token",
                            build::agent("booking"),
                            &[],
                            &[],
                            vec![],
                        );
                        let malformed = code(s.party("planner").await.downscope(req).await);
                        let forged = {
                            let (root, _) = chain(&s).await;
                            let req = child(
                                &flip_middle(&root),
                                build::agent("booking"),
                                &[],
                                &[],
                                vec![],
                            );
                            code(s.party("planner").await.downscope(req).await)
                        };
                        let revoke = code(
                            s.party("planner")
                                .await
                                .revoke(revoke_token("writ_x", "r"))
                                .await,
                        );
                        assert_eq!(
                            (malformed, forged),
                            (revoke, revoke),
                            "one code for all three"
                        );
                        revoke
                    })
                }
            },
        ),
        (
            "a scope, claim, audience, target, expiry or uses widening (at Mint: a TTL over `tokens.max_ttl_seconds`)",
            {
                |s| {
                    Box::pin(async move {
                        let root = s.mint(trip_mint()).await.token;
                        let wider = child(
                            &root,
                            build::agent("booking"),
                            &[],
                            &["trips:book"],
                            vec![("amount", build::max(5000))],
                        );
                        let claim = code(s.party("planner").await.downscope(wider).await);
                        let ttl = pb::MintRequest {
                            ttl_seconds: 100_000,
                            ..trip_mint()
                        };
                        let mint_ttl = code(s.minter().await.mint(ttl).await);
                        let limited = s
                            .mint(pb::MintRequest {
                                max_uses: 2,
                                ..trip_mint()
                            })
                            .await
                            .token;
                        let uses = pb::DownscopeRequest {
                            max_uses: 3,
                            ..child(
                                &limited,
                                build::agent("booking"),
                                &[],
                                &["trips:book"],
                                vec![],
                            )
                        };
                        let uses = code(s.party("planner").await.downscope(uses).await);
                        assert_eq!(
                            (claim, mint_ttl),
                            (uses, uses),
                            "one code for every widening"
                        );
                        uses
                    })
                }
            },
        ),
        (
            "an actor loop, or a token naming as reachable a party already in its chain",
            |s| {
                Box::pin(async move {
                    let req = pb::MintRequest {
                        targets: strings(&["planner", "booking"]),
                        ..trip_mint()
                    };
                    code(s.minter().await.mint(req).await)
                })
            },
        ),
        ("the caller does not hold the parent token", |s| {
            Box::pin(async move {
                let root = s.mint(trip_mint()).await.token;
                let req = child(&root, build::agent("booking"), &[], &["trips:book"], vec![]);
                code(s.party("mallory").await.downscope(req).await)
            })
        }),
        (
            "the wrong role (a party calling Mint, a minter calling Downscope or Validate, a party asserting a minter's or operator's id)",
            {
                |s| {
                    Box::pin(async move {
                        let party = code(s.party("planner").await.mint(trip_mint()).await);
                        let asserted = code(
                            s.party("local-minter")
                                .await
                                .validate(introspect("x"))
                                .await,
                        );
                        assert_eq!(party, asserted);
                        party
                    })
                }
            },
        ),
        (
            "Validate asking for a Txn-Token JWT by a party the policy does not let receive one (`txn_token_jwt`; never an agent)",
            |s| {
                Box::pin(async move {
                    let root = s.mint(trip_mint()).await.token;
                    let req = pb::ValidateRequest {
                        txn_token_jwt: true,
                        ..introspect(&root)
                    };
                    code(s.party("planner").await.validate(req).await)
                })
            },
        ),
        ("the parent token is expired or revoked", |s| {
            Box::pin(async move {
                let root = s.mint(trip_mint()).await.token;
                s.revoke_as_holder("planner", &root, "done").await;
                let req = child(&root, build::agent("booking"), &[], &["trips:book"], vec![]);
                code(s.party("planner").await.downscope(req).await)
            })
        }),
        (
            "the parent has fewer uses left than the child asks for",
            |s| {
                Box::pin(async move {
                    let root = s
                        .mint(pb::MintRequest {
                            max_uses: 1,
                            ..trip_mint()
                        })
                        .await
                        .token;
                    let ok = s
                        .validate(
                            "planner",
                            check(
                                &root,
                                "trips:book",
                                vec![
                                    ("amount", build::int(5)),
                                    ("category", build::str("travel")),
                                ],
                            ),
                        )
                        .await;
                    assert_allowed(&ok);
                    let req = pb::DownscopeRequest {
                        max_uses: 1,
                        ..child(&root, build::agent("booking"), &[], &["trips:book"], vec![])
                    };
                    code(s.party("planner").await.downscope(req).await)
                })
            },
        ),
        ("the chain is already at `tokens.max_depth`", |s| {
            Box::pin(async move {
                let (_, kid) = chain(&s).await;
                let two = s
                    .downscope(
                        "booking",
                        child(
                            &kid,
                            build::workload("payments"),
                            &[],
                            &["trips:book"],
                            vec![("amount", build::max(5))],
                        ),
                    )
                    .await
                    .token;
                let req = child(
                    &two,
                    build::workload("ledger"),
                    &[],
                    &["trips:book"],
                    vec![],
                );
                code(s.party("payments").await.downscope(req).await)
            })
        }),
        (
            "the parent already has `tokens.max_children` children, or the transaction has issued 4096 tokens",
            {
                |s| {
                    Box::pin(async move {
                        let (root, _) = chain(&s).await; // max_children = 1: the root is full
                        let req = child(
                            &root,
                            build::agent("payments"),
                            &[],
                            &["trips:book"],
                            vec![],
                        );
                        code(s.party("planner").await.downscope(req).await)
                    })
                }
            },
        ),
        (
            "the server's 64 or the operator's 16 event watches already open, or a watcher fell behind or stopped reading",
            |s| {
                Box::pin(async move {
                    let mut open = Vec::new();
                    for _ in 0..16 {
                        open.push(ok(
                            s.operator().await.watch_events(Default::default()).await,
                            "watch",
                        ));
                    }
                    code(s.operator().await.watch_events(Default::default()).await)
                })
            },
        ),
        (
            "Revoke or a chain query of an unknown token id or transaction",
            |s| {
                Box::pin(async move {
                    let unknown = "tid_00000000000000000000000000000000";
                    code(
                        s.operator()
                            .await
                            .revoke(revoke_token_id(unknown, "r"))
                            .await,
                    )
                })
            },
        ),
        ("a storage failure", |_| {
            Box::pin(async move {
                let e = writ_server::error::ServiceError::Store(writ_store::StoreError::Backend(
                    "disk full".into(),
                ));
                tonic::Status::from(e).code()
            })
        }),
    ]
}

fn code_named(name: &str) -> Code {
    match name {
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "NOT_FOUND" => Code::NotFound,
        "UNAVAILABLE" => Code::Unavailable,
        "ABORTED" => Code::Aborted,
        other => panic!("unknown code {other:?} in the README's table"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_readmes_status_table_holds() {
    let rows: BTreeMap<String, String> = readme_rows().into_iter().collect();
    let scenarios: BTreeMap<&str, Scenario> = scenarios().into_iter().collect();
    let documented: Vec<&str> = rows.keys().map(String::as_str).collect();
    let tested: Vec<&str> = scenarios.keys().copied().collect();
    assert_eq!(documented, tested, "README rows and scenarios differ");
    for (situation, name) in &rows {
        let got = scenarios[situation.as_str()](server().await).await;
        assert_eq!(got, code_named(name), "README row {situation:?}");
    }
}
