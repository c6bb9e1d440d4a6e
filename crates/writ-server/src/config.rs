//! Configuration: embedded defaults, an optional TOML file, then command-line
//! overrides. Every field has a default, so `writ serve` runs with no file at all.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use writ_core::limits::MAX_DEPTH_CEILING;
use writ_core::narrow::Policy;
use writ_store::Durability;

/// The whole server configuration. See the README's configuration reference.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default: loopback only.
    pub listen: SocketAddr,
    /// Accept a non-loopback `listen` address although `tls.enabled = false` (plaintext:
    /// behind a TLS-terminating proxy, with client assertions). Off.
    pub allow_insecure_listen: bool,
    /// Where the store, the server keys and the local minter credential live.
    pub data_dir: PathBuf,
    /// The trust domain every token belongs to (the Txn-Token `aud`).
    pub trust_domain: String,
    /// Token lifetime and chain limits.
    pub tokens: TokenConfig,
    /// Storage settings.
    pub storage: StorageConfig,
    /// Audit trail settings.
    pub audit: AuditConfig,
    /// The async runtime `writ serve` runs on.
    pub runtime: RuntimeConfig,
    /// Callers allowed to Mint. When empty, a local minter credential is generated in the
    /// data directory on first start.
    pub minters: Vec<CredentialConfig>,
    /// Callers allowed to revoke by token id or transaction. When empty, a local operator
    /// credential is generated in the data directory on first start.
    pub operators: Vec<CredentialConfig>,
    /// TLS: the server's certificate and the trust bundle for client certificates.
    pub tls: TlsConfig,
    /// How callers prove who they are besides client certificates.
    pub auth: AuthConfig,
    /// The policy file: the registry of parties and scopes (see
    /// `deploy/policy.example.toml`). Re-read on SIGHUP and when it changes; a bad file
    /// keeps the policy in force. None: the development policy (any identity of the trust
    /// domain is a party, any scope is known).
    pub policy: Option<PathBuf>,
    /// Per-caller rate limits by role, and the audit trail's flood budget (`[limits]`,
    /// `[limits.events]`).
    pub limits: crate::ratelimit::RateLimitConfig,
    /// Writ's OAuth issuer identifier: the `https://` URL clients reach its HTTP listener
    /// at (RFC 8414 metadata is served under it, JWTs carry it as `iss`). Default:
    /// `https://localhost:7434`.
    pub issuer: Option<String>,
    /// The keys that sign Writ's JWTs (`[signing]`).
    pub signing: crate::signing::SigningConfig,
    /// Authorization servers whose tokens are accepted as external subject tokens of a
    /// token exchange (`[[subject_tokens.issuers]]`).
    pub subject_tokens: crate::subject::SubjectTokensConfig,
    /// The ops listener (metrics, health probes), logs and traces (`[observability]`).
    pub observability: crate::ops::ObservabilityConfig,
    /// The OAuth HTTP listener (`[http]`): token exchange, introspection, metadata.
    pub http: HttpConfig,
    /// Consent step-up for high-privilege scopes (`[consent]`): how long requests and
    /// redeemed tokens live, and optional sign-in on the consent page.
    pub consent: ConsentConfig,
}

/// `[consent]`: a scope the policy marks `high_privilege` is latent until the user
/// approves the concrete action (on the consent page served by the HTTP listener at
/// `issuer`, or through an approver app).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentConfig {
    /// How long a request waits for the user's decision and, approved, for its
    /// redemption, in seconds (1..=3600; default 600). Never past the requester's token.
    pub request_ttl_seconds: u64,
    /// Lifetime of the single-use token an approval is redeemed for, in seconds
    /// (1..=300; default 60).
    pub redeemed_ttl_seconds: u64,
    /// Require the user to sign in at the trust domain's OpenID Provider (authorization
    /// code with PKCE) before the page shows a request; the ID token's `sub` must be the
    /// request's subject (`[consent.sign_in]`). None: the link alone admits.
    pub sign_in: Option<crate::http::consent::SignInConfig>,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            request_ttl_seconds: 600,
            redeemed_ttl_seconds: 60,
            sign_in: None,
        }
    }
}

/// `[http]`: the OAuth face's own listener (RFC 8693 token exchange, RFC 7662
/// introspection, RFC 8414 metadata and the JWKS), with the TLS, client certificates and
/// connection caps of the gRPC listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve it (default).
    pub enabled: bool,
    /// Address to listen on. Default: loopback, port 7434 (the default `issuer`'s).
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (1024..=1048576; default 64 KiB).
    pub body_limit_bytes: usize,
    /// How long one request may take before it is answered 503 (1..=300; default 30).
    pub request_timeout_seconds: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7434)),
            body_limit_bytes: 64 * 1024,
            request_timeout_seconds: 30,
        }
    }
}

/// TLS settings. With no files named, `writ serve` creates a local development CA and a
/// server certificate under `<data_dir>/tls/` on first start (`ca.pem` is the CA clients
/// trust and `writ certs issue` signs with).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve TLS (default). Off: plaintext, on loopback only unless `allow_insecure_listen`.
    pub enabled: bool,
    /// The server's certificate chain (PEM). Set all three files or none.
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key: Option<PathBuf>,
    /// The trust bundle (PEM CA certificates) client certificates must chain to, e.g. the
    /// SPIRE bundle of the trust domain.
    pub client_ca: Option<PathBuf>,
    /// How often the three files are checked for changes (rotation without restart).
    pub reload_interval_seconds: u64,
    /// How long a TLS handshake may take.
    pub handshake_timeout_seconds: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: true,
            cert: None,
            key: None,
            client_ca: None,
            reload_interval_seconds: 5,
            handshake_timeout_seconds: 10,
        }
    }
}

/// Identity settings beyond client certificates and bearer credentials.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Development mode: accept identities *asserted* in `x-writ-caller`, unproven. Only on
    /// a loopback listener; logged at start, and every audit event recorded says the actor
    /// was asserted. Off.
    pub asserted_identities: bool,
    /// The `aud` a JWT client assertion must name. Default: `spiffe://<trust_domain>/writ`.
    pub assertion_audience: Option<String>,
    /// A SPIFFE JWT bundle (JWKS) to verify JWT-SVIDs against; re-read when it changes.
    pub jwt_svid_bundle: Option<PathBuf>,
}

impl AuthConfig {
    /// The `aud` client assertions must carry.
    pub fn audience(&self, trust_domain: &str) -> String {
        self.assertion_audience
            .clone()
            .unwrap_or_else(|| format!("spiffe://{trust_domain}/writ"))
    }
}

/// Token lifetime and chain limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime of a minted token when the request names none.
    pub default_ttl_seconds: u64,
    /// Longest lifetime a minted token may have. Tokens are never refreshed.
    pub max_ttl_seconds: u64,
    /// Deepest chain allowed (the root is depth 0).
    pub max_depth: u32,
    /// Let a party appear twice in one chain (A → B → A). Off by default.
    pub allow_actor_loops: bool,
    /// Most children one token may have (fan-out).
    pub max_children: u32,
    /// How long after issuing a token a retry of its Mint or Downscope under the same
    /// idempotency key gets it back (re-derived, never stored).
    pub idempotency_window_seconds: u64,
}

/// Storage settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `sync` (default): every acknowledged write is fsynced. `buffered`: survives a
    /// process crash but a power loss may lose the last writes.
    pub durability: Durability,
    /// How long an expired token (and its lineage and state) is kept for investigation
    /// before cleanup reclaims it.
    pub retention_seconds: u64,
    /// How often cleanup runs.
    pub cleanup_interval_seconds: u64,
    /// RocksDB block cache for token records and states, in MiB.
    pub block_cache_mib: u64,
    /// The hot tier for Validate (decoded records with their states, kept coherent with
    /// every revocation and spent use), in MiB; 0 turns it off.
    pub hot_tier_mib: u64,
    /// Validate's answers encoded once per token (any backend), in MiB; 0 turns it off.
    pub answer_cache_mib: u64,
    /// Where tokens live: `rocksdb` (default, embedded in the data directory: one Writ
    /// node) or `redis` (a Redis Cluster shared by several stateless Writ nodes,
    /// `[storage.redis]`).
    pub backend: Backend,
    /// The Redis Cluster, with `backend = "redis"`.
    pub redis: RedisConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::default(),
            retention_seconds: 3600,
            cleanup_interval_seconds: 30,
            block_cache_mib: writ_store::StoreOptions::default().block_cache_mib,
            hot_tier_mib: writ_store::StoreOptions::default().hot_tier_mib,
            answer_cache_mib: 32,
            backend: Backend::default(),
            redis: RedisConfig::default(),
        }
    }
}

/// The storage backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded RocksDB in `<data_dir>/db`.
    #[default]
    Rocksdb,
    /// A Redis Cluster (`[storage.redis]`).
    Redis,
}

/// How Writ reaches its Redis Cluster and what a write waits for (see
/// `writ_store::RedisOptions`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Seed nodes, `rediss://host:port` (TLS) or `redis://host:port`; the rest of the
    /// cluster is discovered. No credentials in them: see `username` and `password_file`.
    pub nodes: Vec<String>,
    /// The CA certificates (PEM) the nodes' certificates must chain to; unset: the
    /// system's roots. Only with `rediss://` nodes.
    pub ca: Option<PathBuf>,
    /// A client certificate chain and its private key (PEM), for nodes that ask for one
    /// (Redis's `tls-auth-clients`, on by default). Set both or neither.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub client_key: Option<PathBuf>,
    /// The ACL user Writ connects as (DEPLOY.md gives its rules); unset: `default`.
    pub username: Option<String>,
    /// A file holding the password (one line); unset: no `AUTH`.
    pub password_file: Option<PathBuf>,
    /// Allow `redis://` (plaintext) nodes that are not on loopback. Whoever can read or
    /// write that link can read every token record or undo a revocation.
    pub allow_plaintext: bool,
    /// Namespace of every key (one cluster may serve several trust domains).
    pub prefix: String,
    /// Replicas that must hold a write before it is acknowledged: the replicas per shard,
    /// so the replica a failover promotes holds every acknowledged write.
    pub required_replicas: u32,
    /// How long a write waits for its replicas before it fails (`UNAVAILABLE`).
    pub ack_timeout_ms: u64,
    /// Budget of one command to the cluster, its retries included.
    pub response_timeout_ms: u64,
    /// Connections reserved for durable writes.
    pub write_connections: usize,
    /// Token records cached in memory (immutable records only; 0: none).
    pub record_cache_entries: usize,
    /// Most MiB of records cached in memory.
    pub record_cache_mib: usize,
    /// How often each node re-reads the disabled parties (a party disabled through another
    /// node is refused here within this); a node that cannot read them for two of these
    /// admits nothing until it can.
    pub party_sync_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let o = writ_store::RedisOptions::default();
        RedisConfig {
            nodes: Vec::new(),
            ca: None,
            client_cert: None,
            client_key: None,
            username: None,
            password_file: None,
            allow_plaintext: false,
            prefix: o.prefix,
            required_replicas: o.required_replicas,
            ack_timeout_ms: o.ack_timeout.as_millis() as u64,
            response_timeout_ms: o.response_timeout.as_millis() as u64,
            write_connections: o.write_connections,
            record_cache_entries: o.record_cache,
            record_cache_mib: o.record_cache_bytes >> 20,
            party_sync_ms: 1000,
        }
    }
}

impl Config {
    /// The Redis store's options from `[storage.redis]` and the retention settings, with
    /// the certificate and password files read.
    pub fn redis_options(&self) -> Result<writ_store::RedisOptions, ConfigError> {
        let r = &self.storage.redis;
        let retention = std::time::Duration::from_secs(self.storage.retention_seconds);
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let password = match &r.password_file {
            None => None,
            Some(path) => {
                let bytes = read(path)?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "storage.redis.password_file {}: not UTF-8",
                        path.display()
                    ))
                })?;
                let password = text.trim_end_matches(['\r', '\n']);
                if password.is_empty() || password.contains(['\r', '\n']) {
                    return Err(ConfigError::Invalid(format!(
                        "storage.redis.password_file {}: must hold one non-empty line",
                        path.display()
                    )));
                }
                Some(password.to_owned())
            }
        };
        let client = match (&r.client_cert, &r.client_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(writ_store::RedisOptions {
            nodes: r.nodes.clone(),
            tls: writ_store::RedisTls {
                ca_pem: r.ca.as_deref().map(read).transpose()?,
                client,
            },
            auth: writ_store::RedisAuth {
                username: r.username.clone(),
                password,
            },
            prefix: r.prefix.clone(),
            required_replicas: r.required_replicas,
            ack_timeout: std::time::Duration::from_millis(r.ack_timeout_ms),
            response_timeout: std::time::Duration::from_millis(r.response_timeout_ms),
            write_connections: r.write_connections,
            retention,
            event_retention: std::time::Duration::from_secs(self.audit.retention_seconds),
            key_expiry: true,
            index_horizon: retention + std::time::Duration::from_secs(self.tokens.max_ttl_seconds),
            record_cache: r.record_cache_entries,
            record_cache_bytes: r.record_cache_mib << 20,
            feed_entries: writ_store::RedisOptions::default().feed_entries,
        })
    }
}

/// What is wrong with `[storage.redis]`'s nodes and TLS settings, if anything.
fn redis_nodes_problem(r: &RedisConfig) -> Option<String> {
    let tls = r
        .nodes
        .iter()
        .filter(|n| n.starts_with("rediss://"))
        .count();
    if tls != 0 && tls != r.nodes.len() {
        return Some("storage.redis.nodes mixes redis:// and rediss://: use one scheme".into());
    }
    for (i, node) in r.nodes.iter().enumerate() {
        let Some(rest) = node
            .strip_prefix("rediss://")
            .or_else(|| node.strip_prefix("redis://"))
        else {
            return Some(format!(
                "storage.redis.nodes[{i}] = {:?} must start with rediss:// or redis://",
                writ_store::redact_node_url(node)
            ));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        {
            return Some(format!(
                "storage.redis.nodes[{i}] carries a password: put it in a file named by storage.redis.password_file (and the user in storage.redis.username)"
            ));
        }
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .trim_matches(['[', ']']);
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if tls == 0 && !loopback && !r.allow_plaintext {
            return Some(format!(
                "storage.redis.nodes[{i}] = {node:?} is plaintext off loopback: use rediss:// (TLS), or set storage.redis.allow_plaintext = true on a network only Writ and Redis share"
            ));
        }
    }
    if tls == 0 && (r.ca.is_some() || r.client_cert.is_some() || r.client_key.is_some()) {
        return Some("storage.redis.ca, client_cert and client_key need rediss:// nodes".into());
    }
    if r.client_cert.is_some() != r.client_key.is_some() {
        return Some("storage.redis.client_cert and client_key: set both or neither".into());
    }
    if r.username
        .as_deref()
        .is_some_and(|u| u.is_empty() || u.contains(char::is_whitespace))
    {
        return Some("storage.redis.username must be a non-empty name without spaces".into());
    }
    None
}

/// Which validations the audit trail records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationEvents {
    /// Every Validate of a known token (default).
    #[default]
    All,
    /// Only Validates that checked an action, and those that found the token inactive.
    Actions,
    /// None (minted, downscoped, refused and revoked are always recorded).
    None,
}

/// Audit trail settings. The trail is kept apart from token state: token cleanup never
/// deletes it; it has its own retention.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// How long events are kept. Default: 30 days.
    pub retention_seconds: u64,
    /// Which validations are recorded.
    pub validations: ValidationEvents,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention_seconds: 30 * 86_400,
            validations: ValidationEvents::All,
        }
    }
}

/// The flavour of Tokio runtime the server runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFlavor {
    /// Worker threads that share the connections (default): the request path uses every
    /// core the server has to itself.
    #[default]
    MultiThread,
    /// One thread serves every connection. On a small machine shared with the server's
    /// callers it did best (BENCHMARKS.md, figure 1): no wake-ups across workers.
    CurrentThread,
}

/// The async runtime `writ serve` builds (store calls that may touch the disk run on its
/// blocking pool either way).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Multi-thread (default) or current-thread.
    pub flavor: RuntimeFlavor,
    /// Worker threads of the multi-thread runtime; 0 (default): one per core.
    pub worker_threads: usize,
}

/// One credentialed caller (a minter or an operator).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The caller's identity (a minter's becomes the first actor of every chain it starts).
    pub id: String,
    /// `blake3` hex of the credential (print one with `writ credential-hash`).
    pub credential_blake3: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7433)),
            allow_insecure_listen: false,
            data_dir: PathBuf::from("writ-data"),
            trust_domain: "writ.local".into(),
            tokens: TokenConfig::default(),
            storage: StorageConfig::default(),
            audit: AuditConfig::default(),
            runtime: RuntimeConfig::default(),
            minters: Vec::new(),
            operators: Vec::new(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            policy: None,
            limits: Default::default(),
            issuer: None,
            signing: Default::default(),
            subject_tokens: Default::default(),
            observability: Default::default(),
            http: HttpConfig::default(),
            consent: ConsentConfig::default(),
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        let p = Policy::default();
        TokenConfig {
            default_ttl_seconds: p.default_ttl_secs,
            max_ttl_seconds: p.max_ttl_secs,
            max_depth: p.max_depth,
            allow_actor_loops: p.allow_actor_loops,
            max_children: 16,
            idempotency_window_seconds: 300,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path` over the defaults, or the defaults alone.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writ's OAuth issuer identifier (see [`Config::issuer`](Self#structfield.issuer)).
    pub fn issuer(&self) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| "https://localhost:7434".to_owned())
    }

    /// Checks ranges the type system cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.tokens;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(issuer) = &self.issuer {
            // RFC 8414 §2: https, no query, no fragment.
            // Only scheme and authority: the endpoints and RFC 8414 metadata are served at
            // the root of the HTTP listener, so an issuer with a path would name URLs that
            // do not exist.
            let rest = issuer.strip_prefix("https://").unwrap_or("");
            if rest.is_empty()
                || issuer.len() > 256
                || rest.contains(['?', '#', '/', '@'])
                || !issuer.bytes().all(|b| b.is_ascii_graphic())
            {
                return bad(format!(
                    "issuer = {issuer:?} must be https://HOST[:PORT] (no path, query, fragment or user info), at most 256 bytes"
                ));
            }
        }
        let c = &self.consent;
        if !(1..=3600).contains(&c.request_ttl_seconds) {
            return bad(format!(
                "consent.request_ttl_seconds = {} must be in 1..=3600",
                c.request_ttl_seconds
            ));
        }
        if !(1..=300).contains(&c.redeemed_ttl_seconds) {
            return bad(format!(
                "consent.redeemed_ttl_seconds = {} must be in 1..=300",
                c.redeemed_ttl_seconds
            ));
        }
        if t.max_ttl_seconds == 0 || t.max_ttl_seconds > 86_400 {
            return bad(format!(
                "tokens.max_ttl_seconds = {} must be in 1..=86400",
                t.max_ttl_seconds
            ));
        }
        if t.default_ttl_seconds == 0 || t.default_ttl_seconds > t.max_ttl_seconds {
            return bad(format!(
                "tokens.default_ttl_seconds = {} must be in 1..=max_ttl_seconds ({})",
                t.default_ttl_seconds, t.max_ttl_seconds
            ));
        }
        if t.idempotency_window_seconds == 0 || t.idempotency_window_seconds > 86_400 {
            return bad(format!(
                "tokens.idempotency_window_seconds = {} must be in 1..=86400",
                t.idempotency_window_seconds
            ));
        }
        // A keyed token must stay stored while a retry can still look for it (two
        // windows), or the same key could derive the same token again after cleanup.
        if self.storage.retention_seconds < t.idempotency_window_seconds.saturating_mul(2) {
            return bad(format!(
                "storage.retention_seconds = {} must be at least twice tokens.idempotency_window_seconds ({})",
                self.storage.retention_seconds, t.idempotency_window_seconds
            ));
        }
        if t.max_depth == 0 || t.max_depth > MAX_DEPTH_CEILING {
            return bad(format!(
                "tokens.max_depth = {} must be in 1..={MAX_DEPTH_CEILING}",
                t.max_depth
            ));
        }
        if self.storage.cleanup_interval_seconds == 0
            || self.storage.cleanup_interval_seconds > 86_400
        {
            return bad(format!(
                "storage.cleanup_interval_seconds = {} must be in 1..=86400",
                self.storage.cleanup_interval_seconds
            ));
        }
        // Events count from when they happen, tokens from when they expire: a minted
        // event must outlive its token's longest lifetime plus the token retention.
        let floor = self
            .storage
            .retention_seconds
            .saturating_add(t.max_ttl_seconds);
        if self.audit.retention_seconds < floor {
            return bad(format!(
                "audit.retention_seconds = {} must be at least storage.retention_seconds + \
                 tokens.max_ttl_seconds ({floor}): evidence must not go before the tokens it describes",
                self.audit.retention_seconds
            ));
        }
        let rt = &self.runtime;
        if rt.worker_threads > 1024
            || (rt.flavor == RuntimeFlavor::CurrentThread && rt.worker_threads != 0)
        {
            return bad(format!(
                "runtime.worker_threads = {} must be in 0..=1024, and 0 with flavor = \"current_thread\"",
                rt.worker_threads
            ));
        }
        let r = &self.storage.redis;
        if self.storage.backend == Backend::Redis {
            if r.nodes.is_empty() {
                return bad("storage.backend = \"redis\" needs storage.redis.nodes".into());
            }
            if let Some(why) = redis_nodes_problem(r) {
                return bad(why);
            }
            if r.ack_timeout_ms == 0 || r.response_timeout_ms <= r.ack_timeout_ms {
                return bad(format!(
                    "storage.redis.response_timeout_ms = {} must exceed ack_timeout_ms = {} (> 0)",
                    r.response_timeout_ms, r.ack_timeout_ms
                ));
            }
            if r.write_connections == 0 || r.write_connections > 64 {
                return bad(format!(
                    "storage.redis.write_connections = {} must be in 1..=64",
                    r.write_connections
                ));
            }
            if r.record_cache_mib > 1 << 16 {
                return bad(format!(
                    "storage.redis.record_cache_mib = {} must be in 0..=65536",
                    r.record_cache_mib
                ));
            }
            if !(100..=60_000).contains(&r.party_sync_ms) {
                return bad(format!(
                    "storage.redis.party_sync_ms = {} must be in 100..=60000",
                    r.party_sync_ms
                ));
            }
        }
        if self.storage.block_cache_mib == 0 || self.storage.block_cache_mib > 1 << 20 {
            return bad(format!(
                "storage.block_cache_mib = {} must be in 1..=1048576",
                self.storage.block_cache_mib
            ));
        }
        if self.storage.hot_tier_mib > 1 << 20 {
            return bad(format!(
                "storage.hot_tier_mib = {} must be in 0..=1048576",
                self.storage.hot_tier_mib
            ));
        }
        if self.storage.answer_cache_mib > 1 << 20 {
            return bad(format!(
                "storage.answer_cache_mib = {} must be in 0..=1048576",
                self.storage.answer_cache_mib
            ));
        }
        if t.max_children == 0 || t.max_children > 1024 {
            return bad(format!(
                "tokens.max_children = {} must be in 1..=1024",
                t.max_children
            ));
        }
        if let Err(e) = crate::tls::validate_trust_domain(&self.trust_domain) {
            return bad(format!("trust_domain = {:?}: {e}", self.trust_domain));
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.signing.validate().map_err(ConfigError::Invalid)?;
        self.observability
            .validate(self.listen)
            .map_err(ConfigError::Invalid)?;
        let tls = &self.tls;
        match (&tls.cert, &tls.key, &tls.client_ca) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            _ => {
                return bad(
                    "tls.cert, tls.key and tls.client_ca: set all three, or none for the development CA"
                        .into(),
                );
            }
        }
        if tls.reload_interval_seconds == 0 || tls.reload_interval_seconds > 3600 {
            return bad(format!(
                "tls.reload_interval_seconds = {} must be in 1..=3600",
                tls.reload_interval_seconds
            ));
        }
        if tls.handshake_timeout_seconds == 0 || tls.handshake_timeout_seconds > 60 {
            return bad(format!(
                "tls.handshake_timeout_seconds = {} must be in 1..=60",
                tls.handshake_timeout_seconds
            ));
        }
        if self.auth.asserted_identities && !self.listen.ip().is_loopback() {
            return bad(format!(
                "auth.asserted_identities (development mode) is only allowed on a loopback \
                 listener, and listen = {}: asserted identities are unproven",
                self.listen
            ));
        }
        if !tls.enabled && !self.listen.ip().is_loopback() && !self.allow_insecure_listen {
            return bad(format!(
                "listen = {}: with tls.enabled = false Writ speaks plaintext gRPC (credentials \
                 and tokens in the clear); listen on loopback behind a TLS-terminating proxy, or \
                 set allow_insecure_listen = true to accept the risk",
                self.listen
            ));
        }
        self.validate_http()?;
        let all: Vec<&CredentialConfig> = self.minters.iter().chain(&self.operators).collect();
        for m in &all {
            if all
                .iter()
                .filter(|o| {
                    o.id == m.id
                        || o.credential_blake3
                            .eq_ignore_ascii_case(&m.credential_blake3)
                })
                .count()
                > 1
            {
                return bad(format!(
                    "{:?}: every minter and operator needs its own id and credential",
                    m.id
                ));
            }
            let reserved = [
                crate::secrets::LOCAL_MINTER_ID,
                crate::secrets::LOCAL_OPERATOR_ID,
            ];
            if reserved.contains(&m.id.as_str()) {
                return bad(format!(
                    "{:?}: reserved for the generated local credentials",
                    m.id
                ));
            }
            writ_api::convert::id("minters/operators id", &m.id)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            let mut h = [0u8; 32];
            if hex::decode_to_slice(&m.credential_blake3, &mut h).is_err() {
                return bad(format!(
                    "{:?}: credential_blake3 must be 64 hex digits",
                    m.id
                ));
            }
        }
        Ok(())
    }

    /// `[http]`: its ranges, and the loopback rules of the gRPC listener (plaintext,
    /// development mode) for its own address.
    fn validate_http(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !h.enabled {
            return Ok(());
        }
        if !(1024..=1024 * 1024).contains(&h.body_limit_bytes) {
            return bad(format!(
                "http.body_limit_bytes = {} must be in 1024..=1048576",
                h.body_limit_bytes
            ));
        }
        if h.request_timeout_seconds == 0 || h.request_timeout_seconds > 300 {
            return bad(format!(
                "http.request_timeout_seconds = {} must be in 1..=300",
                h.request_timeout_seconds
            ));
        }
        if h.listen == self.listen && h.listen.port() != 0 {
            return bad(format!(
                "http.listen = {} is also the gRPC listen address; give each its own port",
                h.listen
            ));
        }
        if self.auth.asserted_identities && !h.listen.ip().is_loopback() {
            return bad(format!(
                "auth.asserted_identities (development mode) is only allowed on loopback \
                 listeners, and http.listen = {}: asserted identities are unproven",
                h.listen
            ));
        }
        if !self.tls.enabled && !h.listen.ip().is_loopback() && !self.allow_insecure_listen {
            return bad(format!(
                "http.listen = {}: with tls.enabled = false Writ speaks plaintext HTTP \
                 (credentials and tokens in the clear); listen on loopback behind a \
                 TLS-terminating proxy, or set allow_insecure_listen = true to accept the risk",
                h.listen
            ));
        }
        Ok(())
    }

    /// The narrowing policy this configuration sets.
    pub fn policy(&self) -> Policy {
        Policy {
            default_ttl_secs: self.tokens.default_ttl_seconds,
            max_ttl_secs: self.tokens.max_ttl_seconds,
            max_depth: self.tokens.max_depth,
            allow_actor_loops: self.tokens.allow_actor_loops,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `[storage.redis]` is checked whole when the backend is Redis: each bound names its
    /// key.
    #[test]
    fn the_redis_settings_are_bounded() {
        let redis = || {
            let mut c = Config::default();
            c.storage.backend = Backend::Redis;
            c.storage.redis.nodes = vec!["redis://127.0.0.1:7001".into()];
            c
        };
        redis().validate().unwrap();
        type Breaks = fn(&mut RedisConfig);
        let cases: [(&str, Breaks); 6] = [
            ("storage.redis.nodes", |r| r.nodes.clear()),
            ("response_timeout_ms", |r| {
                r.response_timeout_ms = r.ack_timeout_ms
            }),
            ("write_connections", |r| r.write_connections = 0),
            ("record_cache_mib", |r| r.record_cache_mib = (1 << 16) + 1),
            ("party_sync_ms", |r| r.party_sync_ms = 99),
            ("party_sync_ms", |r| r.party_sync_ms = 60_001),
        ];
        for (key, break_it) in cases {
            let mut c = redis();
            break_it(&mut c.storage.redis);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    /// The link to Redis is TLS, or plaintext on loopback, or plaintext by explicit choice;
    /// credentials never sit in a node URL (they would reach logs and process listings).
    #[test]
    fn the_redis_link_is_tls_or_a_named_choice_and_keeps_passwords_out_of_urls() {
        let with = |nodes: &[&str], edit: fn(&mut RedisConfig)| {
            let mut c = Config::default();
            c.storage.backend = Backend::Redis;
            c.storage.redis.nodes = nodes.iter().map(|n| n.to_string()).collect();
            edit(&mut c.storage.redis);
            c.validate().map_err(|e| e.to_string())
        };
        let fine: fn(&mut RedisConfig) = |_| {};
        with(&["rediss://redis-0.example:6379"], fine).unwrap();
        with(&["redis://127.0.0.1:7001", "redis://[::1]:7002"], fine).unwrap();
        with(&["redis://localhost:7001"], fine).unwrap();
        with(&["redis://10.0.0.1:6379"], |r| r.allow_plaintext = true).unwrap();
        with(&["rediss://r:6379"], |r| {
            r.ca = Some("ca.pem".into());
            r.client_cert = Some("c.pem".into());
            r.client_key = Some("k.pem".into());
            r.username = Some("writ".into());
            r.password_file = Some("pw".into());
        })
        .unwrap();
        type Case = (&'static [&'static str], fn(&mut RedisConfig), &'static str);
        let refused: [Case; 7] = [
            (&["redis://10.0.0.1:6379"], fine, "plaintext off loopback"),
            (&["rediss://a:1", "redis://127.0.0.1:2"], fine, "mixes"),
            (&["http://a:1"], fine, "must start with"),
            (&["rediss://writ:s3cret@a:1"], fine, "carries a password"),
            (
                &["redis://127.0.0.1:1"],
                |r| r.ca = Some("ca.pem".into()),
                "need rediss://",
            ),
            (
                &["rediss://a:1"],
                |r| r.client_cert = Some("c.pem".into()),
                "set both",
            ),
            (
                &["rediss://a:1"],
                |r| r.username = Some("a b".into()),
                "storage.redis.username",
            ),
        ];
        for (nodes, edit, want) in refused {
            let e = with(nodes, edit).unwrap_err();
            assert!(e.contains(want), "{nodes:?}: {e}");
            assert!(
                !e.contains("s3cret"),
                "an error must not echo a password: {e}"
            );
        }
    }

    /// The password file holds one line; a trailing newline is not part of the password.
    #[test]
    fn the_redis_password_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.storage.backend = Backend::Redis;
        c.storage.redis.nodes = vec!["rediss://a:1".into()];
        let pw = dir.path().join("pw");
        c.storage.redis.password_file = Some(pw.clone());
        std::fs::write(&pw, "s3cret\n").unwrap();
        let o = c.redis_options().unwrap();
        assert_eq!(o.auth.password.as_deref(), Some("s3cret"));
        assert!(!format!("{o:?}").contains("s3cret"));
        for bad in ["", "\n", "a\nb\n"] {
            std::fs::write(&pw, bad).unwrap();
            let e = c.redis_options().unwrap_err().to_string();
            assert!(e.contains("password_file"), "{bad:?}: {e}");
        }
        std::fs::remove_file(&pw).unwrap();
        let e = c.redis_options().unwrap_err().to_string();
        assert!(e.contains("pw"), "{e}");
    }

    #[test]
    fn keyed_tokens_outlive_two_idempotency_windows() {
        let mut c = Config::default();
        c.tokens.idempotency_window_seconds = 1801;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("retention_seconds") && e.contains("twice"),
            "{e}"
        );
        c.storage.retention_seconds = 3602;
        c.audit.retention_seconds = 3602 + c.tokens.max_ttl_seconds;
        c.validate().unwrap();
    }

    #[test]
    fn the_documented_example_is_valid_and_matches_the_defaults() {
        let c: Config = toml::from_str(include_str!("../../../deploy/writ.example.toml")).unwrap();
        c.validate().unwrap();
        let d = Config::default();
        assert_eq!(format!("{:?}", c.tokens), format!("{:?}", d.tokens));
        assert_eq!(format!("{:?}", c.storage), format!("{:?}", d.storage));
        assert_eq!(format!("{:?}", c.audit), format!("{:?}", d.audit));
        assert_eq!(format!("{:?}", c.runtime), format!("{:?}", d.runtime));
        assert_eq!(
            format!("{:?}", c.observability),
            format!("{:?}", d.observability)
        );
        assert_eq!(format!("{:?}", c.http), format!("{:?}", d.http));
        let c: Config = toml::from_str("[runtime]\nflavor = \"current_thread\"\n").unwrap();
        assert_eq!(c.runtime.flavor, RuntimeFlavor::CurrentThread);
        c.validate().unwrap();
        let c: Config =
            toml::from_str("[runtime]\nflavor = \"current_thread\"\nworker_threads = 2\n").unwrap();
        assert!(c.validate().is_err());
        assert!(toml::from_str::<Config>("[runtime]\nflavor = \"both\"\n").is_err());
    }

    /// The issuer names where the metadata and endpoints are: scheme and authority only.
    #[test]
    fn the_issuer_is_an_https_origin() {
        for good in ["https://writ.example", "https://writ.example:8443"] {
            let c = Config {
                issuer: Some(good.into()),
                ..Config::default()
            };
            assert!(c.validate().is_ok(), "{good}");
            assert_eq!(c.issuer(), good);
        }
        for bad in [
            "http://writ.example",
            "https://",
            "https://writ.example/",
            "https://writ.example/oauth",
            "https://writ.example?x=1",
            "https://user@writ.example",
        ] {
            let c = Config {
                issuer: Some(bad.into()),
                ..Config::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("issuer"), "{bad}: {e}");
        }
        assert_eq!(Config::default().issuer(), "https://localhost:7434");
    }

    #[test]
    fn defaults_are_valid_and_files_override_them() {
        Config::default().validate().unwrap();
        let c: Config =
            toml::from_str("trust_domain = \"bank.example\"\n[tokens]\nmax_depth = 3\n").unwrap();
        assert_eq!(c.trust_domain, "bank.example");
        assert_eq!(c.tokens.max_depth, 3);
        assert_eq!(c.tokens.max_ttl_seconds, 900);
        assert!(
            toml::from_str::<Config>("listen_addr = \"x\"").is_err(),
            "unknown keys are refused"
        );
        let c: Config = toml::from_str("[tokens]\nmax_depth = 65\n").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[tokens]\ndefault_ttl_seconds = 1000\n").unwrap();
        assert!(c.validate().is_err());
        let digest = "ab".repeat(32);
        let c: Config = toml::from_str(&format!(
            "[[minters]]\nid = \"local-operator\"\ncredential_blake3 = \"{digest}\"\n"
        ))
        .unwrap();
        assert!(c.validate().is_err(), "generated identities are reserved");
    }

    #[test]
    fn the_http_listener_follows_the_loopback_rules_and_is_bounded() {
        let c: Config = toml::from_str("[http]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.http.body_limit_bytes, 64 * 1024);
        let mut c = Config::default();
        c.http.listen = "0.0.0.0:7434".parse().unwrap();
        c.validate().unwrap();
        c.tls.enabled = false;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("http.listen") && e.contains("plaintext"), "{e}");
        c.allow_insecure_listen = true;
        c.validate().unwrap();
        c.auth.asserted_identities = true;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("http.listen") && e.contains("asserted"), "{e}");
        c.http.enabled = false;
        c.validate().unwrap();
        let mut c = Config::default();
        c.http.listen = c.listen;
        assert!(c.validate().unwrap_err().to_string().contains("own port"));
        for (key, value) in [
            ("body_limit_bytes", "1023"),
            ("body_limit_bytes", "1048577"),
            ("request_timeout_seconds", "0"),
            ("request_timeout_seconds", "301"),
        ] {
            let c: Config = toml::from_str(&format!("[http]\n{key} = {value}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("http.{key}")), "{e}");
        }
        assert!(toml::from_str::<Config>("[http]\nport = 1\n").is_err());
    }

    #[test]
    fn audit_retention_outlives_tokens_and_the_cache_is_bounded() {
        // Token retention 3600 + max TTL 900: an audit retention below 4500 would drop a
        // minted event while its token may still be stored.
        let c: Config = toml::from_str(
            "[audit]
retention_seconds = 4499
",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("audit.retention_seconds"), "{e}");
        let c: Config = toml::from_str(
            "[audit]
retention_seconds = 4500
",
        )
        .unwrap();
        c.validate().unwrap();
        let c: Config = toml::from_str(
            "[audit]
validations = \"actions\"
",
        )
        .unwrap();
        assert_eq!(c.audit.validations, ValidationEvents::Actions);
        assert!(
            toml::from_str::<Config>(
                "[audit]
validations = \"some\"
"
            )
            .is_err()
        );
        for bad in ["0", "1048577"] {
            let c: Config = toml::from_str(&format!(
                "[storage]
block_cache_mib = {bad}
"
            ))
            .unwrap();
            assert!(c.validate().is_err(), "block_cache_mib = {bad}");
        }
        for (setting, ok) in [("0", true), ("1048576", true), ("1048577", false)] {
            let c: Config = toml::from_str(&format!(
                "[storage]
hot_tier_mib = {setting}
"
            ))
            .unwrap();
            assert_eq!(c.validate().is_ok(), ok, "hot_tier_mib = {setting}");
            let c: Config = toml::from_str(&format!(
                "[storage]
answer_cache_mib = {setting}
"
            ))
            .unwrap();
            assert_eq!(c.validate().is_ok(), ok, "answer_cache_mib = {setting}");
        }
    }
}
