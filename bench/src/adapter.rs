//! The one place the harness touches the parts of Writ's API that are still changing:
//! `TokenStore::insert`/`insert_child`/`purge_expired` and `Service::new` with its
//! methods. Everything else measures stable surfaces (the gRPC server, `writ_core`,
//! `TokenStore::get`/`get_with_state`). When the store trait or the service gain an
//! argument, adapt these few functions and nothing else.

use std::sync::Arc;
use writ_api::convert::Action;
use writ_core::narrow::{ChildRequest, MintRequest, Policy};
use writ_core::{KeyRing, TokenRecord, TokenSecret, UnixMillis};
use writ_server::auth::Caller;
use writ_server::error::ServiceError;
use writ_server::service::{Service, Validation};
use writ_store::{StoreError, TokenStore};

use crate::fixtures;

/// Fan-out the in-process services allow (the configuration's ceiling), so benches can
/// derive many children of one parent.
pub const MAX_CHILDREN: u32 = 1024;

/// An in-process service over `store`, as `writ_server::start` builds it.
pub fn service<S: TokenStore>(store: Arc<S>, keys: KeyRing, policy: Policy) -> Service<S> {
    Service::new(
        store,
        keys,
        policy,
        fixtures::TRUST_DOMAIN.to_string(),
        MAX_CHILDREN,
    )
}

/// Stores a root record (durable per the store's durability).
pub async fn put<S: TokenStore>(store: &S, record: TokenRecord) -> Result<(), StoreError> {
    store.insert(record).await
}

/// Stores a child record under its parent, applying the admission rule.
pub async fn put_child<S: TokenStore>(store: &S, record: TokenRecord) -> Result<(), StoreError> {
    store.insert_child(record, MAX_CHILDREN).await
}

/// Deletes every token that expired before `cutoff`, in batches of `batch`, as the
/// server's cleanup task does; returns how many went.
pub async fn purge_before<S: TokenStore>(
    store: &S,
    cutoff: UnixMillis,
    batch: usize,
) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let stats = store.purge_expired(cutoff, batch).await?;
        total += stats.tokens;
        if !stats.more {
            return Ok(total);
        }
    }
}

/// Mint as the local minter.
pub async fn mint<S: TokenStore>(
    svc: &Service<S>,
    req: MintRequest,
) -> Result<(TokenSecret, TokenRecord), ServiceError> {
    svc.mint(&Caller::Minter(fixtures::MINTER.into()), req)
        .await
}

/// Downscope `parent_token` as its holder.
pub async fn downscope<S: TokenStore>(
    svc: &Service<S>,
    holder: &str,
    parent_token: &str,
    req: ChildRequest,
) -> Result<(TokenSecret, TokenRecord), ServiceError> {
    svc.downscope(&Caller::Party(holder.into()), parent_token, req)
        .await
}

/// Validate `token` as `audience`, checking the standard action when `with_action`.
/// Returns whether the token is active and the action (if any) allowed.
pub async fn validate<S: TokenStore>(
    svc: &Service<S>,
    audience: &str,
    token: &str,
    with_action: bool,
) -> Result<bool, ServiceError> {
    let action = with_action.then(|| Action {
        scope: fixtures::SCOPE.into(),
        attributes: fixtures::attributes(),
    });
    let v = svc
        .validate(&Caller::Party(audience.into()), token, action)
        .await?;
    Ok(match v {
        Validation::Active { decision, .. } => !matches!(decision, Some(Err(_))),
        Validation::Inactive(_) => false,
    })
}

/// Mints a chain of `depth` hops through the service; returns every hop's secret,
/// root first.
pub async fn mint_chain<S: TokenStore>(
    svc: &Service<S>,
    depth: u32,
) -> Result<Vec<TokenSecret>, ServiceError> {
    let (root, _) = mint(svc, fixtures::mint_request(depth)).await?;
    let mut secrets = vec![root];
    for level in 1..=depth {
        let parent = &secrets[secrets.len() - 1];
        let (child, _) = downscope(
            svc,
            &fixtures::hop(level - 1),
            parent.expose(),
            fixtures::child_request(level, depth),
        )
        .await?;
        secrets.push(child);
    }
    Ok(secrets)
}

/// A Writ server started by [`start_nodelay`].
#[derive(Debug)]
pub struct NodelayServer {
    /// Where it listens.
    pub local_addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl NodelayServer {
    /// Stops accepting and waits for in-flight requests.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(())
    }
}

/// `writ_server::start` with one change: accepted connections get `TCP_NODELAY`.
///
/// `start` serves a `TcpListenerStream`, whose sockets keep Nagle's algorithm on; a
/// response written while the peer's ACK of an earlier small segment (an HTTP/2 window
/// update, say) is outstanding then waits for the peer's delayed ACK, about 40 ms on
/// Linux. This copy of `start` (same secrets, store, services and server limits; only
/// local credentials, no cleanup task) exists to measure what Writ does once that is
/// fixed. Compare its figures with `start`'s, never use it instead of them.
pub async fn start_nodelay(config: writ_server::Config) -> anyhow::Result<NodelayServer> {
    use writ_api::pb::chain_service_server::ChainServiceServer;
    use writ_api::pb::token_service_server::TokenServiceServer;
    use writ_core::limits::MAX_MESSAGE_BYTES;
    use writ_server::secrets;

    config.validate()?;
    let data_dir = config.data_dir.clone();
    secrets::ensure_private_dir(&data_dir)?;
    let keys = secrets::load_or_create_key_ring(&data_dir)?;
    let mut credentials = secrets::Credentials::default();
    let minter = secrets::load_or_create_local_minter(&data_dir)?;
    credentials.add(
        secrets::LOCAL_MINTER_ID.into(),
        secrets::Role::Minter,
        minter,
    );
    let operator = secrets::load_or_create_local_operator(&data_dir)?;
    credentials.add(
        secrets::LOCAL_OPERATOR_ID.into(),
        secrets::Role::Operator,
        operator,
    );
    let db_path = data_dir.join(writ_server::DB_DIR);
    let opts = writ_store::StoreOptions {
        durability: config.storage.durability,
    };
    let store =
        tokio::task::spawn_blocking(move || writ_store::RocksStore::open(&db_path, opts)).await??;
    let store = Arc::new(store);
    let service = Service::new(
        store.clone(),
        keys,
        config.policy(),
        config.trust_domain.clone(),
        config.tokens.max_children,
    );
    let auth = writ_server::auth::Authenticator::new(credentials);
    let chain = ChainServiceServer::new(writ_server::chain::ChainGrpc::new(
        store.clone(),
        auth.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(32 * 1024 * 1024);
    let grpc = writ_server::grpc::GrpcService::new(Arc::new(service), auth);
    let svc = TokenServiceServer::new(grpc)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(4 * MAX_MESSAGE_BYTES);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let local_addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        crate::baseline::server_builder()
            .add_service(svc)
            .add_service(chain)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    Ok(NodelayServer {
        local_addr,
        stop,
        task,
    })
}
