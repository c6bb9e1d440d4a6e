//! The `writ` binary: `writ serve` runs the service; the other commands are a client
//! for trying it by hand and for scripts (`--json` prints one JSON object on stdout).
//! `anyhow` lives here and nowhere else.
#![forbid(unsafe_code)]

mod args;
mod output;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use writ_api::pb;
use writ_client::{ClientError, WritClient};
use writ_server::config::RuntimeFlavor;

#[derive(Parser, Debug)]
#[command(
    name = "writ",
    version,
    about = "Short-lived transaction tokens for AI-agent call chains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Writ service (embedded defaults: 127.0.0.1:7433, ./writ-data, the ops
    /// listener on 127.0.0.1:7435).
    #[command(after_help = SERVE_PRECEDENCE)]
    Serve(ServeArgs),
    /// Start a transaction: mint a root token (needs the minter credential).
    Mint(MintArgs),
    /// Derive a narrower child token for the next hop.
    Downscope(DownscopeArgs),
    /// Introspect a token, optionally checking one action.
    Validate(ValidateArgs),
    /// Revoke a token and every descendant: a token id or transaction (operator), or the
    /// token you hold.
    Revoke(RevokeArgs),
    /// Show a transaction's call-chain tree (operator).
    Chain(ChainArgs),
    /// Show one token with its ancestry, root first (operator).
    Token(TokenArgs),
    /// List transactions, newest first, e.g. `writ txns --subject alice --since 1h`
    /// (operator).
    Txns(TxnsArgs),
    /// Show a transaction's audit trail, or follow events live with --follow (operator).
    Events(EventsArgs),
    /// Print the blake3 digest of a minter credential read from stdin, for `[[minters]]`.
    CredentialHash,
    /// Client certificates from the local development CA (`writ certs issue NAME…`).
    Certs(CertsArgs),
    /// The policy file: `writ policy check FILE` validates it offline and prints what
    /// each party may hold.
    Policy(PolicyArgs),
    /// The kill switch (operator): `writ party disable ID --reason R` revokes every live
    /// token the party holds or presents and refuses it new ones; `writ party enable ID`.
    Party(PartyArgs),
    /// The JWT signing keys (operator): `writ keys list` shows them, `writ keys rotate`
    /// rotates them.
    Keys(KeysArgs),
    /// Consent step-up: `writ consent list|show` (operator), `approve|deny ID --subject S`
    /// (operator, or an approver app with --as), and the agent side by hand: `request`,
    /// `redeem`.
    Consent(ConsentArgs),
}

#[derive(Args, Debug)]
struct ConsentArgs {
    #[command(subcommand)]
    command: ConsentCommand,
}

#[derive(Subcommand, Debug)]
enum ConsentCommand {
    /// List consent requests, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only requests with this status.
        #[arg(long)]
        status: Option<args::ConsentStatusArg>,
        /// Only requests for this user.
        #[arg(long)]
        subject: Option<String>,
        /// Only requests of this transaction (txn_...).
        #[arg(long)]
        txn: Option<String>,
        /// Continue after a previous listing (its last id, cns_...).
        #[arg(long)]
        after: Option<String>,
        /// Most requests to show (1..=1000).
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        #[command(flatten)]
        operator: OperatorCredential,
    },
    /// Show one consent request.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// The request (cns_...).
        id: String,
        #[command(flatten)]
        operator: OperatorCredential,
    },
    /// Approve a request for the user SUBJECT (who must be the request's subject).
    Approve(DecideArgs),
    /// Deny a request for the user SUBJECT.
    Deny(DecideArgs),
    /// Ask the user's consent to one high-privilege action, as the token's holder: prints
    /// the request id and the consent URL (give it to the user only).
    Request {
        #[command(flatten)]
        client: ClientArgs,
        /// The token you hold: WRIT_TOKEN or --token-file.
        #[command(flatten)]
        token: TokenSource,
        /// Who asks: the token's audience.
        #[command(flatten)]
        caller: IdentityArgs,
        /// The party that will check the redeemed token (its SPIFFE ID).
        #[arg(long)]
        resource: String,
        /// The high-privilege scope the action needs.
        #[arg(long)]
        scope: String,
        /// Action attribute KEY=VALUE, one value each (as `writ validate --attr`).
        #[arg(long = "attr", value_parser = args::parse_attr)]
        attrs: Vec<(String, pb::Value)>,
        /// Why, for the user (required).
        #[arg(long)]
        reason: String,
    },
    /// Redeem an approved request for its single-use token, as the requester presenting
    /// the token it asked with (WRIT_TOKEN or --token-file).
    Redeem {
        #[command(flatten)]
        client: ClientArgs,
        /// The request (cns_...).
        id: String,
        #[command(flatten)]
        token: TokenSource,
        /// Who redeems: the requester.
        #[command(flatten)]
        caller: IdentityArgs,
        /// Lifetime in seconds (default and most: consent.redeemed_ttl_seconds).
        #[arg(long)]
        ttl: Option<u32>,
    },
}

#[derive(Args, Debug)]
struct DecideArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The request (cns_...).
    id: String,
    /// The user the decision is for: must be the request's subject.
    #[arg(long)]
    subject: String,
    /// An approver app deciding for the user it authenticated (--as NAME, --cert/--key);
    /// without it, the operator credential decides.
    #[command(flatten)]
    caller: IdentityArgs,
    #[command(flatten)]
    operator: OperatorCredential,
}

#[derive(Args, Debug)]
struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// List the signing keys (each algorithm's current, next and retired keys, never
    /// their material); with --json, the JWKS too.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        operator: OperatorCredential,
    },
    /// Rotate now: the next key (already published) starts signing, the current one
    /// retires (published for signing.overlap_seconds more), a new next key is published.
    Rotate {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        operator: OperatorCredential,
    },
}

#[derive(Args, Debug)]
struct PartyArgs {
    #[command(subcommand)]
    command: PartyCommand,
}

#[derive(Subcommand, Debug)]
enum PartyCommand {
    /// Disable a party at once: revoke every live token it holds (audience) or presents
    /// (current actor), with their descendants, and refuse it every new token.
    Disable {
        #[command(flatten)]
        client: ClientArgs,
        /// The party's id (its SPIFFE ID).
        party: String,
        /// Why (recorded with every revocation).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        operator: OperatorCredential,
    },
    /// Let a disabled party act again. Restores nothing that was revoked.
    Enable {
        #[command(flatten)]
        client: ClientArgs,
        /// The party's id.
        party: String,
        #[command(flatten)]
        operator: OperatorCredential,
    },
}

#[derive(Args, Debug)]
struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Validate a policy file (as the server would before it takes effect) and print what
    /// each party may hold. Exit 1 if it is not valid.
    Check {
        /// The policy file.
        file: PathBuf,
        /// The server's trust domain, which the file must name (default: the file's own).
        #[arg(long)]
        trust_domain: Option<String>,
    },
}

/// How `writ serve` combines its settings (also in the README's configuration section).
const SERVE_PRECEDENCE: &str = "\
Configuration precedence, lowest first:
  1. built-in defaults (every setting has one);
  2. the configuration file: --config FILE, or WRIT_CONFIG;
  3. environment variables: WRIT_LISTEN, WRIT_DATA_DIR, WRIT_POLICY, WRIT_OPS_LISTEN,
     WRIT_LOG_FORMAT, WRIT_LOG_LEVEL, WRIT_OTLP_ENDPOINT, WRIT_REDIS_NODES (one per
     flag below);
  4. command-line flags.
RUST_LOG, when set, replaces the log level of every layer above.";

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file (optional; every setting has a default).
    #[arg(long, env = "WRIT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; overrides the configuration's `listen`.
    #[arg(long, env = "WRIT_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Address of the OAuth HTTP listener; overrides the configuration's `http.listen`.
    #[arg(long, env = "WRIT_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
    /// Data directory; overrides the configuration's `data_dir`.
    #[arg(long, env = "WRIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Policy file (the registry of parties and scopes); overrides the configuration.
    #[arg(long, env = "WRIT_POLICY")]
    policy: Option<PathBuf>,
    /// The ops listener's address (metrics, /healthz, /readyz, plaintext gRPC health);
    /// overrides `observability.listen`.
    #[arg(long, env = "WRIT_OPS_LISTEN")]
    ops_listen: Option<std::net::SocketAddr>,
    /// Log lines as `auto` (text on a terminal, JSON otherwise), `json` or `text`;
    /// overrides `observability.log_format`.
    #[arg(long, env = "WRIT_LOG_FORMAT", value_parser = ["auto", "json", "text"])]
    log_format: Option<String>,
    /// Log filter (e.g. `info`, `info,writ_server=debug`); overrides
    /// `observability.log_level` (RUST_LOG overrides both).
    #[arg(long, env = "WRIT_LOG_LEVEL")]
    log_level: Option<String>,
    /// Export traces over OTLP/gRPC to this collector (`http://HOST:PORT`); overrides
    /// `observability.otlp_endpoint`.
    #[arg(long, env = "WRIT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Store tokens in this Redis Cluster (comma-separated seed nodes,
    /// `redis://host:port`) instead of the embedded RocksDB; sets `storage.backend =
    /// "redis"` and `storage.redis.nodes`.
    #[arg(long, env = "WRIT_REDIS_NODES", value_delimiter = ',')]
    redis_nodes: Option<Vec<String>>,
}

/// The development CA of the default data directory (`writ serve` creates it).
const DEFAULT_CA: &str = "writ-data/tls/ca.pem";
/// Where `writ certs issue` writes by default, and `--as` looks.
const DEFAULT_CERTS: &str = "writ-data/certs";
/// Largest CA bundle, certificate or key file read (the server's limit too).
const MAX_PEM_BYTES: u64 = writ_server::tls::MAX_PEM_BYTES;

#[derive(Args, Debug)]
struct ClientArgs {
    /// Server address: `https://HOST:PORT` (TLS), or `http://HOST:PORT` for a server with
    /// `tls.enabled = false` (plaintext: loopback only unless --insecure).
    #[arg(long, env = "WRIT_SERVER", default_value = "https://127.0.0.1:7433")]
    server: String,
    /// The CA certificate(s) (PEM) the server's certificate must chain to. A local server's
    /// is its development CA, `<data_dir>/tls/ca.pem`, which `writ serve` creates.
    #[arg(long, env = "WRIT_CA", default_value = DEFAULT_CA, value_name = "FILE")]
    ca: PathBuf,
    /// Connect over plaintext to an `http://` server that is not on a loopback address
    /// (tokens and credentials then cross the network in the clear).
    #[arg(long)]
    insecure: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// How a client command proves who is calling.
enum Proof {
    /// Nothing of its own (a minter's or operator's credential is added after connecting).
    None,
    /// A client certificate and its private key, both PEM.
    Certificate { cert: String, key: String },
    /// An identity asserted in `x-writ-caller`: development mode only.
    Asserted(String),
}

impl ClientArgs {
    /// Connects to `--server`, over TLS unless it is an `http://` address, presenting
    /// `proof`.
    async fn connect(&self, proof: Proof) -> Result<WritClient> {
        let server = self.server.trim();
        let plaintext = match server.split_once("://") {
            None | Some(("https", _)) => false,
            Some(("http", _)) => true,
            Some((scheme, _)) => anyhow::bail!(
                "--server {server}: unknown scheme {scheme:?}: use https://HOST:PORT, or \
                 http://HOST:PORT for a server with tls.enabled = false"
            ),
        };
        let (identity, asserted) = match proof {
            Proof::None => (None, None),
            Proof::Certificate { cert, key } => (Some((cert, key)), None),
            Proof::Asserted(id) => (None, Some(id)),
        };
        let client = if plaintext {
            if identity.is_some() {
                anyhow::bail!(
                    "--server {server} is plaintext (http://), and a client certificate needs \
                     TLS: use https://"
                );
            }
            if self.insecure {
                WritClient::connect_insecure(server).await?
            } else {
                WritClient::connect(server).await?
            }
        } else {
            if self.insecure {
                anyhow::bail!(
                    "--insecure is for plaintext (http://) servers beyond loopback; over TLS the \
                     server's certificate is always checked against --ca"
                );
            }
            let ca_pem = read_ca(&self.ca)?;
            let tls = writ_client::Tls {
                ca_pem,
                identity,
                domain: None,
            };
            WritClient::connect_tls(server, tls).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e} (is `writ serve` listening there, with a certificate that chains to \
                     {}?)",
                    self.ca.display()
                )
            })?
        };
        Ok(match asserted {
            Some(id) => client.as_caller(&id)?,
            None => client,
        })
    }
}

/// A file of at most [`MAX_PEM_BYTES`].
fn read_small(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_PEM_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// The CA bundle `--ca` names.
fn read_ca(path: &Path) -> Result<String> {
    let pem = match read_small(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no CA certificate at {}: a local server's is `<data_dir>/tls/ca.pem` ({DEFAULT_CA} \
             for the default data directory), which `writ serve` creates on first start; start \
             the server, or name the CA with --ca FILE (or WRIT_CA)",
            path.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the CA certificate {}", path.display()));
        }
    };
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!("{}: no PEM certificate in it (--ca)", path.display());
    }
    Ok(pem)
}

/// Who is calling, for the commands a token's holder runs: downscope, validate, and
/// revoke without a TARGET.
#[derive(Args, Debug)]
struct IdentityArgs {
    /// Present NAME's client certificate (`<certs-dir>/NAME.pem` and `NAME-key.pem`, as
    /// `writ certs issue NAME` wrote them): the caller is its SPIFFE ID.
    #[arg(long = "as", value_name = "NAME", conflicts_with_all = ["cert", "assert_as"])]
    as_name: Option<String>,
    /// Present this client certificate (a PEM X.509-SVID) instead, with --key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "key",
        conflicts_with = "assert_as"
    )]
    cert: Option<PathBuf>,
    /// The private key of --cert (the path of a PEM file, never the key itself).
    // Hyphen values are taken, so that a pasted key (`-----BEGIN…`) reaches `read_key`,
    // which refuses it without repeating it, rather than clap, which would echo it.
    #[arg(
        long,
        value_name = "FILE",
        requires = "cert",
        allow_hyphen_values = true
    )]
    key: Option<PathBuf>,
    /// Where --as finds certificates.
    #[arg(long, env = "WRIT_CERTS", default_value = DEFAULT_CERTS, value_name = "DIR")]
    certs_dir: PathBuf,
    /// DEVELOPMENT ONLY: assert the identity ID in `x-writ-caller`, unproven. Only a server
    /// running with `auth.asserted_identities = true` (loopback only) accepts it.
    #[arg(long, value_name = "ID")]
    assert_as: Option<String>,
}

impl IdentityArgs {
    /// Whether any way to name the caller was given.
    fn given(&self) -> bool {
        self.as_name.is_some() || self.cert.is_some() || self.assert_as.is_some()
    }

    /// The proof of identity to present; an error if none was given.
    fn proof(&self) -> Result<Proof> {
        if let Some(id) = &self.assert_as {
            return Ok(Proof::Asserted(id.clone()));
        }
        let (cert, key) = match (&self.as_name, &self.cert, &self.key) {
            (Some(name), _, _) => {
                if let Some(problem) = name_problem(name) {
                    anyhow::bail!(
                        "--as {name:?}: {problem}; --as takes the NAME a certificate was issued \
                         for (`writ certs issue NAME`)"
                    );
                }
                let (cert, key) = cert_files(&self.certs_dir, name);
                if !cert.exists() {
                    anyhow::bail!(
                        "no certificate for {name:?}: {} does not exist; issue one with `{}` \
                         (or present one with --cert FILE --key FILE)",
                        cert.display(),
                        issue_command(name, &self.certs_dir)
                    );
                }
                if !key.exists() {
                    anyhow::bail!(
                        "no private key for {name:?}: {} does not exist; issue a new certificate \
                         with `{} --replace`",
                        key.display(),
                        issue_command(name, &self.certs_dir)
                    );
                }
                (cert, key)
            }
            (None, Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => anyhow::bail!(
                "who is calling? --as NAME presents NAME's certificate (from `writ certs issue \
                 NAME`), --cert FILE --key FILE another one, --assert-as ID asserts an identity \
                 (development mode only)"
            ),
        };
        let cert_pem = read_small(&cert)
            .with_context(|| format!("reading the client certificate {}", cert.display()))?;
        if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            anyhow::bail!("{}: no PEM certificate in it", cert.display());
        }
        Ok(Proof::Certificate {
            cert: cert_pem,
            key: read_key(&key)?,
        })
    }
}

/// `<dir>/NAME.pem` and `<dir>/NAME-key.pem`.
fn cert_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// The `writ certs issue` command that writes NAME's certificate into `dir`.
fn issue_command(name: &str, dir: &Path) -> String {
    if dir == Path::new(DEFAULT_CERTS) {
        return format!("writ certs issue {name}");
    }
    match (dir.parent(), dir.file_name()) {
        (Some(data), Some(last)) if last == "certs" && !data.as_os_str().is_empty() => {
            format!("writ certs issue {name} --data-dir {}", data.display())
        }
        _ => format!("writ certs issue {name} --out {}", dir.display()),
    }
}

/// A private key file, refused when group or others may read it (as `ssh` does): a key
/// anyone can read proves nothing.
fn read_key(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    // A mistaken key *content* is never echoed back: it would be a secret.
    let shown = path.to_string_lossy();
    if shown.contains("PRIVATE KEY") || shown.contains('\n') {
        anyhow::bail!("--key takes the path of a key file, never the key itself");
    }
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the private key {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{}: a private key that group or others can read (mode {mode:04o}); `chmod 600` it",
            path.display()
        );
    }
    let pem =
        read_small(path).with_context(|| format!("reading the private key {}", path.display()))?;
    if !pem.contains("PRIVATE KEY-----") {
        anyhow::bail!("{}: no PEM private key in it", path.display());
    }
    Ok(pem)
}

/// Why NAME cannot name a certificate: it is one SPIFFE path segment and a file name.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.starts_with("spiffe://") {
        Some("a SPIFFE ID, not a name")
    } else if name.len() > 128 {
        Some("longer than 128 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("only letters, digits, `.`, `-` and `_` (one SPIFFE path segment)")
    } else if name.starts_with('.') {
        Some("must not start with `.`")
    } else {
        None
    }
}

/// A secret read from an environment variable or a file, never from the command line
/// (which every user of the machine can read in the process list).
fn secret(env: &str, file: Option<&std::path::Path>, what: &str) -> Result<String> {
    if let Ok(v) = std::env::var(env)
        && !v.trim().is_empty()
    {
        return Ok(v.trim().to_string());
    }
    let file = file.with_context(|| format!("{what}: set {env}, or name a file holding it"))?;
    let v = std::fs::read_to_string(file)
        .with_context(|| format!("reading the {what} from {}", file.display()))?;
    Ok(v.trim().to_string())
}

/// Where a command finds the token it presents.
#[derive(Args, Debug)]
struct TokenSource {
    /// File holding the token; the WRIT_TOKEN environment variable, when set, wins. (No
    /// flag takes the token itself: the process list would show it.)
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl TokenSource {
    fn load(&self) -> Result<String> {
        secret("WRIT_TOKEN", self.token_file.as_deref(), "token")
    }
}

#[derive(Args, Debug)]
struct Narrowing {
    /// Party the token is bound to (the next hop).
    #[arg(long)]
    audience: String,
    /// Kind of the audience: agent, user or workload.
    #[arg(long, default_value = "agent")]
    audience_kind: args::Kind,
    /// Client type of the audience: confidential or public.
    #[arg(long, default_value = "confidential")]
    audience_client: args::ClientKind,
    /// A party the chain may still reach (repeatable).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// A scope (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// A claim NAME:KIND:VALUE, KIND one of max, min, range, window, allow, deny, allow-ci,
    /// deny-ci, prefix, exact, exact-int, exact-time (e.g. amount:max:500,
    /// amount:range:100..500, departure:window:2026-12-01..2026-12-15,
    /// category:deny-ci:health,gambling, path:prefix:/trips).
    #[arg(long = "claim", value_parser = args::parse_claim)]
    claims: Vec<(String, pb::Constraint)>,
    /// Limit the claim NAME to actions of SCOPE (NAME=SCOPE, repeatable; without it a
    /// claim constrains every scope).
    #[arg(long = "claim-scope", value_parser = args::parse_kv)]
    claim_scopes: Vec<(String, String)>,
    /// The token answers only action checks (Validate without an action finds it inactive).
    #[arg(long)]
    require_action_check: bool,
    /// Retrying with the same key and the same request returns the same token (16..=128
    /// printable ASCII without spaces: a random one, e.g. a UUID).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Lifetime in seconds (mint: default from configuration; downscope: the parent's expiry).
    #[arg(long)]
    ttl: Option<u32>,
    /// Purpose of the transaction at this hop.
    #[arg(long)]
    purpose: Option<String>,
    /// Uses the token allows; each allowed action check consumes one (mint: default
    /// unlimited; downscope: default all the parent has left, reserved from its budget).
    #[arg(long)]
    max_uses: Option<u32>,
}

#[derive(Args, Debug)]
struct MintArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The authenticated user the transaction acts for.
    #[arg(long)]
    subject: String,
    #[command(flatten)]
    narrowing: Narrowing,
    /// Transaction context entry KEY=VALUE (repeatable).
    #[arg(long, value_parser = args::parse_kv)]
    tctx: Vec<(String, String)>,
    /// Request context entry KEY=VALUE (repeatable), e.g. req_ip=203.0.113.7.
    #[arg(long, value_parser = args::parse_kv)]
    rctx: Vec<(String, String)>,
    /// File holding the minter credential; the WRIT_MINTER_CREDENTIAL environment variable,
    /// when set, wins.
    #[arg(long, default_value = "writ-data/minter.credential")]
    credential_file: PathBuf,
}

#[derive(Args, Debug)]
struct DownscopeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The parent token: WRIT_TOKEN or --token-file.
    #[command(flatten)]
    token: TokenSource,
    /// Who is downscoping: the parent token's audience.
    #[command(flatten)]
    caller: IdentityArgs,
    #[command(flatten)]
    narrowing: Narrowing,
    /// An rctx entry not to pass on to the next hop (repeatable).
    #[arg(long = "drop-rctx")]
    drop_rctx: Vec<String>,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The token to check: WRIT_TOKEN or --token-file.
    #[command(flatten)]
    token: TokenSource,
    /// Who is validating: must be the token's audience.
    #[command(flatten)]
    caller: IdentityArgs,
    /// Check an action that needs this scope.
    #[arg(long)]
    scope: Option<String>,
    /// Action attribute KEY=VALUE: an integer if it parses as one, a time for
    /// @DATE or @UNIX_SECONDS, else a string. A KEY given twice or more is a list (every
    /// item must pass).
    #[arg(long = "attr", value_parser = args::parse_attr, requires = "scope")]
    attrs: Vec<(String, pb::Value)>,
    /// Also ask for a Txn-Token JWT standing for the token (printed when the token is
    /// active and no action was denied; only for parties the policy lets receive one).
    #[arg(long)]
    jwt: bool,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// A token id (tid_...) or a whole transaction (txn_...), revoked as an operator.
    /// Without it, the token in WRIT_TOKEN / --token-file is revoked by its holder.
    // Parsed in `revoke`, not by clap, which would echo a mistaken token secret.
    target: Option<String>,
    /// Why (required; recorded with the revocation).
    #[arg(long)]
    reason: String,
    /// The token to revoke when no TARGET is given: WRIT_TOKEN or --token-file; revoked
    /// by its holder, who proves it with --as (or --cert/--key).
    #[command(flatten)]
    token: TokenSource,
    /// Who revokes the token: its holder (the token's audience).
    #[command(flatten)]
    caller: IdentityArgs,
    /// The operator credential, used with a TARGET.
    #[command(flatten)]
    operator: OperatorCredential,
}

/// The operator credential, for the operator-only commands.
#[derive(Args, Debug)]
struct OperatorCredential {
    /// File holding the operator credential; the WRIT_OPERATOR_CREDENTIAL environment
    /// variable, when set, wins.
    #[arg(long, default_value = "writ-data/operator.credential")]
    credential_file: PathBuf,
}

impl OperatorCredential {
    fn load(self) -> Result<String> {
        secret(
            "WRIT_OPERATOR_CREDENTIAL",
            Some(&self.credential_file),
            "operator credential",
        )
    }
}

#[derive(Args, Debug)]
struct ChainArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The transaction (txn_...).
    txn: String,
    /// Print a Graphviz digraph instead of the tree.
    #[arg(long, conflicts_with = "json")]
    dot: bool,
    #[command(flatten)]
    operator: OperatorCredential,
}

#[derive(Args, Debug)]
struct TokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The token id (tid_...).
    token_id: String,
    #[command(flatten)]
    operator: OperatorCredential,
}

#[derive(Args, Debug)]
struct TxnsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only this user's transactions.
    #[arg(long)]
    subject: Option<String>,
    /// Only transactions in which this party acted or was an audience.
    #[arg(long)]
    actor: Option<String>,
    /// Only those minted within this long ago (30s, 15m, 1h, 2d, 1w) or at or after this
    /// Unix time in milliseconds.
    #[arg(long, value_parser = args::parse_since)]
    since: Option<args::Since>,
    /// Only those minted before this long ago, or this Unix time in milliseconds.
    #[arg(long, value_parser = args::parse_since)]
    until: Option<args::Since>,
    /// Only those whose root token has this status.
    #[arg(long)]
    status: Option<args::StatusArg>,
    /// Most transactions to show (1..=1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Continue after a previous listing (its `next_cursor`).
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    operator: OperatorCredential,
}

#[derive(Args, Debug)]
struct EventsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The transaction (txn_...). Without it, --follow watches every transaction.
    txn: Option<String>,
    /// After the history, keep printing events as they happen (until interrupted).
    #[arg(long, short = 'f')]
    follow: bool,
    /// With --follow: only this user's events.
    #[arg(long, requires = "follow")]
    subject: Option<String>,
    /// With --follow: only events by this party.
    #[arg(long, requires = "follow")]
    actor: Option<String>,
    /// With --follow: only these kinds (repeatable).
    #[arg(long = "kind", requires = "follow")]
    kinds: Vec<args::KindArg>,
    #[command(flatten)]
    operator: OperatorCredential,
}

#[derive(Args, Debug)]
struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Issue client certificates (X.509-SVIDs) signed by the local development CA: for each
    /// NAME, `spiffe://<trust-domain>/<kind>/NAME` in `<out>/NAME.pem` and
    /// `<out>/NAME-key.pem` (0600). The server must have started once on the data
    /// directory (it creates the CA).
    Issue(IssueArgs),
}

/// The kind of party a certificate is for: the first segment of its SPIFFE ID's path.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CertKind {
    Agent,
    Workload,
    User,
}

impl CertKind {
    fn segment(self) -> &'static str {
        match self {
            CertKind::Agent => "agent",
            CertKind::Workload => "workload",
            CertKind::User => "user",
        }
    }
}

#[derive(Args, Debug)]
struct IssueArgs {
    /// Whom each certificate is for: the last segment of its SPIFFE ID and its file names
    /// (letters, digits, `.`, `-`, `_`); `--as NAME` presents it.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// The kind of party: agent, workload (an API, a service) or user.
    #[arg(long, default_value = "agent")]
    kind: CertKind,
    /// The server's configuration file, for its `trust_domain` and `data_dir`.
    #[arg(long, env = "WRIT_CONFIG")]
    config: Option<PathBuf>,
    /// The trust domain (default: the configuration's, else writ.local).
    #[arg(long)]
    trust_domain: Option<String>,
    /// The server's data directory, whose `tls/` holds the CA (default: the
    /// configuration's, else writ-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to write the files (default: `<data-dir>/certs`, where --as looks).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Validity in days.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=365))]
    days: u32,
    /// Replace existing files for a NAME (a new key and certificate).
    #[arg(long)]
    replace: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// mimalloc instead of glibc's allocator: a request allocates and frees dozens of small
/// buffers across worker threads, which glibc serves with locks and consolidation
/// (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its configuration first: it names the runtime to build.
    let (cli, config) = match cli.command {
        Command::Serve(a) => match serve_config(&a) {
            Ok(config) => (
                Cli {
                    command: Command::Serve(a),
                },
                Some(config),
            ),
            Err(e) => {
                eprintln!("writ: {e:#}");
                return ExitCode::from(2);
            }
        },
        command => (Cli { command }, None),
    };
    let runtime = config
        .as_ref()
        .map(|c| c.runtime.clone())
        .unwrap_or_default();
    let mut builder = match runtime.flavor {
        RuntimeFlavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    if runtime.worker_threads > 0 {
        builder.worker_threads(runtime.worker_threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("writ: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("writ: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli, config: Option<writ_server::Config>) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(_) => serve(config.context("serve without its configuration")?).await,
        Command::Mint(a) => mint(a).await,
        Command::Downscope(a) => downscope(a).await,
        Command::Validate(a) => validate(a).await,
        Command::Revoke(a) => revoke(a).await,
        Command::Chain(a) => chain(a).await,
        Command::Token(a) => token(a).await,
        Command::Txns(a) => txns(a).await,
        Command::Events(a) => events(a).await,
        Command::Certs(CertsArgs {
            command: CertsCommand::Issue(a),
        }) => certs_issue(a),
        Command::Policy(PolicyArgs {
            command: PolicyCommand::Check { file, trust_domain },
        }) => match writ_server::policy::check_report(&file, trust_domain.as_deref()) {
            Ok(report) => {
                print!("{report}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("writ: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Party(PartyArgs { command }) => party(command).await,
        Command::Keys(KeysArgs { command }) => keys(command).await,
        Command::Consent(ConsentArgs { command }) => consent(command).await,
        Command::CredentialHash => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the credential from stdin")?;
            println!("{}", writ_server::secrets::credential_hex(s.trim()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `writ certs issue`: every NAME is checked (and, without --replace, its files found
/// absent) before anything is written.
fn certs_issue(a: IssueArgs) -> Result<ExitCode> {
    use writ_server::pki::{PkiError, issue_client};
    let config = writ_server::Config::load(a.config.as_deref())?;
    let trust_domain = a.trust_domain.unwrap_or(config.trust_domain);
    let data_dir = a.data_dir.unwrap_or(config.data_dir);
    let out = a.out.unwrap_or_else(|| data_dir.join("certs"));
    let mut seen = std::collections::BTreeSet::new();
    for name in &a.names {
        if let Some(problem) = name_problem(name) {
            anyhow::bail!("NAME {name:?}: {problem}");
        }
        if !seen.insert(name.as_str()) {
            anyhow::bail!("NAME {name:?} given twice");
        }
        writ_server::tls::SpiffeId::from_parts(
            &trust_domain,
            &format!("{}/{name}", a.kind.segment()),
        )?;
        if !a.replace {
            let (cert, key) = cert_files(&out, name);
            for p in [cert, key] {
                if p.exists() {
                    anyhow::bail!(
                        "{} already exists: pass --replace to issue a new certificate and key \
                         in its place",
                        p.display()
                    );
                }
            }
        }
    }
    let validity = std::time::Duration::from_secs(u64::from(a.days) * 86_400);
    let expires =
        i64::try_from(args::now_ms() / 1000).unwrap_or(i64::MAX) + i64::from(a.days) * 86_400;
    let mut issued = Vec::new();
    for name in &a.names {
        let path = format!("{}/{name}", a.kind.segment());
        match issue_client(
            &data_dir,
            &trust_domain,
            &path,
            validity,
            &out,
            name,
            a.replace,
        ) {
            Ok(files) => issued.push(output::IssuedCert {
                name: name.clone(),
                spiffe_id: files.spiffe_id.to_string(),
                cert: files.cert,
                key: files.key,
                expires_at: expires,
            }),
            Err(e) => {
                // What was written stays written: say so before the error.
                if !issued.is_empty() {
                    output::certs_issued(a.json, &issued);
                }
                let hint = match &e {
                    PkiError::NoCa { .. } => format!(
                        " (is {} the server's data directory? --data-dir names another)",
                        data_dir.display()
                    ),
                    PkiError::Exists { .. } => " (--replace)".to_string(),
                    _ => String::new(),
                };
                anyhow::bail!("issuing a certificate for {name:?}: {e}{hint}");
            }
        }
    }
    output::certs_issued(a.json, &issued);
    Ok(ExitCode::SUCCESS)
}

/// `serve`'s configuration: the file (or the defaults) with the command line's overrides.
fn serve_config(a: &ServeArgs) -> Result<writ_server::Config> {
    let mut config = writ_server::Config::load(a.config.as_deref())?;
    if let Some(l) = a.listen {
        config.listen = l;
    }
    if let Some(l) = a.http_listen {
        config.http.listen = l;
    }
    if let Some(d) = &a.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(p) = &a.policy {
        config.policy = Some(p.clone());
    }
    if let Some(nodes) = &a.redis_nodes {
        config.storage.backend = writ_server::config::Backend::Redis;
        config.storage.redis.nodes = nodes.clone();
    }
    let o = &mut config.observability;
    if let Some(l) = a.ops_listen {
        o.listen = l;
    }
    if let Some(f) = &a.log_format {
        o.log_format = match f.as_str() {
            "json" => writ_server::telemetry::LogFormat::Json,
            "text" => writ_server::telemetry::LogFormat::Text,
            _ => writ_server::telemetry::LogFormat::Auto,
        };
    }
    if let Some(l) = &a.log_level {
        o.log_level = l.clone();
    }
    if let Some(e) = &a.otlp_endpoint {
        o.otlp_endpoint = Some(e.clone());
    }
    // Before the runtime is built from it.
    config.validate()?;
    Ok(config)
}

async fn serve(config: writ_server::Config) -> Result<ExitCode> {
    let telemetry = writ_server::telemetry::init(&config.observability)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        runtime = ?tokio::runtime::Handle::current().runtime_flavor(),
        traces = telemetry.exporting(),
        "starting"
    );
    let served = serve_until_signal(config).await;
    if let Err(e) = &served {
        tracing::error!(error = %format!("{e:#}"), "stopped with an error");
    }
    // The last spans, the shutdown's included, leave before the process does.
    telemetry.shutdown().await;
    served
}

async fn serve_until_signal(config: writ_server::Config) -> Result<ExitCode> {
    let running = writ_server::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Prints a refusal the way scripts and people both read it, and picks the exit code. A
/// status the client made up from a failed connection is no refusal: an error (exit 2).
fn refused(json: bool, e: ClientError) -> Result<ExitCode> {
    match e {
        ClientError::Status(s) if std::error::Error::source(&s).is_some() => {
            let mut chain = Vec::new();
            let mut src = std::error::Error::source(&s);
            while let Some(e) = src {
                chain.push(e.to_string());
                src = e.source();
            }
            anyhow::bail!(
                "the connection failed: {} (a TLS server closes a connection that speaks \
                 plaintext, or presents a client certificate its CA did not issue; its log says \
                 which)",
                chain.join(": ")
            )
        }
        ClientError::Status(s) => {
            if json {
                println!("{}", output::status_json(&s));
            }
            eprintln!(
                "writ: refused: {}: {}",
                output::code_name(s.code()),
                s.message()
            );
            Ok(ExitCode::from(1))
        }
        other => Err(other.into()),
    }
}

async fn mint(a: MintArgs) -> Result<ExitCode> {
    let credential = secret(
        "WRIT_MINTER_CREDENTIAL",
        Some(&a.credential_file),
        "minter credential",
    )?;
    let mut client = a
        .client
        .connect(Proof::None)
        .await?
        .with_minter_credential(&credential)?;
    let n = a.narrowing;
    let req = pb::MintRequest {
        subject: a.subject,
        audience: Some(args::party(&n.audience, n.audience_kind, n.audience_client)),
        targets: n.targets,
        scopes: n.scopes,
        claims: args::claims(n.claims, n.claim_scopes).map_err(anyhow::Error::msg)?,
        purpose: n.purpose.unwrap_or_default(),
        tctx: a.tctx.into_iter().collect(),
        rctx: a.rctx.into_iter().collect(),
        ttl_seconds: n.ttl.unwrap_or(0),
        max_uses: n.max_uses.unwrap_or(0),
        require_action_check: n.require_action_check,
        idempotency_key: n.idempotency_key.unwrap_or_default(),
    };
    match client.mint(req).await {
        Ok(r) => output::issued(a.client.json, &r.token, r.info.as_ref()),
        Err(e) => refused(a.client.json, e),
    }
}

async fn downscope(a: DownscopeArgs) -> Result<ExitCode> {
    let parent_token = a.token.load()?;
    let mut client = a.client.connect(a.caller.proof()?).await?;
    let n = a.narrowing;
    let req = pb::DownscopeRequest {
        parent_token,
        audience: Some(args::party(&n.audience, n.audience_kind, n.audience_client)),
        targets: n.targets,
        scopes: n.scopes,
        claims: args::claims(n.claims, n.claim_scopes).map_err(anyhow::Error::msg)?,
        ttl_seconds: n.ttl.unwrap_or(0),
        purpose: n.purpose.unwrap_or_default(),
        max_uses: n.max_uses.unwrap_or(0),
        require_action_check: n.require_action_check,
        drop_rctx: a.drop_rctx,
        idempotency_key: n.idempotency_key.unwrap_or_default(),
    };
    match client.downscope(req).await {
        Ok(r) => output::issued(a.client.json, &r.token, r.info.as_ref()),
        Err(e) => refused(a.client.json, e),
    }
}

async fn validate(a: ValidateArgs) -> Result<ExitCode> {
    let token = a.token.load()?;
    let mut client = a.client.connect(a.caller.proof()?).await?;
    let action = a.scope.map(|scope| pb::Action {
        scope,
        attributes: args::attributes(a.attrs),
    });
    match client
        .validate(pb::ValidateRequest {
            token,
            decision_only: false,
            action,
            txn_token_jwt: a.jwt,
        })
        .await
    {
        Ok(r) => output::validation(a.client.json, &r),
        Err(e) => refused(a.client.json, e),
    }
}

async fn revoke(a: RevokeArgs) -> Result<ExitCode> {
    use pb::revoke_request::Target as T;
    let (mut client, target) = match a.target {
        Some(target) => {
            let target = args::parse_target(&target).map_err(|e| anyhow::anyhow!("TARGET: {e}"))?;
            if a.caller.given() {
                anyhow::bail!(
                    "a TARGET is revoked with the operator credential, not as a holder: drop \
                     --as, --cert or --assert-as (or the TARGET, to revoke the token you hold)"
                );
            }
            let credential = a.operator.load()?;
            let target = match target {
                args::Target::TokenId(id) => T::TokenId(id),
                args::Target::Txn(txn) => T::Txn(txn),
            };
            let client = a.client.connect(Proof::None).await?;
            (client.with_operator_credential(&credential)?, target)
        }
        None => {
            let token = a.token.load().context(
                "nothing to revoke: give a token id (tid_...) or transaction (txn_...), \
                 or the token itself in WRIT_TOKEN or --token-file",
            )?;
            if !a.caller.given() {
                anyhow::bail!(
                    "revoking a token as its holder needs the holder's identity: --as HOLDER \
                     (or --cert FILE --key FILE)"
                );
            }
            let client = a.client.connect(a.caller.proof()?).await?;
            (client, T::Token(token))
        }
    };
    let req = pb::RevokeRequest {
        target: Some(target),
        reason: a.reason,
    };
    match client.revoke(req).await {
        Ok(r) => output::revoked(a.client.json, &r),
        Err(e) => refused(a.client.json, e),
    }
}

async fn chain(a: ChainArgs) -> Result<ExitCode> {
    let mut client = operator_client(&a.client, a.operator).await?;
    let format = if a.client.json {
        output::ChainFormat::Json
    } else if a.dot {
        output::ChainFormat::Dot
    } else {
        output::ChainFormat::Tree
    };
    match client.get_transaction(&a.txn).await {
        Ok(t) => output::chain(format, std::io::stdout().is_terminal(), &t),
        Err(e) => refused(a.client.json, e),
    }
}

async fn token(a: TokenArgs) -> Result<ExitCode> {
    let mut client = operator_client(&a.client, a.operator).await?;
    match client.get_token(&a.token_id).await {
        Ok(r) => output::token(a.client.json, std::io::stdout().is_terminal(), &r),
        Err(e) => refused(a.client.json, e),
    }
}

async fn party(command: PartyCommand) -> Result<ExitCode> {
    match command {
        PartyCommand::Disable {
            client,
            party,
            reason,
            operator,
        } => {
            let mut c = operator_client(&client, operator).await?;
            match c.disable_party(&party, &reason).await {
                Ok(r) => {
                    if client.json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "party": party, "revoked": r.revoked, "txns": r.txns,
                                "revoked_token_ids": r.revoked_token_ids,
                            })
                        );
                    } else {
                        println!(
                            "disabled {party}: revoked {} tokens in {} transactions",
                            r.revoked, r.txns
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(client.json, e),
            }
        }
        PartyCommand::Enable {
            client,
            party,
            operator,
        } => {
            let mut c = operator_client(&client, operator).await?;
            match c.enable_party(&party).await {
                Ok(r) => {
                    if client.json {
                        println!(
                            "{}",
                            serde_json::json!({"party": party, "was_disabled": r.was_disabled})
                        );
                    } else if r.was_disabled {
                        println!("enabled {party} (nothing revoked is restored)");
                    } else {
                        println!("{party} was not disabled");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(client.json, e),
            }
        }
    }
}

async fn keys(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::List { client, operator } => {
            let mut c = operator_client(&client, operator).await?;
            match c.list_signing_keys().await {
                Ok(r) => output::signing_keys(client.json, &r.keys, Some(&r.jwks_json)),
                Err(e) => refused(client.json, e),
            }
        }
        KeysCommand::Rotate { client, operator } => {
            let mut c = operator_client(&client, operator).await?;
            match c.rotate_signing_keys().await {
                Ok(r) => output::signing_keys(client.json, &r.keys, None),
                Err(e) => refused(client.json, e),
            }
        }
    }
}

async fn consent(command: ConsentCommand) -> Result<ExitCode> {
    match command {
        ConsentCommand::List {
            client,
            status,
            subject,
            txn,
            after,
            page_size,
            operator,
        } => {
            let mut c = operator_client(&client, operator).await?;
            let req = pb::ListConsentsRequest {
                status: status
                    .map_or(pb::ConsentStatus::Unspecified, |s| s.pb())
                    .into(),
                subject: subject.unwrap_or_default(),
                txn: txn.unwrap_or_default(),
                after: after.unwrap_or_default(),
                page_size,
            };
            match c.list_consents(req).await {
                Ok(r) => output::consents(client.json, &r),
                Err(e) => refused(client.json, e),
            }
        }
        ConsentCommand::Show {
            client,
            id,
            operator,
        } => {
            let mut c = operator_client(&client, operator).await?;
            match c.get_consent(&id).await {
                Ok(r) => output::consent(client.json, &r),
                Err(e) => refused(client.json, e),
            }
        }
        ConsentCommand::Approve(a) => decide(a, true).await,
        ConsentCommand::Deny(a) => decide(a, false).await,
        ConsentCommand::Request {
            client,
            token,
            caller,
            resource,
            scope,
            attrs,
            reason,
        } => {
            let token = token.load()?;
            let mut c = client.connect(caller.proof()?).await?;
            let req = pb::RequestConsentRequest {
                token,
                action: Some(pb::Action {
                    scope,
                    attributes: args::attributes(attrs),
                }),
                resource,
                reason,
            };
            match c.request_consent(req).await {
                Ok(r) => output::consent_requested(client.json, &r),
                Err(e) => refused(client.json, e),
            }
        }
        ConsentCommand::Redeem {
            client,
            id,
            token,
            caller,
            ttl,
        } => {
            let token = token.load()?;
            let mut c = client.connect(caller.proof()?).await?;
            match c.redeem_consent(&id, &token, ttl.unwrap_or(0)).await {
                Ok(r) => output::issued(client.json, &r.token, r.info.as_ref()),
                Err(e) => refused(client.json, e),
            }
        }
    }
}

/// `writ consent approve|deny`: as an approver app when an identity is given, else with
/// the operator credential.
async fn decide(a: DecideArgs, approve: bool) -> Result<ExitCode> {
    let mut c = if a.caller.given() {
        a.client.connect(a.caller.proof()?).await?
    } else {
        operator_client(&a.client, a.operator).await?
    };
    match c.decide_consent(&a.id, approve, &a.subject).await {
        Ok(r) => output::consent(a.client.json, &r.request.unwrap_or_default()),
        Err(e) => refused(a.client.json, e),
    }
}

async fn operator_client(client: &ClientArgs, op: OperatorCredential) -> Result<WritClient> {
    let credential = op.load()?;
    Ok(client
        .connect(Proof::None)
        .await?
        .with_operator_credential(&credential)?)
}

async fn txns(a: TxnsArgs) -> Result<ExitCode> {
    let mut client = operator_client(&a.client, a.operator).await?;
    let now = args::now_ms();
    let req = pb::ListTransactionsRequest {
        subject: a.subject.unwrap_or_default(),
        actor: a.actor.unwrap_or_default(),
        since_unix_ms: a.since.map_or(0, |s| s.at(now)),
        until_unix_ms: a.until.map_or(0, |s| s.at(now)),
        status: a
            .status
            .map_or(pb::TokenStatus::Unspecified, |s| s.pb())
            .into(),
        page_size: a.limit,
        cursor: a.cursor.unwrap_or_default(),
    };
    match client.list_transactions(req).await {
        Ok(r) => output::txns(a.client.json, std::io::stdout().is_terminal(), &r),
        Err(e) => refused(a.client.json, e),
    }
}

async fn events(a: EventsArgs) -> Result<ExitCode> {
    use std::io::Write;
    let (txn, json) = (a.txn.clone().unwrap_or_default(), a.client.json);
    if txn.is_empty() && !a.follow {
        anyhow::bail!("give a transaction (txn_...), or --follow to watch every transaction");
    }
    let colour = std::io::stdout().is_terminal();
    let mut client = operator_client(&a.client, a.operator).await?;
    // Watch first, then read the history, so nothing falls between the two.
    let mut live = if a.follow {
        let req = pb::WatchEventsRequest {
            txn: txn.clone(),
            subject: a.subject.unwrap_or_default(),
            actor: a.actor.unwrap_or_default(),
            kinds: a.kinds.iter().map(|k| i32::from(k.pb())).collect(),
        };
        match client.watch_events(req).await {
            Ok(s) => Some(s),
            Err(e) => return refused(json, e),
        }
    } else {
        None
    };
    let show_txn = txn.is_empty();
    let mut stdout = std::io::stdout().lock();
    let mut last = String::new();
    if !txn.is_empty() {
        const PAGE: u32 = 500;
        loop {
            let req = pb::ListEventsRequest {
                txn: txn.clone(),
                after: last.clone(),
                page_size: PAGE,
            };
            let page = match client.list_events(req).await {
                Ok(p) => p,
                Err(e) => return refused(json, e),
            };
            for e in &page.events {
                writeln!(stdout, "{}", output::event(json, colour, show_txn, e))?;
            }
            if let Some(e) = page.events.last() {
                last = e.id.clone();
            }
            if page.events.len() < PAGE as usize {
                break;
            }
        }
    }
    stdout.flush()?;
    let Some(mut live) = live.take() else {
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        let next = tokio::select! {
            m = live.message() => m,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        match next {
            // Ids are fixed-width hex, so string order is id order.
            Ok(Some(e)) if e.id > last => {
                writeln!(stdout, "{}", output::event(json, colour, show_txn, &e))?;
                stdout.flush()?;
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(status) => return refused(json, ClientError::Status(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_spiffe_path_segment_and_a_file_name() {
        for ok in ["planner", "payments-api", "a.b_c", "X9"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            ".hidden",
            "spiffe://writ.local/agent/x",
            "a b",
            "é",
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(name_problem(&"a".repeat(129)).is_some());
    }

    #[test]
    fn the_missing_certificate_names_the_command_that_writes_it() {
        assert_eq!(
            issue_command("planner", Path::new(DEFAULT_CERTS)),
            "writ certs issue planner"
        );
        assert_eq!(
            issue_command("planner", Path::new("/srv/writ/certs")),
            "writ certs issue planner --data-dir /srv/writ"
        );
        assert_eq!(
            issue_command("planner", Path::new("/etc/svids")),
            "writ certs issue planner --out /etc/svids"
        );
        assert_eq!(
            issue_command("planner", Path::new("certs")),
            "writ certs issue planner --out certs"
        );
    }
}
