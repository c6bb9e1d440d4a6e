//! The policy file: the operator's registry of parties and scopes (`writ_core::policy`),
//! validated before it takes effect, hot-reloaded, and checkable offline.
//!
//! Who a caller is comes from its proof (a certificate, a signed assertion, a credential);
//! what it may do and hold must come from somewhere the caller cannot write. That is this
//! file: each party's kind, client type, roles, ceiling of scopes and claims, whom it may
//! call, its longest token lifetime, whether it is enabled and the public keys of its JWT
//! client assertions; and each scope's description, privilege, longest lifetime and who
//! may hold it. Bearer-credential minters and operators stay in the server configuration:
//! every party here is a SPIFFE ID of the server's trust domain.
//!
//! A file takes effect only whole and only valid: every error names the party, scope and
//! field ([`PolicyError::Invalid`]), sizes are bounded (the file, the number of parties
//! and scopes, each ceiling within `writ_core`'s limits on a token), claims go through the
//! same conversion as a request's (`writ_api::convert`), and keys through the same parser
//! as the verifier's ([`assertion::parse_registered_key`]).
//!
//! [`PolicyHandle`] holds the policy in force behind an [`ArcSwap`]: a request takes the
//! policy current when it starts and keeps it, reloads never block readers. A reload that
//! fails keeps the policy in force, logs why and shows it in [`PolicyHandle::status`].
//! [`PolicyHandle::spawn_watcher`] reloads on SIGHUP and when the file's content changes
//! (polled by content hash: editors and configuration managers replace files, and mtimes
//! are not reliable). Without a file, [`Registry::development`] applies.

use crate::assertion::{self, RegisteredKey};
use crate::tls::{self, SpiffeId};
use arc_swap::ArcSwap;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use writ_api::{compact, convert, pb};
use writ_core::limits::{MAX_CLAIMS, MAX_VALUE_LEN};
use writ_core::policy::{Ceiling, PartyDef, PublicClientLimits, Registry, Role, Roles, ScopeDef};
use writ_core::{ActorKind, Claims, ClientType};

/// Largest policy file read, in bytes.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// Most parties one policy registers.
pub const MAX_PARTIES: usize = 10_000;
/// Most scopes one policy defines.
pub const MAX_SCOPE_DEFS: usize = 10_000;
/// Most targets (parties it may call) one party lists.
pub const MAX_PARTY_TARGETS: usize = 1024;
/// Longest lifetime a policy may name, in seconds (as `tokens.max_ttl_seconds`).
const MAX_TTL_SECS: u64 = 86_400;
/// Longest scope description, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Shortest poll interval of the watcher.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`] or not UTF-8.
    #[error("policy {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Not TOML of the policy's schema (an unknown field, a missing one, a wrong type);
    /// the message gives the line.
    #[error("policy {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is not acceptable.
    #[error("policy {}: {field}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending field, e.g. `parties."spiffe://writ.local/agent/a".claims[1]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The server's own trust domain is not a valid one.
    #[error("policy: {0}")]
    TrustDomain(String),
}

// ---------------------------------------------------------------------------------------
// The file's schema.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    trust_domain: String,
    #[serde(default)]
    open_trust_domain: bool,
    #[serde(default)]
    open_scopes: bool,
    #[serde(default)]
    public_clients: PublicClientsFile,
    #[serde(default)]
    scopes: BTreeMap<String, ScopeFile>,
    #[serde(default)]
    parties: BTreeMap<String, PartyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PublicClientsFile {
    max_ttl_seconds: u64,
    /// 0: no limit (as on the wire).
    max_uses: u32,
    require_action_check: bool,
    high_privilege: bool,
}

impl Default for PublicClientsFile {
    fn default() -> Self {
        let d = PublicClientLimits::default();
        PublicClientsFile {
            max_ttl_seconds: d.max_ttl_secs,
            max_uses: d.max_uses.unwrap_or(0),
            require_action_check: d.require_action_check,
            high_privilege: d.high_privilege,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    high_privilege: bool,
    max_ttl_seconds: Option<u64>,
    kinds: Option<Vec<KindName>>,
    client_types: Option<Vec<ClientTypeName>>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindName {
    User,
    Agent,
    Workload,
}

impl From<KindName> for ActorKind {
    fn from(k: KindName) -> Self {
        match k {
            KindName::User => ActorKind::User,
            KindName::Agent => ActorKind::Agent,
            KindName::Workload => ActorKind::Workload,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ClientTypeName {
    Confidential,
    Public,
}

impl From<ClientTypeName> for ClientType {
    fn from(c: ClientTypeName) -> Self {
        match c {
            ClientTypeName::Confidential => ClientType::Confidential,
            ClientTypeName::Public => ClientType::Public,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RoleName {
    Minter,
    Agent,
    ResourceServer,
    Operator,
    Approver,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Minter => Role::Minter,
            RoleName::Agent => Role::Agent,
            RoleName::ResourceServer => Role::ResourceServer,
            RoleName::Operator => Role::Operator,
            RoleName::Approver => Role::Approver,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyFile {
    name: Option<String>,
    kind: KindName,
    client_type: ClientTypeName,
    roles: Vec<RoleName>,
    /// The ceiling's scopes.
    scopes: Option<Vec<String>>,
    /// The ceiling's claims, in the compact syntax.
    #[serde(default)]
    claims: Vec<String>,
    /// `NAME=SCOPE`: limits a ceiling claim to a scope (as the CLI's `--claim-scope`).
    #[serde(default)]
    claim_scopes: Vec<String>,
    targets: Option<Vec<String>>,
    max_ttl_seconds: Option<u64>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    keys: Vec<KeyFile>,
    /// May receive Txn-Token JWTs (workloads and users that are confidential clients only).
    #[serde(default)]
    txn_token_jwt: bool,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kid: Option<String>,
    public_key: String,
}

// ---------------------------------------------------------------------------------------
// Validation.

/// A refused value: the field and why (the file is added by the caller).
#[derive(Debug)]
struct Invalid {
    field: String,
    message: String,
}

impl From<writ_api::FieldError> for Invalid {
    fn from(e: writ_api::FieldError) -> Self {
        Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

type Checked<T> = Result<T, Invalid>;

fn invalid<T>(field: impl Into<String>, message: impl Into<String>) -> Checked<T> {
    Err(Invalid {
        field: field.into(),
        message: message.into(),
    })
}

/// A table key as a field path shows it: quoted and escaped, and cut if very long (a valid
/// key is at most 256 bytes; an invalid one is shown enough to be found).
fn key(s: &str) -> String {
    const SHOWN: usize = 300;
    let cut: String = s.chars().take(SHOWN).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

fn ttl(field: &str, secs: Option<u64>) -> Checked<Option<u64>> {
    match secs {
        Some(s) if s == 0 || s > MAX_TTL_SECS => {
            invalid(field, format!("{s} is outside 1..={MAX_TTL_SECS} seconds"))
        }
        s => Ok(s),
    }
}

fn nonempty<T>(field: &str, list: Option<Vec<T>>, what: &str) -> Checked<Option<Vec<T>>> {
    match list {
        Some(v) if v.is_empty() => invalid(
            field,
            format!(
                "is empty, so no party could hold the scope: name at least one {what}, or leave it out for any"
            ),
        ),
        v => Ok(v),
    }
}

/// A party id: a SPIFFE ID of `trust_domain`.
fn spiffe_id(field: &str, id: &str, trust_domain: &str) -> Checked<SpiffeId> {
    let parsed = SpiffeId::parse(id).or_else(|e| {
        invalid(
            field,
            format!(
                "{e}; parties are SPIFFE IDs (bearer-credential minters and operators belong in the server configuration)"
            ),
        )
    })?;
    if parsed.trust_domain() != trust_domain {
        return invalid(
            field,
            format!("{} is not in trust domain {trust_domain:?}", key(id)),
        );
    }
    Ok(parsed)
}

/// A party's ceiling claims: compact claims, their `claim_scopes`, through `convert`.
fn ceiling_claims(
    prefix: &str,
    claims: &[String],
    claim_scopes: &[String],
    scopes: &BTreeSet<String>,
) -> Checked<Claims> {
    if claims.len() > MAX_CLAIMS {
        return invalid(
            format!("{prefix}.claims"),
            format!("has {} entries; the limit is {MAX_CLAIMS}", claims.len()),
        );
    }
    let mut wire: HashMap<String, pb::Constraint> = HashMap::new();
    let mut order = Vec::with_capacity(claims.len());
    for (i, text) in claims.iter().enumerate() {
        let field = format!("{prefix}.claims[{i}]");
        let (name, c) = compact::parse_claim(text).or_else(|m| invalid(&field, m))?;
        if wire.insert(name.clone(), c).is_some() {
            return invalid(field, format!("claim {} is given twice", key(&name)));
        }
        order.push(name);
    }
    for (i, entry) in claim_scopes.iter().enumerate() {
        let field = format!("{prefix}.claim_scopes[{i}]");
        let Some((name, scope)) = entry.split_once('=') else {
            return invalid(field, format!("expected NAME=SCOPE, got {}", key(entry)));
        };
        let Some(c) = wire.get_mut(name) else {
            return invalid(field, format!("no claim named {} in claims", key(name)));
        };
        // As at Mint: a claim on a scope it cannot hold would never apply (a typo).
        if !scopes.contains(scope) {
            return invalid(
                field,
                format!("{} is not among the party's scopes", key(scope)),
            );
        }
        if c.applies_to.iter().any(|s| s == scope) {
            return invalid(field, format!("{} is given twice", key(entry)));
        }
        c.applies_to.push(scope.to_owned());
    }
    // One at a time, in the file's order, so the same file always reports the same error.
    let field = format!("{prefix}.claims");
    let mut out = Claims::new();
    for name in order {
        if let Some(c) = wire.remove(&name) {
            out.extend(convert::claims(&field, HashMap::from([(name, c)]))?);
        }
    }
    Ok(out)
}

/// What a valid file yields.
struct Validated {
    registry: Registry,
    keys: HashMap<String, Arc<[RegisteredKey]>>,
}

/// Checks a parsed file against `server_trust_domain` (or, offline, its own).
fn validate(file: PolicyFile, server_trust_domain: Option<&str>) -> Checked<Validated> {
    let td = file.trust_domain;
    tls::validate_trust_domain(&td).or_else(|e| invalid("trust_domain", e.to_string()))?;
    if let Some(server) = server_trust_domain
        && server != td
    {
        return invalid(
            "trust_domain",
            format!(
                "{} is not the server's trust domain {}",
                key(&td),
                key(server)
            ),
        );
    }
    let pc = &file.public_clients;
    ttl("public_clients.max_ttl_seconds", Some(pc.max_ttl_seconds))?;
    let public_clients = PublicClientLimits {
        max_ttl_secs: pc.max_ttl_seconds,
        max_uses: (pc.max_uses != 0).then_some(pc.max_uses),
        require_action_check: pc.require_action_check,
        high_privilege: pc.high_privilege,
    };
    if file.scopes.len() > MAX_SCOPE_DEFS {
        return invalid(
            "scopes",
            format!(
                "defines {} scopes; the limit is {MAX_SCOPE_DEFS}",
                file.scopes.len()
            ),
        );
    }
    if file.parties.len() > MAX_PARTIES {
        return invalid(
            "parties",
            format!(
                "registers {} parties; the limit is {MAX_PARTIES}",
                file.parties.len()
            ),
        );
    }

    let mut scopes = BTreeMap::new();
    for (name, s) in file.scopes {
        let prefix = format!("scopes.{}", key(&name));
        convert::scope(&prefix, &name)?;
        convert::text(
            &format!("{prefix}.description"),
            &s.description,
            MAX_DESCRIPTION_BYTES,
        )?;
        let max_ttl_secs = ttl(&format!("{prefix}.max_ttl_seconds"), s.max_ttl_seconds)?;
        let kinds = nonempty(&format!("{prefix}.kinds"), s.kinds, "kind")?;
        let client_types = nonempty(
            &format!("{prefix}.client_types"),
            s.client_types,
            "client type",
        )?;
        scopes.insert(
            name.clone(),
            ScopeDef {
                name,
                description: s.description,
                high_privilege: s.high_privilege,
                max_ttl_secs,
                kinds: kinds.map(|k| k.into_iter().map(ActorKind::from).collect()),
                client_types: client_types.map(|c| c.into_iter().map(ClientType::from).collect()),
            },
        );
    }

    let registered: BTreeSet<String> = file.parties.keys().cloned().collect();
    let mut parties = BTreeMap::new();
    let mut keys = HashMap::new();
    for (id, p) in file.parties {
        let prefix = format!("parties.{}", key(&id));
        spiffe_id(&prefix, &id, &td)?;
        if let Some(name) = &p.name {
            convert::text(&format!("{prefix}.name"), name, MAX_VALUE_LEN)?;
        }
        let roles = Roles::of(&p.roles.iter().map(|r| Role::from(*r)).collect::<Vec<_>>());
        if p.txn_token_jwt
            && (matches!(p.kind, KindName::Agent)
                || matches!(p.client_type, ClientTypeName::Public))
        {
            return invalid(
                format!("{prefix}.txn_token_jwt"),
                "only a confidential workload or user may receive Txn-Token JWTs; an agent or a public client gets opaque tokens, which are revoked at once",
            );
        }
        let holds_tokens = roles.any(&writ_core::policy::HOLDER_ROLES);
        let ceiling = if holds_tokens {
            let Some(listed) = p.scopes else {
                return invalid(
                    format!("{prefix}.scopes"),
                    "is required for a party with role agent or resource_server: the most it may ever hold (`scopes = []` holds none)",
                );
            };
            let field = format!("{prefix}.scopes");
            let ceiling_scopes = convert::scopes(&field, listed)?;
            if !file.open_scopes
                && let Some(s) = ceiling_scopes.iter().find(|s| !scopes.contains_key(*s))
            {
                return invalid(
                    field,
                    format!("scope {} is not defined under [scopes]", key(s)),
                );
            }
            let claims = ceiling_claims(&prefix, &p.claims, &p.claim_scopes, &ceiling_scopes)?;
            Some(Ceiling {
                scopes: ceiling_scopes,
                claims,
            })
        } else {
            let given = [
                ("scopes", p.scopes.is_some()),
                ("claims", !p.claims.is_empty()),
                ("claim_scopes", !p.claim_scopes.is_empty()),
                ("targets", p.targets.is_some()),
                ("max_ttl_seconds", p.max_ttl_seconds.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, set)| *set) {
                return invalid(
                    format!("{prefix}.{field}"),
                    "limits the tokens a party holds, and only a party with role agent or resource_server holds tokens",
                );
            }
            None
        };
        let targets = match p.targets {
            None => None,
            Some(list) => {
                let field = format!("{prefix}.targets");
                if list.len() > MAX_PARTY_TARGETS {
                    return invalid(
                        field,
                        format!(
                            "has {} entries; the limit is {MAX_PARTY_TARGETS}",
                            list.len()
                        ),
                    );
                }
                for t in &list {
                    spiffe_id(&field, t, &td)?;
                    // In a closed trust domain, an unregistered target can never be an
                    // audience: a typo.
                    if !file.open_trust_domain && !registered.contains(t) {
                        return invalid(field, format!("{} is not a party of this policy", key(t)));
                    }
                }
                Some(list.into_iter().collect::<BTreeSet<_>>())
            }
        };
        let max_ttl_secs = ttl(&format!("{prefix}.max_ttl_seconds"), p.max_ttl_seconds)?;
        let mut party_keys = Vec::with_capacity(p.keys.len());
        for (i, k) in p.keys.into_iter().enumerate() {
            let parsed = assertion::parse_registered_key(&k.public_key, k.kid)
                .or_else(|e| invalid(format!("{prefix}.keys[{i}]"), e.to_string()))?;
            party_keys.push(parsed);
        }
        assertion::check_party_keys(&party_keys)
            .or_else(|e| invalid(format!("{prefix}.keys"), e.to_string()))?;
        if !party_keys.is_empty() {
            keys.insert(id.clone(), Arc::from(party_keys));
        }
        parties.insert(
            id.clone(),
            PartyDef {
                id,
                display_name: p.name,
                kind: p.kind.into(),
                client_type: p.client_type.into(),
                roles,
                ceiling,
                targets,
                max_ttl_secs,
                enabled: p.enabled,
                txn_token_jwt: p.txn_token_jwt,
            },
        );
    }
    Ok(Validated {
        registry: Registry {
            trust_domain: td,
            open_trust_domain: file.open_trust_domain,
            open_scopes: file.open_scopes,
            scopes,
            parties,
            public_clients,
        },
        keys,
    })
}

/// Reads a whole file of at most [`MAX_POLICY_BYTES`].
fn read_capped(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let read = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::File {
            path: path.to_owned(),
            message: format!("larger than {MAX_POLICY_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// The policy in force.

/// Where a policy came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// No policy file: [`Registry::development`].
    Development,
    /// This file.
    File(PathBuf),
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Development => f.write_str("built-in development policy"),
            PolicySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A validated policy: the registry, each party's registered keys, and the digest and
/// source of what it was read from.
#[derive(Debug)]
pub struct Policy {
    registry: Arc<Registry>,
    keys: HashMap<String, Arc<[RegisteredKey]>>,
    digest: [u8; 32],
    source: PolicySource,
}

impl Policy {
    /// The built-in development policy ([`Registry::development`]); its digest is of its
    /// name and trust domain.
    pub fn development(trust_domain: &str) -> Policy {
        let mut h = blake3::Hasher::new();
        h.update(b"writ built-in development policy\0");
        h.update(trust_domain.as_bytes());
        Policy {
            registry: Arc::new(Registry::development(trust_domain)),
            keys: HashMap::new(),
            digest: *h.finalize().as_bytes(),
            source: PolicySource::Development,
        }
    }

    /// Parses and validates policy file content read from `path`. With
    /// `server_trust_domain`, the file's `trust_domain` must equal it; without, the file's
    /// own must be valid (offline checks).
    pub fn parse(
        content: &[u8],
        path: &Path,
        server_trust_domain: Option<&str>,
    ) -> Result<Policy, PolicyError> {
        let text = std::str::from_utf8(content).map_err(|e| PolicyError::File {
            path: path.to_owned(),
            message: format!("not UTF-8: {e}"),
        })?;
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let v = validate(file, server_trust_domain).map_err(|e| PolicyError::Invalid {
            path: path.to_owned(),
            field: e.field,
            message: e.message,
        })?;
        Ok(Policy {
            registry: Arc::new(v.registry),
            keys: v.keys,
            digest: *blake3::hash(content).as_bytes(),
            source: PolicySource::File(path.to_owned()),
        })
    }

    /// Reads, parses and validates the policy file at `path` (blocking file I/O).
    pub fn read(path: &Path, server_trust_domain: Option<&str>) -> Result<Policy, PolicyError> {
        Policy::parse(&read_capped(path)?, path, server_trust_domain)
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The JWT client-assertion keys registered for `party`, if any: the shape
    /// [`assertion::AssertionVerifier::verify`] asks for.
    pub fn keys_of(&self, party: &str) -> Option<Arc<[RegisteredKey]>> {
        self.keys.get(party).cloned()
    }

    /// BLAKE3 of the file's content.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Where it came from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }
}

/// The policy in force and its reload history, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyStatus {
    /// BLAKE3 of the policy in force, hex.
    pub digest: String,
    /// Where it came from.
    pub source: PolicySource,
    /// When it took effect (Unix milliseconds).
    pub loaded_at_unix_ms: u64,
    /// Registered parties.
    pub parties: usize,
    /// Defined scopes.
    pub scopes: usize,
    /// Why the last reload was refused, until one succeeds or the file again holds the
    /// policy in force.
    pub last_error: Option<String>,
    /// Reloads refused since the server started (a refused content is counted once by the
    /// watcher's polls, and again at each explicit reload or SIGHUP).
    pub reloads_rejected: u64,
}

/// What set a reload off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// An explicit [`PolicyHandle::reload`] or a SIGHUP: always re-validated.
    Request,
    /// The watcher's poll: a content already refused is not refused (and logged) again.
    Poll,
}

/// What a reload did.
#[derive(Debug)]
enum Outcome {
    Unchanged,
    Applied,
    Refused(PolicyError),
    /// A poll found the content it last refused.
    StillRefused,
}

/// What a poll last refused: a content, or a read error.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refused {
    Content([u8; 32]),
    Unreadable(String),
}

#[derive(Debug)]
struct ReloadState {
    loaded_at_unix_ms: u64,
    last_error: Option<String>,
    reloads_rejected: u64,
    last_refused: Option<Refused>,
}

#[derive(Debug)]
struct Inner {
    path: Option<PathBuf>,
    trust_domain: String,
    current: ArcSwap<Policy>,
    /// Held through a reload, so reloads never interleave.
    state: Mutex<ReloadState>,
}

/// The policy in force, swapped whole on reload. Cheap to clone; every clone sees the
/// same policy.
#[derive(Clone, Debug)]
pub struct PolicyHandle {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<ReloadState>) -> MutexGuard<'_, ReloadState> {
    // Nothing panics while holding it; the state is plain counters and strings.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PolicyHandle {
    /// Loads the policy file at `path` for a server of `trust_domain` (blocking file I/O),
    /// or, with no path, the built-in development policy. A file that is not valid is an
    /// error: the server does not start on a policy it cannot read.
    pub fn load(path: Option<&Path>, trust_domain: &str) -> Result<PolicyHandle, PolicyError> {
        tls::validate_trust_domain(trust_domain)
            .map_err(|e| PolicyError::TrustDomain(e.to_string()))?;
        let policy = match path {
            None => Policy::development(trust_domain),
            Some(p) => Policy::read(p, Some(trust_domain))?,
        };
        Ok(PolicyHandle::with(path, trust_domain, policy))
    }

    /// The built-in development policy of `trust_domain`, with no file to reload.
    pub fn development(trust_domain: &str) -> PolicyHandle {
        PolicyHandle::with(None, trust_domain, Policy::development(trust_domain))
    }

    fn with(path: Option<&Path>, trust_domain: &str, policy: Policy) -> PolicyHandle {
        PolicyHandle {
            inner: Arc::new(Inner {
                path: path.map(Path::to_owned),
                trust_domain: trust_domain.to_owned(),
                current: ArcSwap::from_pointee(policy),
                state: Mutex::new(ReloadState {
                    loaded_at_unix_ms: crate::service::now().0,
                    last_error: None,
                    reloads_rejected: 0,
                    last_refused: None,
                }),
            }),
        }
    }

    /// The policy in force. Hold it for the whole of a request, so one request sees one
    /// policy.
    pub fn current(&self) -> Arc<Policy> {
        self.inner.current.load_full()
    }

    /// Re-reads the file (blocking file I/O) and, if its content changed and is valid,
    /// puts it in force. Returns whether it did. A refused file leaves the policy in force
    /// as it was; the refusal is logged and shown in [`status`](Self::status). Without a
    /// file, nothing to do.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        match self.reload_on(Trigger::Request) {
            Outcome::Unchanged | Outcome::StillRefused => Ok(false),
            Outcome::Applied => Ok(true),
            Outcome::Refused(e) => Err(e),
        }
    }

    /// The one reload path: explicit reloads, SIGHUP and polls all come here.
    fn reload_on(&self, trigger: Trigger) -> Outcome {
        let Some(path) = &self.inner.path else {
            return Outcome::Unchanged;
        };
        let mut state = lock(&self.inner.state);
        let content = read_capped(path);
        let refused_key = match &content {
            Ok(bytes) => Refused::Content(*blake3::hash(bytes).as_bytes()),
            Err(e) => Refused::Unreadable(e.to_string()),
        };
        if refused_key == Refused::Content(*self.current().digest()) {
            // The file holds the policy in force (again): nothing to do, nothing wrong.
            state.last_error = None;
            state.last_refused = None;
            return Outcome::Unchanged;
        }
        if trigger == Trigger::Poll && state.last_refused.as_ref() == Some(&refused_key) {
            return Outcome::StillRefused;
        }
        let parsed =
            content.and_then(|bytes| Policy::parse(&bytes, path, Some(&self.inner.trust_domain)));
        match parsed {
            Ok(policy) => {
                tracing::info!(
                    source = %policy.source,
                    digest = %hex::encode(policy.digest),
                    parties = policy.registry.parties.len(),
                    scopes = policy.registry.scopes.len(),
                    "policy reloaded"
                );
                self.inner.current.store(Arc::new(policy));
                state.loaded_at_unix_ms = crate::service::now().0;
                state.last_error = None;
                state.last_refused = None;
                Outcome::Applied
            }
            Err(e) => {
                tracing::warn!(error = %e, "policy refused; the policy in force stays");
                state.last_error = Some(e.to_string());
                state.reloads_rejected += 1;
                state.last_refused = Some(refused_key);
                Outcome::Refused(e)
            }
        }
    }

    /// The policy in force and how reloads went.
    pub fn status(&self) -> PolicyStatus {
        let state = lock(&self.inner.state);
        let policy = self.current();
        PolicyStatus {
            digest: hex::encode(policy.digest),
            source: policy.source.clone(),
            loaded_at_unix_ms: state.loaded_at_unix_ms,
            parties: policy.registry.parties.len(),
            scopes: policy.registry.scopes.len(),
            last_error: state.last_error.clone(),
            reloads_rejected: state.reloads_rejected,
        }
    }

    /// Reloads on SIGHUP ([`reload`](Self::reload)) and whenever the file's content
    /// changes (checked every `interval`, at least 10 ms; a content once refused is not
    /// refused again until it changes), until `stop` turns true or its sender is dropped.
    /// File reads run on the blocking pool. Must be called within a Tokio runtime; the
    /// SIGHUP handler is installed before this returns (so from then on a SIGHUP never
    /// stops the process, with or without a policy file).
    pub fn spawn_watcher(
        &self,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let handle = self.clone();
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the policy file is still watched");
                None
            }
        };
        let interval = interval.max(MIN_WATCH_INTERVAL);
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let trigger = tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    _ = ticks.tick() => Trigger::Poll,
                    Some(()) = hangup(&mut hangups) => Trigger::Request,
                };
                if handle.inner.path.is_none() {
                    if trigger == Trigger::Request {
                        tracing::info!(
                            "SIGHUP: no policy file is configured; the built-in development policy stays"
                        );
                    }
                    continue;
                }
                let worker = handle.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || worker.reload_on(trigger)).await
                {
                    tracing::warn!(error = %e, "the policy reload task failed");
                }
            }
        })
    }
}

/// The next SIGHUP, or never without a handler.
async fn hangup(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------
// `writ policy check`.

/// Validates the policy file at `path` offline (for a server of `trust_domain`, if given)
/// and describes it for a person: each party's kind, client type, roles, whether it is
/// enabled, its ceiling (scopes, and claims in the compact syntax with the scopes they
/// apply to), targets, longest lifetime and key ids; each scope; and notes on development
/// settings, scopes no party can hold, and ceilings that hold what their party may never
/// be given.
pub fn check_report(path: &Path, trust_domain: Option<&str>) -> Result<String, PolicyError> {
    let policy = Policy::read(path, trust_domain)?;
    Ok(render_report(&policy))
}

fn render_report(policy: &Policy) -> String {
    let r = &policy.registry;
    let mut lines: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    lines.push(format!("policy {} is valid", policy.source));
    lines.push(format!(
        "  digest         blake3:{}",
        hex::encode(policy.digest)
    ));
    lines.push(format!("  trust domain   {}", r.trust_domain));
    let pc = &r.public_clients;
    lines.push(format!(
        "  public clients tokens live at most {} s; {}; {}; {}",
        pc.max_ttl_secs,
        pc.max_uses.map_or_else(
            || "unlimited uses allowed".to_owned(),
            |n| format!("at most {n} uses")
        ),
        if pc.require_action_check {
            "action checks required"
        } else {
            "action checks not required"
        },
        if pc.high_privilege {
            "high-privilege scopes allowed"
        } else {
            "no high-privilege scopes"
        },
    ));
    if r.open_trust_domain {
        notes.push(format!(
            "open_trust_domain = true (development): any identity of {} is a party, with roles agent and resource_server and no ceiling",
            r.trust_domain
        ));
    }
    if r.open_scopes {
        notes.push(
            "open_scopes = true (development): any well-formed scope is accepted, undefined ones without rules".to_owned(),
        );
    }

    lines.push(String::new());
    lines.push(format!("scopes ({})", r.scopes.len()));
    for s in r.scopes.values() {
        let mut traits = Vec::new();
        if s.high_privilege {
            traits.push("high-privilege".to_owned());
        }
        if let Some(t) = s.max_ttl_secs {
            traits.push(format!("longest {t} s"));
        }
        if let Some(k) = &s.kinds {
            let k: Vec<&str> = k.iter().map(|k| k.as_str()).collect();
            traits.push(format!("kinds {}", k.join(", ")));
        }
        if let Some(c) = &s.client_types {
            let c: Vec<&str> = c.iter().map(|c| c.as_str()).collect();
            traits.push(format!("client types {}", c.join(", ")));
        }
        lines.push(format!(
            "  {}{}{}",
            s.name,
            if traits.is_empty() { "" } else { "  " },
            traits.join("; ")
        ));
        if !s.description.is_empty() {
            lines.push(format!("      {}", s.description));
        }
        let held = r.parties.values().any(|p| {
            p.ceiling
                .as_ref()
                .is_some_and(|c| c.scopes.contains(&s.name))
        });
        if !held && !r.open_trust_domain {
            notes.push(format!(
                "scope {} is defined but no party's ceiling holds it",
                s.name
            ));
        }
    }

    lines.push(String::new());
    lines.push(format!("parties ({})", r.parties.len()));
    for p in r.parties.values() {
        match &p.display_name {
            Some(name) => lines.push(format!("  {} ({name:?})", p.id)),
            None => lines.push(format!("  {}", p.id)),
        }
        lines.push(format!("      kind              {}", p.kind.as_str()));
        lines.push(format!(
            "      client type       {}",
            p.client_type.as_str()
        ));
        lines.push(format!(
            "      roles             {}",
            if p.roles == Roles::NONE {
                "none".to_owned()
            } else {
                p.roles.to_string()
            }
        ));
        lines.push(format!(
            "      enabled           {}",
            if p.enabled { "yes" } else { "no" }
        ));
        if !p.enabled {
            notes.push(format!("party {} is disabled", p.id));
        }
        if let Some(c) = &p.ceiling {
            let scopes: Vec<&str> = c.scopes.iter().map(String::as_str).collect();
            lines.push(format!(
                "      ceiling scopes    {}",
                if scopes.is_empty() {
                    "none".to_owned()
                } else {
                    scopes.join(", ")
                }
            ));
            if c.claims.is_empty() {
                lines.push("      ceiling claims    none".to_owned());
            }
            for (i, (name, claim)) in c.claims.iter().enumerate() {
                let on = claim.applies_to.as_ref().map_or_else(
                    || " (on every scope)".to_owned(),
                    |s| {
                        let s: Vec<&str> = s.iter().map(String::as_str).collect();
                        format!(" (on {})", s.join(", "))
                    },
                );
                lines.push(format!(
                    "      {}{}{on}",
                    if i == 0 {
                        "ceiling claims    "
                    } else {
                        "                  "
                    },
                    compact::render(name, claim)
                ));
            }
            for s in &c.scopes {
                let Some(def) = r.scopes.get(s) else { continue };
                let excluded = if def.kinds.as_ref().is_some_and(|k| !k.contains(&p.kind)) {
                    Some(format!("kind {}", p.kind.as_str()))
                } else if def
                    .client_types
                    .as_ref()
                    .is_some_and(|c| !c.contains(&p.client_type))
                {
                    Some(format!("client type {}", p.client_type.as_str()))
                } else if p.client_type == ClientType::Public
                    && def.high_privilege
                    && !r.public_clients.high_privilege
                {
                    Some("public clients (high-privilege)".to_owned())
                } else {
                    None
                };
                if let Some(who) = excluded {
                    notes.push(format!(
                        "party {}: its ceiling holds scope {s}, which {who} may never be given",
                        p.id
                    ));
                }
            }
        }
        if p.ceiling.is_none() {
            lines.push(
                "      tokens            holds none (no role agent or resource_server)".to_owned(),
            );
        }
        match &p.targets {
            _ if p.ceiling.is_none() => {}
            Some(t) if t.is_empty() => {
                lines.push("      targets           none (it may call no one)".to_owned())
            }
            Some(t) => {
                for (i, target) in t.iter().enumerate() {
                    lines.push(format!(
                        "      {}{target}",
                        if i == 0 {
                            "targets           "
                        } else {
                            "                  "
                        }
                    ));
                }
            }
            None => lines.push("      targets           any party".to_owned()),
        }
        match p.max_ttl_secs {
            _ if p.ceiling.is_none() => {}
            Some(t) => lines.push(format!("      longest lifetime  {t} s")),
            None => lines.push("      longest lifetime  no limit of its own".to_owned()),
        }
        match policy.keys.get(&p.id) {
            None => lines.push("      keys              none".to_owned()),
            Some(keys) => {
                let shown: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{} ({:?})",
                            k.kid().map_or("(no kid)".to_owned(), |k| format!("{k:?}")),
                            k.alg()
                        )
                    })
                    .collect();
                lines.push(format!("      keys              {}", shown.join(", ")));
            }
        }
    }

    if !notes.is_empty() {
        lines.push(String::new());
        lines.push("notes".to_owned());
        for n in notes {
            lines.push(format!("  - {n}"));
        }
    }
    lines.push(String::new());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use writ_core::narrow::Dimension;
    use writ_core::{Claim, Constraint, Grant, UnixMillis};

    const TD: &str = "writ.local";
    const BOOKING: &str = "spiffe://writ.local/agent/booking";
    const PAYMENTS: &str = "spiffe://writ.local/api/payments";

    fn ed25519_pem() -> String {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .public_key_pem()
    }

    fn good() -> String {
        format!(
            r#"
trust_domain = "writ.local"

[public_clients]
max_ttl_seconds = 60
max_uses = 5
require_action_check = true
high_privilege = false

[scopes."trips:read"]
description = "Read the user's trips"

[scopes."payments:charge"]
description = "Charge the user's card"
high_privilege = true
max_ttl_seconds = 120
kinds = ["agent", "workload"]
client_types = ["confidential"]

[scopes."admin:all"]
description = "Nobody should hold this"

[parties."spiffe://writ.local/agent/booking"]
name = "Booking agent"
kind = "agent"
client_type = "confidential"
roles = ["agent"]
scopes = ["trips:read", "payments:charge"]
claims = ["amount_eur:max:500", "merchant:allow:tap,ryanair"]
claim_scopes = ["amount_eur=payments:charge"]
targets = ["spiffe://writ.local/api/payments"]
max_ttl_seconds = 300
keys = [{{ kid = "k1", public_key = """{key}""" }}]

[parties."spiffe://writ.local/api/payments"]
kind = "workload"
client_type = "confidential"
roles = ["resource_server"]
scopes = ["payments:charge"]

[parties."spiffe://writ.local/gw"]
name = "Gateway"
kind = "workload"
client_type = "confidential"
roles = ["minter"]
enabled = false
"#,
            key = ed25519_pem()
        )
    }

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text.as_bytes(), Path::new("policy.toml"), Some(TD))
    }

    fn refusal(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_becomes_the_registry() {
        let text = good();
        let p = parse(&text).unwrap();
        let r = p.registry();
        assert!(!r.open_trust_domain && !r.open_scopes);
        assert_eq!(
            r.public_clients,
            PublicClientLimits {
                max_ttl_secs: 60,
                max_uses: Some(5),
                require_action_check: true,
                high_privilege: false,
            }
        );
        let charge = &r.scopes["payments:charge"];
        assert!(charge.high_privilege);
        assert_eq!(charge.max_ttl_secs, Some(120));
        assert_eq!(
            charge.kinds,
            Some([ActorKind::Agent, ActorKind::Workload].into())
        );
        assert_eq!(charge.client_types, Some([ClientType::Confidential].into()));
        assert_eq!(r.scopes["trips:read"].kinds, None);

        let booking = r.resolve(BOOKING).unwrap();
        assert!(booking.registered);
        assert_eq!(booking.display_name.as_deref(), Some("Booking agent"));
        assert_eq!(booking.roles, Roles::of(&[Role::Agent]));
        assert_eq!(booking.max_ttl_secs, Some(300));
        assert_eq!(booking.targets, Some([PAYMENTS.to_owned()].into()));
        let ceiling = booking.ceiling.as_ref().unwrap();
        assert_eq!(
            ceiling.claims["amount_eur"],
            Claim {
                constraint: Constraint::Max(500),
                applies_to: Some(["payments:charge".to_owned()].into()),
            }
        );
        assert_eq!(ceiling.claims["merchant"].applies_to, None);
        let keys = p.keys_of(BOOKING).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid(), Some("k1"));
        assert!(p.keys_of(PAYMENTS).is_none());

        let gw = r.resolve("spiffe://writ.local/gw").unwrap();
        assert!(!gw.enabled && gw.ceiling.is_none());
        assert_eq!(gw.effective_roles(), Roles::NONE);
        assert_eq!(r.resolve("spiffe://writ.local/agent/other"), None);
        assert_eq!(p.digest(), blake3::hash(text.as_bytes()).as_bytes());

        // The registry admits what the file allows, and refuses the rest.
        let grant = |scopes: &[&str], claims: &[(&str, &str)]| Grant {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            claims: claims
                .iter()
                .map(|(n, c)| {
                    let (_, pb) = compact::parse_claim(&format!("{n}:{c}")).unwrap();
                    (n.to_string(), convert::claim("c", pb).unwrap())
                })
                .collect(),
            targets: BTreeSet::new(),
            expires_at: UnixMillis(60_000),
            max_uses: None,
            require_action_check: false,
        };
        let g = grant(
            &["trips:read", "payments:charge"],
            &[("amount_eur", "max:100"), ("merchant", "allow:tap")],
        );
        assert_eq!(r.admit(&booking, None, &g, UnixMillis(0)), Ok(()));
        let g = grant(&["admin:all"], &[("merchant", "allow:tap")]);
        let e = r.admit(&booking, None, &g, UnixMillis(0)).unwrap_err();
        assert_eq!(e.dimension, Dimension::Ceiling);
    }

    #[test]
    fn the_example_policy_is_valid_and_shows_the_defaults() {
        let text = include_str!("../../../deploy/policy.example.toml");
        let p = parse(text).unwrap();
        let r = p.registry();
        assert_eq!(r.public_clients, PublicClientLimits::default());
        assert_eq!((r.parties.len(), r.scopes.len()), (4, 2));
        assert!(r.requires_consent("payments:charge") && !r.requires_consent("trips:read"));
        assert_eq!(
            p.keys_of(BOOKING).unwrap()[0].kid(),
            Some("booking-2026-12")
        );
        let report = render_report(&p);
        assert!(!report.contains("notes"), "{report}");
    }

    #[test]
    fn defaults_are_strict_and_minimal_files_work() {
        let p = parse("trust_domain = \"writ.local\"\n").unwrap();
        let r = p.registry();
        assert_eq!(r.public_clients, PublicClientLimits::default());
        assert!(r.parties.is_empty() && r.scopes.is_empty());
        assert!(!r.open_scopes && !r.open_trust_domain);
        let p = parse(
            "trust_domain = \"writ.local\"\n[public_clients]\nmax_uses = 0\n[parties.\"spiffe://writ.local/a\"]\nkind = \"agent\"\nclient_type = \"public\"\nroles = [\"agent\"]\nscopes = []\n",
        )
        .unwrap();
        assert_eq!(p.registry().public_clients.max_uses, None);
        let a = p.registry().resolve("spiffe://writ.local/a").unwrap();
        assert!(a.enabled, "enabled unless it says otherwise");
        assert_eq!(a.ceiling, Some(Ceiling::default()));
    }

    /// Txn-Token JWTs (which Writ cannot recall once issued) go only to confidential,
    /// non-agent parties the policy names.
    #[test]
    fn only_confidential_non_agents_may_receive_jwts() {
        let party = |kind: &str, client: &str| {
            format!(
                "trust_domain = \"writ.local\"\n[parties.\"spiffe://writ.local/p\"]\nkind = \"{kind}\"\nclient_type = \"{client}\"\nroles = [\"resource_server\"]\nscopes = []\ntxn_token_jwt = true\n"
            )
        };
        let p = parse(&party("workload", "confidential")).unwrap();
        assert!(
            p.registry()
                .resolve("spiffe://writ.local/p")
                .unwrap()
                .txn_token_jwt
        );
        for (kind, client) in [("agent", "confidential"), ("workload", "public")] {
            let e = parse(&party(kind, client)).unwrap_err().to_string();
            assert!(e.contains("txn_token_jwt"), "{kind} {client}: {e}");
        }
        let dev = Registry::development("writ.local");
        assert!(
            dev.resolve("spiffe://writ.local/api")
                .unwrap()
                .txn_token_jwt
        );
        assert!(
            !dev.resolve("spiffe://writ.local/agent/a")
                .unwrap()
                .txn_token_jwt
        );
    }

    /// Each bad file is refused with a message naming the field.
    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let g = good();
        let b = "[parties.\"spiffe://writ.local/agent/booking\"]";
        let with = |from: &str, to: &str| {
            assert!(g.contains(from), "{from}");
            g.replacen(from, to, 1)
        };
        let cases: Vec<(String, &str)> = vec![
            (
                with(
                    "trust_domain = \"writ.local\"",
                    "trust_domain = \"other.td\"",
                ),
                "trust_domain: \"other.td\" is not the server's trust domain",
            ),
            (
                with(
                    "trust_domain = \"writ.local\"",
                    "trust_domain = \"Writ Local\"",
                ),
                "trust_domain: invalid trust domain",
            ),
            (
                with("trust_domain", "trust_domian"),
                "unknown field `trust_domian`",
            ),
            (
                with(
                    "name = \"Booking agent\"",
                    "name = \"Booking agent\"\nscope = []",
                ),
                "unknown field `scope`",
            ),
            (
                with("kind = \"agent\"", "kind = \"robot\""),
                "unknown variant `robot`",
            ),
            (
                with("roles = [\"agent\"]", "roles = [\"admin\"]"),
                "unknown variant `admin`",
            ),
            (with("max_uses = 5", "max_uses = -1"), "max_uses"),
            (
                with("max_ttl_seconds = 60", "max_ttl_seconds = 0"),
                "public_clients.max_ttl_seconds: 0 is outside 1..=86400",
            ),
            (
                with(b, "[parties.\"booking\"]"),
                "parties.\"booking\": invalid SPIFFE ID",
            ),
            (
                with(b, "[parties.\"spiffe://other.td/agent/booking\"]"),
                "parties.\"spiffe://other.td/agent/booking\": \"spiffe://other.td/agent/booking\" is not in trust domain",
            ),
            (
                with("[scopes.\"admin:all\"]", "[scopes.\"admin all\"]"),
                "scopes.\"admin all\": \"admin all\" is not a valid scope",
            ),
            (
                with("Nobody should hold this", "Nobody\\u0007"),
                "scopes.\"admin:all\".description",
            ),
            (
                with("max_ttl_seconds = 120", "max_ttl_seconds = 0"),
                "scopes.\"payments:charge\".max_ttl_seconds",
            ),
            (
                with("kinds = [\"agent\", \"workload\"]", "kinds = []"),
                "scopes.\"payments:charge\".kinds: is empty",
            ),
            (
                with("client_types = [\"confidential\"]", "client_types = []"),
                "scopes.\"payments:charge\".client_types: is empty",
            ),
            (
                with("name = \"Booking agent\"", "name = \"Booking\\u202Eagent\""),
                "parties.\"spiffe://writ.local/agent/booking\".name",
            ),
            (
                with(
                    "scopes = [\"trips:read\", \"payments:charge\"]",
                    "scopes = [\"trips:read\", \"trips:write\"]",
                ),
                "parties.\"spiffe://writ.local/agent/booking\".scopes: scope \"trips:write\" is not defined under [scopes]",
            ),
            (
                with(
                    "roles = [\"resource_server\"]\nscopes = [\"payments:charge\"]",
                    "roles = [\"resource_server\"]",
                ),
                "parties.\"spiffe://writ.local/api/payments\".scopes: is required",
            ),
            (
                with("roles = [\"minter\"]", "roles = [\"minter\"]\nscopes = []"),
                "parties.\"spiffe://writ.local/gw\".scopes: limits the tokens a party holds",
            ),
            (
                with("roles = [\"minter\"]", "roles = [\"minter\"]\ntargets = []"),
                "parties.\"spiffe://writ.local/gw\".targets: limits",
            ),
            (
                with("\"amount_eur:max:500\"", "\"amount_eur:max:lots\""),
                "parties.\"spiffe://writ.local/agent/booking\".claims[0]: max needs an integer",
            ),
            (
                with(
                    "\"amount_eur:max:500\"",
                    "\"amount_eur:deny:gam\u{AD}bling\"",
                ),
                "parties.\"spiffe://writ.local/agent/booking\".claims[\"amount_eur\"].deny",
            ),
            (
                with("\"amount_eur:max:500\"", "\"amount_eur:prefix:/a/../b\""),
                "claims[\"amount_eur\"].prefix",
            ),
            (
                with("\"merchant:allow:tap,ryanair\"", "\"bad name:max:500\""),
                "claims[\"bad name\"]",
            ),
            (
                with("\"merchant:allow:tap,ryanair\"", "\"amount_eur:max:5\""),
                "claims[1]: claim \"amount_eur\" is given twice",
            ),
            (
                with("\"amount_eur=payments:charge\"", "\"amount_eur\""),
                "claim_scopes[0]: expected NAME=SCOPE",
            ),
            (
                with(
                    "\"amount_eur=payments:charge\"",
                    "\"amount=payments:charge\"",
                ),
                "claim_scopes[0]: no claim named \"amount\"",
            ),
            (
                with("\"amount_eur=payments:charge\"", "\"amount_eur=admin:all\""),
                "claim_scopes[0]: \"admin:all\" is not among the party's scopes",
            ),
            (
                with(
                    "targets = [\"spiffe://writ.local/api/payments\"]",
                    "targets = [\"spiffe://writ.local/api/paymnets\"]",
                ),
                "targets: \"spiffe://writ.local/api/paymnets\" is not a party of this policy",
            ),
            (
                with(
                    "targets = [\"spiffe://writ.local/api/payments\"]",
                    "targets = [\"payments\"]",
                ),
                "targets: invalid SPIFFE ID",
            ),
            (
                with("max_ttl_seconds = 300", "max_ttl_seconds = 90000"),
                "parties.\"spiffe://writ.local/agent/booking\".max_ttl_seconds",
            ),
            (
                with(
                    "public_key = \"\"\"",
                    "public_key = \"\"\"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n\"\"\", x = \"\"\"",
                ),
                "unknown field `x`",
            ),
            (
                with(
                    "keys = [{ kid = \"k1\", public_key",
                    "keys = [{ kid = \"k1\", public_key = \"not a key\" }, { kid = \"k2\", public_key",
                ),
                "parties.\"spiffe://writ.local/agent/booking\".keys[0]: registered key",
            ),
        ];
        for (text, expected) in cases {
            let why = refusal(&text);
            assert!(why.contains(expected), "{why}\n  does not say: {expected}");
            assert!(why.starts_with("policy policy.toml: "), "{why}");
        }
    }

    #[test]
    fn keys_are_checked_per_party() {
        let key = ed25519_pem();
        let party = |keys: String| {
            format!(
                "trust_domain = \"writ.local\"\n[parties.\"spiffe://writ.local/gw\"]\nkind = \"workload\"\nclient_type = \"confidential\"\nroles = [\"minter\"]\nkeys = [{keys}]\n"
            )
        };
        let entry = |kid: &str| format!("{{ kid = \"{kid}\", public_key = \"\"\"{key}\"\"\" }}");
        let twice = party(format!("{}, {}", entry("a"), entry("a")));
        assert!(refusal(&twice).contains(
            "parties.\"spiffe://writ.local/gw\".keys: registered key: kid \"a\" is registered twice"
        ));
        let nine: Vec<String> = (0..9).map(|i| entry(&i.to_string())).collect();
        assert!(refusal(&party(nine.join(", "))).contains(".keys: registered key: 9 keys"));
        let rsa_like = party("{ public_key = \"-----BEGIN RSA PUBLIC KEY-----\\nAAAA\\n-----END RSA PUBLIC KEY-----\\n\" }".into());
        assert!(refusal(&rsa_like).contains(".keys[0]: registered key"));
        let eight: Vec<String> = (0..8).map(|i| entry(&i.to_string())).collect();
        let p = parse(&party(eight.join(", "))).unwrap();
        assert_eq!(p.keys_of("spiffe://writ.local/gw").unwrap().len(), 8);
    }

    #[test]
    fn sizes_are_bounded() {
        let mut big = String::from("trust_domain = \"writ.local\"\n[scopes]\n");
        for i in 0..=MAX_SCOPE_DEFS {
            big.push_str(&format!("s{i} = {{}}\n"));
        }
        assert!(refusal(&big).contains("scopes: defines 10001 scopes; the limit is 10000"));
        let mut big = String::from("trust_domain = \"writ.local\"\n[parties]\n");
        for i in 0..=MAX_PARTIES {
            big.push_str(&format!(
                "\"spiffe://writ.local/p/{i}\" = {{ kind = \"agent\", client_type = \"public\", roles = [] }}\n"
            ));
        }
        assert!(refusal(&big).contains("parties: registers 10001 parties"));
        // A ceiling within a token's limits.
        let scopes: Vec<String> = (0..65).map(|i| format!("\"s{i}\"")).collect();
        let text = format!(
            "trust_domain = \"writ.local\"\nopen_scopes = true\n[parties.\"spiffe://writ.local/a\"]\nkind = \"agent\"\nclient_type = \"public\"\nroles = [\"agent\"]\nscopes = [{}]\n",
            scopes.join(",")
        );
        assert!(refusal(&text).contains(".scopes: has 65 entries; the limit is 64"));
        let claims: Vec<String> = (0..33).map(|i| format!("\"c{i}:max:1\"")).collect();
        let text = format!(
            "trust_domain = \"writ.local\"\n[parties.\"spiffe://writ.local/a\"]\nkind = \"agent\"\nclient_type = \"public\"\nroles = [\"agent\"]\nscopes = []\nclaims = [{}]\n",
            claims.join(",")
        );
        assert!(refusal(&text).contains(".claims: has 33 entries; the limit is 32"));
        let members: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let text = format!(
            "trust_domain = \"writ.local\"\n[parties.\"spiffe://writ.local/a\"]\nkind = \"agent\"\nclient_type = \"public\"\nroles = [\"agent\"]\nscopes = []\nclaims = [\"m:allow:{}\"]\n",
            members.join(",")
        );
        assert!(refusal(&text).contains(".claims[\"m\"].allow: has 65 members"));
        // A party's targets, and a scope's description: at the limit, and one over.
        let targets = |n: usize| {
            let t: Vec<String> = (0..n)
                .map(|i| format!("\"spiffe://writ.local/t/{i}\""))
                .collect();
            format!(
                "trust_domain = \"writ.local\"\nopen_trust_domain = true\n[parties.\"spiffe://writ.local/a\"]\nkind = \"agent\"\nclient_type = \"public\"\nroles = [\"agent\"]\nscopes = []\ntargets = [{}]\n",
                t.join(",")
            )
        };
        parse(&targets(MAX_PARTY_TARGETS)).unwrap();
        assert!(
            refusal(&targets(MAX_PARTY_TARGETS + 1))
                .contains(".targets: has 1025 entries; the limit is 1024")
        );
        let description = |n: usize| {
            format!(
                "trust_domain = \"writ.local\"\n[scopes.s]\ndescription = \"{}\"\n",
                "d".repeat(n)
            )
        };
        parse(&description(MAX_DESCRIPTION_BYTES)).unwrap();
        assert!(
            refusal(&description(MAX_DESCRIPTION_BYTES + 1))
                .contains("scopes.\"s\".description: is 1025 bytes; the limit is 1024")
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let e = Policy::read(&path, Some(TD)).unwrap_err().to_string();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        std::fs::write(&path, b"trust_domain = \"\xff\"").unwrap();
        assert!(
            Policy::read(&path, Some(TD))
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
    }

    #[test]
    fn open_settings_relax_scope_and_target_checks() {
        let text = "trust_domain = \"writ.local\"\nopen_trust_domain = true\nopen_scopes = true\n[parties.\"spiffe://writ.local/agent/a\"]\nkind = \"agent\"\nclient_type = \"confidential\"\nroles = [\"agent\"]\nscopes = [\"anything\"]\ntargets = [\"spiffe://writ.local/api/unlisted\"]\n";
        let p = parse(text).unwrap();
        let r = p.registry();
        assert!(r.resolve("spiffe://writ.local/api/unlisted").is_some());
        let report = render_report(&p);
        assert!(
            report.contains("open_trust_domain = true (development)"),
            "{report}"
        );
        assert!(
            report.contains("open_scopes = true (development)"),
            "{report}"
        );
        // Targets are still identities of the trust domain.
        let foreign = text.replace("spiffe://writ.local/api/unlisted", "spiffe://other/api/x");
        assert!(
            refusal(&foreign).contains(".targets: \"spiffe://other/api/x\" is not in trust domain")
        );
    }

    #[test]
    fn without_a_file_the_development_policy_applies() {
        let h = PolicyHandle::load(None, TD).unwrap();
        let p = h.current();
        assert_eq!(p.source(), &PolicySource::Development);
        assert_eq!(**p.registry(), Registry::development(TD));
        assert!(!h.reload().unwrap());
        let s = h.status();
        assert_eq!((s.parties, s.scopes, s.reloads_rejected), (0, 0, 0));
        assert_eq!(s.source.to_string(), "built-in development policy");
        assert!(PolicyHandle::load(None, "Not A Domain").is_err());
    }

    fn write(path: &Path, text: &str) {
        // Replace, as editors and configuration managers do.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_reload_applies_a_good_change_and_keeps_the_policy_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let first = good();
        write(&path, &first);
        let h = PolicyHandle::load(Some(&path), TD).unwrap();
        let s = h.status();
        assert_eq!(s.source, PolicySource::File(path.clone()));
        assert_eq!(
            s.digest,
            blake3::hash(first.as_bytes()).to_hex().to_string()
        );
        assert_eq!((s.parties, s.scopes, s.last_error), (3, 3, None));
        assert!(!h.reload().unwrap(), "unchanged");

        // A good change takes effect.
        let second = first.replace("enabled = false", "enabled = true");
        write(&path, &second);
        let before = h.current();
        assert!(h.reload().unwrap());
        assert!(h.current().registry().parties["spiffe://writ.local/gw"].enabled);
        assert!(
            !before.registry().parties["spiffe://writ.local/gw"].enabled,
            "a held policy never changes"
        );
        let applied = h.status();
        assert_eq!(
            applied.digest,
            blake3::hash(second.as_bytes()).to_hex().to_string()
        );

        // A bad one is refused and the policy in force stays.
        write(
            &path,
            &second.replace("kind = \"agent\"", "kind = \"robot\""),
        );
        let e = h.reload().unwrap_err();
        assert!(e.to_string().contains("unknown variant `robot`"), "{e}");
        let s = h.status();
        assert_eq!(s.digest, applied.digest);
        assert_eq!(s.loaded_at_unix_ms, applied.loaded_at_unix_ms);
        assert_eq!(s.reloads_rejected, 1);
        assert!(s.last_error.unwrap().contains("robot"));
        // Explicit reloads re-check it; polls do not count it again.
        assert!(h.reload().is_err());
        assert!(matches!(h.reload_on(Trigger::Poll), Outcome::StillRefused));
        assert_eq!(h.status().reloads_rejected, 2);
        // A missing file is refused too.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            h.reload_on(Trigger::Poll),
            Outcome::Refused(PolicyError::Read { .. })
        ));
        assert!(matches!(h.reload_on(Trigger::Poll), Outcome::StillRefused));
        assert_eq!(h.status().reloads_rejected, 3);
        // Back to the content in force: nothing wrong any more.
        write(&path, &second);
        assert!(!h.reload().unwrap());
        assert_eq!(h.status().last_error, None);
        // The trust domain may not change under a running server.
        write(
            &path,
            &second.replace(
                "trust_domain = \"writ.local\"",
                "trust_domain = \"other.td\"",
            ),
        );
        assert!(h.reload().unwrap_err().to_string().contains("trust_domain"));
        assert_eq!(h.current().registry().trust_domain, TD);
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// The only test that runs a watcher (and so the only one a SIGHUP reaches): its
    /// content polls, then SIGHUP with polls too slow to matter.
    #[tokio::test]
    async fn the_watcher_reloads_on_change_and_on_sighup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let first = good();
        write(&path, &first);
        let h = PolicyHandle::load(Some(&path), TD).unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = h.spawn_watcher(Duration::from_millis(20), stopped);
        write(
            &path,
            &first.replace("max_ttl_seconds = 300", "max_ttl_seconds = 200"),
        );
        eventually("the change is polled", || {
            h.current().registry().parties[BOOKING].max_ttl_secs == Some(200)
        })
        .await;
        write(
            &path,
            &first.replace("kind = \"agent\"", "kind = \"robot\""),
        );
        eventually("the bad change is refused", || {
            h.status().reloads_rejected == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            h.status().reloads_rejected,
            1,
            "a refused content is refused once"
        );
        assert_eq!(
            h.current().registry().parties[BOOKING].max_ttl_secs,
            Some(200)
        );
        stop.send(true).unwrap();
        task.await.unwrap();

        let (stop, stopped) = watch::channel(false);
        let task = h.spawn_watcher(Duration::from_secs(3600), stopped);
        write(
            &path,
            &first.replace("max_ttl_seconds = 300", "max_ttl_seconds = 100"),
        );
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
            .unwrap();
        eventually("SIGHUP reloads", || {
            h.current().registry().parties[BOOKING].max_ttl_secs == Some(100)
        })
        .await;
        drop(stop);
        task.await.unwrap();
    }

    #[test]
    fn the_report_describes_every_party_and_notes_what_needs_a_look() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let text = good().replace(
            "[parties.\"spiffe://writ.local/api/payments\"]",
            "[parties.\"spiffe://writ.local/agent/phone\"]\nkind = \"agent\"\nclient_type = \"public\"\nroles = [\"agent\"]\nscopes = [\"payments:charge\"]\ntargets = []\n\n[parties.\"spiffe://writ.local/api/payments\"]",
        );
        write(&path, &text);
        let report = check_report(&path, Some(TD)).unwrap();
        for expected in [
            "is valid",
            &format!("blake3:{}", blake3::hash(text.as_bytes()).to_hex()),
            "trust domain   writ.local",
            "public clients tokens live at most 60 s; at most 5 uses; action checks required; no high-privilege scopes",
            "payments:charge  high-privilege; longest 120 s; kinds agent, workload; client types confidential",
            "      Charge the user's card",
            "  spiffe://writ.local/agent/booking (\"Booking agent\")",
            "      kind              agent",
            "      client type       confidential",
            "      roles             agent",
            "      enabled           yes",
            "      ceiling scopes    payments:charge, trips:read",
            "      ceiling claims    amount_eur:max:500 (on payments:charge)",
            "                        merchant:allow:ryanair,tap (on every scope)",
            "      targets           spiffe://writ.local/api/payments",
            "      longest lifetime  300 s",
            "      keys              \"k1\" (EdDSA)",
            "      targets           none (it may call no one)",
            "      roles             minter",
            "      enabled           no",
            "      tokens            holds none (no role agent or resource_server)",
            "      longest lifetime  no limit of its own",
            "      keys              none",
            "notes",
            "  - scope admin:all is defined but no party's ceiling holds it",
            "  - party spiffe://writ.local/gw is disabled",
            "  - party spiffe://writ.local/agent/phone: its ceiling holds scope payments:charge, which client type public may never be given",
        ] {
            assert!(report.contains(expected), "{report}\n  lacks: {expected}");
        }
        assert!(!report.contains("development"), "{report}");
        // Offline, the file's own trust domain; for a server, the server's.
        assert!(check_report(&path, None).is_ok());
        assert!(check_report(&path, Some("other.td")).is_err());
        assert!(check_report(&dir.path().join("absent.toml"), None).is_err());
    }
}
