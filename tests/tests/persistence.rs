//! Durability across restarts, and the token secret never reaching the disk.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use writ_e2e::pb::InactiveReason;
use writ_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_on_the_same_data_dir() {
    let mut srv = TestServer::start().await;
    let credential = srv.credential();
    let root = srv.mint(trip_mint()).await;
    let c1 = srv
        .downscope(
            "planner",
            child(
                &root.token,
                build::agent("booking"),
                &["payments"],
                &["trips:book"],
                vec![("amount", build::max(10))],
            ),
        )
        .await;
    let before_root = assert_active(&srv.validate("planner", introspect(&root.token)).await);
    let before_c1 = assert_active(&srv.validate("booking", introspect(&c1.token)).await);

    srv.restart().await;

    assert_eq!(
        srv.credential(),
        credential,
        "the minter credential is kept, not regenerated"
    );
    let after_root = assert_active(&srv.validate("planner", introspect(&root.token)).await);
    let after_c1 = assert_active(&srv.validate("booking", introspect(&c1.token)).await);
    assert_eq!(after_root, before_root);
    assert_eq!(after_c1, before_c1);
    // The restarted server still enforces audiences and rules on the old tokens...
    assert_inactive(
        &srv.validate("booking", introspect(&root.token)).await,
        InactiveReason::WrongAudience,
    );
    assert_denied(
        &srv.validate(
            "booking",
            check(&c1.token, "trips:book", vec![("amount", build::int(11))]),
        )
        .await,
        "amount",
    );
    // ...derives from them, and keeps minting with the same credential.
    let c2 = srv
        .downscope(
            "booking",
            child(
                &c1.token,
                build::workload("payments"),
                &[],
                &["trips:book"],
                vec![],
            ),
        )
        .await;
    let c2 = assert_active(&srv.validate("payments", introspect(&c2.token)).await);
    assert_eq!(c2.txn, before_root.txn);
    assert_eq!(c2.parent_token_id, before_c1.token_id);
    srv.mint(trip_mint()).await;

    // And a second restart, with clients still connected to the old instance, changes nothing.
    let _idle_client = srv.party("planner").await;
    srv.restart().await;
    assert_eq!(
        assert_active(&srv.validate("booking", introspect(&c1.token)).await),
        before_c1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_secrets_never_reach_the_data_dir_or_the_store() {
    let mut srv = TestServer::start().await;
    let mut tokens = Vec::new();
    for i in 0..4 {
        let root = srv
            .mint(pb::MintRequest {
                subject: format!("user-{i}"),
                ..trip_mint()
            })
            .await
            .token;
        let c1 = srv
            .downscope(
                "planner",
                child(
                    &root,
                    build::agent("booking"),
                    &["payments"],
                    &["trips:book", "payments:charge"],
                    vec![],
                ),
            )
            .await
            .token;
        let c2 = srv
            .downscope(
                "booking",
                child(
                    &c1,
                    build::workload("payments"),
                    &[],
                    &["payments:charge"],
                    vec![],
                ),
            )
            .await
            .token;
        // Validation and refused requests see the secret too; they must not write it either.
        assert_active(&srv.validate("payments", introspect(&c2)).await);
        assert_inactive(
            &srv.validate("planner", introspect(&c2)).await,
            InactiveReason::WrongAudience,
        );
        let _ = srv
            .party("booking")
            .await
            .downscope(child(&root, build::agent("payments"), &[], &[], vec![]))
            .await;
        tokens.extend([root, c1, c2]);
    }
    srv.stop().await;

    let files = files_under(srv.data_dir());
    let on_redis = writ_e2e::redis::test_backend() == writ_server::config::Backend::Redis;
    assert!(
        on_redis
            || files
                .iter()
                .any(|f| f.starts_with(srv.data_dir().join(writ_server::DB_DIR))),
        "the store wrote files: {files:?}"
    );
    let mut contents: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| {
            (
                f.display().to_string(),
                std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display())),
            )
        })
        .collect();
    let total: usize = contents.iter().map(|(_, b)| b.len()).sum();
    assert!(total > 0);
    if on_redis {
        // Every key and value of the server's namespace in the cluster.
        contents.extend(writ_e2e::redis::logical_contents(srv.config()).await);
    } else {
        // SST blocks are compressed, so the files' bytes do not show what they hold: add
        // every key and value of every column family, read back through RocksDB.
        contents.extend(logical_contents(&srv.data_dir().join(writ_server::DB_DIR)));
    }
    // Positive control: the scan does see what the store wrote (the subjects of the records),
    // so the absence checks below are meaningful.
    for i in 0..4 {
        let subject = format!("user-{i}");
        assert!(
            contents
                .iter()
                .any(|(_, b)| contains_bytes(b, subject.as_bytes())),
            "no file under the data dir contains the record of {subject}; files: {files:?}"
        );
    }

    for token in &tokens {
        let body = token.strip_prefix("writ_").expect("token prefix");
        let raw = URL_SAFE_NO_PAD.decode(body).expect("the body is base64url");
        assert_eq!(raw.len(), 53, "version | key id | entropy | tag");
        let needles: [(&str, &[u8]); 4] = [
            ("token", token.as_bytes()),
            ("base64url body", body.as_bytes()),
            ("decoded token", &raw),
            ("entropy", &raw[5..37]),
        ];
        for (path, bytes) in &contents {
            for (what, needle) in &needles {
                assert!(
                    !contains_bytes(bytes, needle),
                    "the {what} of a token was written to {path}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_trust_domain_disowns_the_old_tokens() {
    let mut srv = TestServer::start().await;
    let root = srv.mint(trip_mint()).await;
    assert_active(&srv.validate("planner", introspect(&root.token)).await);
    // The development CA belongs to its trust domain: a server refuses to mix them, so
    // moving the trust domain takes a new CA (the old one's certificates name the old one).
    srv.stop().await;
    let tls = srv.data_dir().join("tls");
    std::fs::remove_dir_all(&tls).expect("removing the old trust domain's CA");
    srv.restart_with(|c| c.trust_domain = "bank.example".into())
        .await;
    // Same keys, same store, but not this trust domain's token any more.
    assert_inactive(
        &srv.validate("planner", introspect(&root.token)).await,
        InactiveReason::Unknown,
    );
    let r = srv
        .party("planner")
        .await
        .downscope(child(
            &root.token,
            build::agent("booking"),
            &[],
            &["trips:book"],
            vec![],
        ))
        .await;
    assert_refused(
        r,
        tonic::Code::Unauthenticated,
        &["parent_token", "not a valid token"],
    );
    // New tokens carry the new trust domain.
    let fresh = srv.mint(trip_mint()).await;
    assert_eq!(fresh.info.expect("info").trust_domain, "bank.example");
}

/// Every key and value of every column family of the store at `db`, one entry per
/// column family, read through RocksDB (read-only).
fn logical_contents(db: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let opts = rocksdb::Options::default();
    let names = rocksdb::DB::list_cf(&opts, db).expect("listing column families");
    let store = rocksdb::DB::open_cf_for_read_only(&opts, db, &names, false)
        .expect("opening the store read-only");
    names
        .iter()
        .map(|name| {
            let cf = store.cf_handle(name).expect("a listed column family");
            let mut bytes = Vec::new();
            for item in store.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item.expect("reading the store");
                bytes.extend_from_slice(&k);
                bytes.extend_from_slice(&v);
            }
            (format!("column family {name}"), bytes)
        })
        .collect()
}
