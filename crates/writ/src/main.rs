//! The `writ` binary: `writ serve` runs the service; the other commands are a client
//! for trying it by hand and for scripts (`--json` prints one JSON object on stdout).
//! `anyhow` lives here and nowhere else.
#![forbid(unsafe_code)]

mod args;
mod output;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
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
    /// Run the Writ service (embedded defaults: 127.0.0.1:7433, ./writ-data).
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
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file (optional; every setting has a default).
    #[arg(long, env = "WRIT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; overrides the configuration.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory; overrides the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// Server address.
    #[arg(long, env = "WRIT_SERVER", default_value = "http://127.0.0.1:7433")]
    server: String,
    /// Connect over plaintext gRPC to a server that is not on a loopback address
    /// (tokens and credentials then cross the network in the clear).
    #[arg(long)]
    insecure: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    async fn connect(&self) -> Result<WritClient> {
        Ok(if self.insecure {
            WritClient::connect_insecure(&self.server).await?
        } else {
            WritClient::connect(&self.server).await?
        })
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
    #[arg(long = "as")]
    caller: String,
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
    #[arg(long = "as")]
    caller: String,
    /// Check an action that needs this scope.
    #[arg(long)]
    scope: Option<String>,
    /// Action attribute KEY=VALUE: an integer if it parses as one, a time for
    /// @DATE or @UNIX_SECONDS, else a string. A KEY given twice or more is a list (every
    /// item must pass).
    #[arg(long = "attr", value_parser = args::parse_attr, requires = "scope")]
    attrs: Vec<(String, pb::Value)>,
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
    /// by its holder, named with --as.
    #[command(flatten)]
    token: TokenSource,
    /// Who revokes the token: its holder (the token's audience).
    #[arg(long = "as")]
    caller: Option<String>,
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

/// `serve`'s configuration: the file (or the defaults) with the command line's overrides.
fn serve_config(a: &ServeArgs) -> Result<writ_server::Config> {
    let mut config = writ_server::Config::load(a.config.as_deref())?;
    if let Some(l) = a.listen {
        config.listen = l;
    }
    if let Some(d) = &a.data_dir {
        config.data_dir = d.clone();
    }
    // Before the runtime is built from it.
    config.validate()?;
    Ok(config)
}

async fn serve(config: writ_server::Config) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    tracing::info!(
        runtime = ?tokio::runtime::Handle::current().runtime_flavor(),
        "starting"
    );
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

/// Prints a refusal the way scripts and people both read it, and picks the exit code.
fn refused(json: bool, e: ClientError) -> Result<ExitCode> {
    match e {
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
        .connect()
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
    let mut client = a.client.connect().await?.as_caller(&a.caller)?;
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
    let mut client = a.client.connect().await?.as_caller(&a.caller)?;
    let action = a.scope.map(|scope| pb::Action {
        scope,
        attributes: args::attributes(a.attrs),
    });
    match client
        .validate(pb::ValidateRequest {
            token,
            decision_only: false,
            action,
        })
        .await
    {
        Ok(r) => output::validation(a.client.json, &r),
        Err(e) => refused(a.client.json, e),
    }
}

async fn revoke(a: RevokeArgs) -> Result<ExitCode> {
    use pb::revoke_request::Target as T;
    let client = a.client.connect().await?;
    let (mut client, target) = match a.target {
        Some(target) => {
            let target = args::parse_target(&target).map_err(|e| anyhow::anyhow!("TARGET: {e}"))?;
            let credential = a.operator.load()?;
            let target = match target {
                args::Target::TokenId(id) => T::TokenId(id),
                args::Target::Txn(txn) => T::Txn(txn),
            };
            (client.with_operator_credential(&credential)?, target)
        }
        None => {
            let token = a.token.load().context(
                "nothing to revoke: give a token id (tid_...) or transaction (txn_...), \
                 or the token itself in WRIT_TOKEN or --token-file",
            )?;
            let holder = a
                .caller
                .context("revoking a token as its holder needs --as HOLDER")?;
            (client.as_caller(&holder)?, T::Token(token))
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

async fn operator_client(client: &ClientArgs, op: OperatorCredential) -> Result<WritClient> {
    let credential = op.load()?;
    Ok(client
        .connect()
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
