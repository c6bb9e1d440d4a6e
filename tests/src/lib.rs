//! Harness for Writ's end-to-end tests; the tests themselves live in `tests/tests/`.
//!
//! Every test starts the real server in-process on `127.0.0.1:0` with its own temporary
//! data directory and talks to it over real gRPC through [`WritClient`], exactly as an
//! agent would. Helpers here build the requests the tests send and check the answers,
//! panicking with the full refusal when something is not what a test expects.
//!
//! The same suite runs against either storage backend: by default RocksDB in the data
//! directory; with `WRIT_TEST_BACKEND=redis`, a six-node Redis Cluster this test binary
//! starts once (`redis`), every server in a key namespace of its own.

pub mod browser;
pub mod oidc;

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tonic::Code;
use writ_client::{ClientError, WritClient};
use writ_server::RunningServer;

pub mod consent;
pub mod jwt;
pub mod redis;

/// The repository's root, found at run time: cargo sets `CARGO_MANIFEST_DIR` for the
/// tests it runs, so a test binary reused from a target directory shared with another
/// checkout finds this checkout's files, not the other's (the compile-time path is the
/// fallback for a binary started by hand).
pub fn repo_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    package
        .parent()
        .expect("tests/ lies in the repository")
        .to_owned()
}

pub use writ_client::build;
pub use writ_client::proto as pb;
pub use writ_server::Config;

/// Identity of the local minter the server generates when no `[[minters]]` are configured.
pub const LOCAL_MINTER: &str = "local-minter";
/// Name of the generated minter credential file in the data directory.
pub const CREDENTIAL_FILE: &str = "minter.credential";
/// Identity of the local operator the server generates when no `[[operators]]` are
/// configured.
pub const LOCAL_OPERATOR: &str = "local-operator";
/// Name of the generated operator credential file in the data directory.
pub const OPERATOR_CREDENTIAL_FILE: &str = "operator.credential";
/// Name of the server key ring file in the data directory.
pub const KEYS_FILE: &str = "server-keys.toml";

/// A real Writ server running in this process on an ephemeral loopback port, with a
/// private temporary data directory that lives as long as this value.
#[derive(Debug)]
pub struct TestServer {
    tmp: TempDir,
    data_dir: PathBuf,
    config: Config,
    running: Option<RunningServer>,
    addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
}

impl TestServer {
    /// Starts a server with the default configuration (TLS with its development CA) in
    /// development mode, so [`TestServer::party`] may assert identities: the suites about
    /// narrowing, lifecycle and the audit trail name parties by short ids.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server that accepts only proven identities (development mode off): parties
    /// connect with certificates from [`TestServer::svid`].
    pub async fn start_proven() -> TestServer {
        TestServer::start_proven_with(|_| {}).await
    }

    /// [`TestServer::start_proven`] after `configure`.
    pub async fn start_proven_with(configure: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::launch(
            |c| {
                c.auth.asserted_identities = false;
                configure(c)
            },
            |_| {},
        )
        .await
    }

    /// Starts a server after `configure` adjusted the configuration (listen address and
    /// data directory are set by the harness).
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::launch(configure, |_| {}).await
    }

    /// Starts a server whose data directory holds a copy of `other`'s server key ring
    /// (mode 0600) but none of its records: tokens it issues verify on `other` and are
    /// unknown there.
    pub async fn start_with_keys_of(other: &TestServer) -> TestServer {
        let keys = other.data_dir.join(KEYS_FILE);
        TestServer::launch(|_| {}, move |data_dir| with_key_ring_of(&keys, data_dir)).await
    }

    /// Starts another Writ node of `other`'s trust domain: the same server key ring (a
    /// copy) and the same store, which must be one several nodes share (Redis); its own
    /// data directory, credentials and listeners otherwise.
    pub async fn start_node_of(other: &TestServer) -> TestServer {
        TestServer::start_node_of_with(other, |_| {}).await
    }

    /// [`start_node_of`](Self::start_node_of), with `configure` applied after the shared
    /// store's settings (say, other replica acknowledgement settings).
    pub async fn start_node_of_with(
        other: &TestServer,
        configure: impl FnOnce(&mut Config),
    ) -> TestServer {
        let keys = other.data_dir.join(KEYS_FILE);
        let storage = other.config.storage.clone();
        assert_eq!(
            storage.backend,
            writ_server::config::Backend::Redis,
            "nodes share a Redis store"
        );
        TestServer::launch(
            move |c| {
                c.storage = storage;
                configure(c);
            },
            move |data_dir| with_key_ring_of(&keys, data_dir),
        )
        .await
    }

    async fn launch(
        configure: impl FnOnce(&mut Config),
        prepare: impl FnOnce(&Path),
    ) -> TestServer {
        log_if_asked();
        let tmp = tempfile::tempdir().expect("creating a temporary directory");
        let data_dir = tmp.path().join("data");
        prepare(&data_dir);
        let mut config = Config::default();
        config.auth.asserted_identities = true;
        redis::use_test_backend(&mut config);
        configure(&mut config);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.observability.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = data_dir.clone();
        let running = writ_server::start(config.clone())
            .await
            .expect("starting the Writ server");
        let addr = running.local_addr;
        let ops_addr = running.ops_addr;
        let http_addr = running.http_addr;
        TestServer {
            tmp,
            data_dir,
            config,
            running: Some(running),
            addr,
            ops_addr,
            http_addr,
        }
    }

    /// The ops listener's address (metrics, probes, plaintext gRPC health).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
            .expect("the ops listener is enabled (observability.enabled)")
    }

    /// `GET path` on the ops listener over plain HTTP/1.1.
    pub async fn ops_get(&self, path: &str) -> PlainAnswer {
        http_get(self.ops_addr(), path).await
    }

    /// A plaintext gRPC channel to the ops listener (h2c), as a Kubernetes gRPC probe
    /// connects.
    pub async fn ops_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.ops_addr()))
            .expect("the ops URL")
            .connect()
            .await
            .expect("connecting to the ops listener")
    }

    /// Starts shutting the server down in the background; the handle resolves once it has
    /// stopped.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        let running = self.running.take().expect("the server is running");
        tokio::spawn(async move {
            running
                .shutdown()
                .await
                .expect("the server shut down cleanly")
        })
    }

    /// `https://127.0.0.1:PORT` (`http://` when the test turned TLS off).
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.enabled {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The OAuth HTTP listener's address (panics when the test turned it off).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr.expect("the OAuth HTTP listener is enabled")
    }

    /// `https://127.0.0.1:PORT<path>` on the OAuth HTTP listener (`http://` without TLS).
    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.config.tls.enabled {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", self.http_addr())
    }

    /// An HTTP client for the OAuth listener, trusting [`TestServer::ca_pem`], presenting
    /// `identity` (certificate and key PEM) or no client certificate, speaking `version`.
    pub fn http_client(
        &self,
        identity: Option<(String, String)>,
        version: HttpVersion,
    ) -> reqwest::Client {
        http_client(&self.ca_pem(), identity, version)
    }

    /// [`TestServer::http_client`] proving `spiffe://<td>/<path>` with a certificate from
    /// the development CA, over whatever the server agrees to (HTTP/2 by ALPN).
    pub fn http_svid_client(&self, path: &str) -> reqwest::Client {
        self.http_client(Some(self.svid(path)), HttpVersion::Any)
    }

    /// The CA certificate the harness's clients trust: the development CA's
    /// (`<data_dir>/tls/ca.pem`), or, when the test named its own TLS files, its client
    /// CA bundle (such tests sign the server's certificate with the same CA).
    pub fn ca_pem(&self) -> String {
        let path = match &self.config.tls.client_ca {
            Some(bundle) => bundle.clone(),
            None => self.data_dir.join("tls").join("ca.pem"),
        };
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// The SPIFFE ID `spiffe://<trust domain>/<path>`.
    pub fn spiffe(&self, path: &str) -> String {
        format!(
            "spiffe://{}/{}",
            self.config.trust_domain,
            path.trim_start_matches('/')
        )
    }

    /// A client certificate and key (PEM) for `spiffe://<td>/<path>`, signed by the
    /// development CA (as `writ certs issue` makes them).
    pub fn svid(&self, path: &str) -> (String, String) {
        let out = self.tmp.path().join("certs");
        let stem = path.trim_start_matches('/').replace('/', "_");
        let issued = writ_server::pki::issue_client(
            &self.data_dir,
            &self.config.trust_domain,
            path,
            std::time::Duration::from_secs(3600),
            &out,
            &stem,
            true,
        )
        .unwrap_or_else(|e| panic!("issuing a certificate for {path}: {e}"));
        let read = |p: &Path| {
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        };
        (read(&issued.cert), read(&issued.key))
    }

    /// A client connected with `identity` (certificate and key PEM), or with none.
    pub async fn connect_with(
        &self,
        identity: Option<(String, String)>,
    ) -> Result<WritClient, writ_client::ClientError> {
        WritClient::connect_tls(
            &self.url(),
            writ_client::Tls {
                ca_pem: self.ca_pem(),
                identity,
                domain: None,
            },
        )
        .await
    }

    /// A raw channel to the server (TLS trusting [`TestServer::ca_pem`], no client
    /// identity), for requests the client library never makes.
    pub async fn channel(&self) -> tonic::transport::Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).expect("the server URL");
        let endpoint = if self.config.tls.enabled {
            endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(self.ca_pem())),
                )
                .expect("TLS configuration")
        } else {
            endpoint
        };
        endpoint.connect().await.expect("connecting")
    }

    /// A client proving `spiffe://<td>/<path>` with a certificate from the development CA.
    pub async fn svid_client(&self, path: &str) -> WritClient {
        let identity = self.svid(path);
        self.connect_with(Some(identity))
            .await
            .unwrap_or_else(|e| panic!("connecting as {path}: {e}"))
    }

    /// The data directory (`<tmp>/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory holding the data directory.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// The generated local minter credential, trimmed.
    pub fn credential(&self) -> String {
        let path = self.data_dir.join(CREDENTIAL_FILE);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// The generated local operator credential, trimmed.
    pub fn operator_credential(&self) -> String {
        let path = self.data_dir.join(OPERATOR_CREDENTIAL_FILE);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    async fn connect(&self) -> WritClient {
        let client = if self.config.tls.enabled {
            self.connect_with(None).await
        } else {
            WritClient::connect(&self.url()).await
        };
        client.unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url()))
    }

    /// A client with no identity at all.
    pub async fn anonymous(&self) -> WritClient {
        self.connect().await
    }

    /// A client holding the local minter credential.
    pub async fn minter(&self) -> WritClient {
        let cred = self.credential();
        self.connect()
            .await
            .with_minter_credential(&cred)
            .expect("credential is valid metadata")
    }

    /// A client holding the local operator credential.
    pub async fn operator(&self) -> WritClient {
        let cred = self.operator_credential();
        self.connect()
            .await
            .with_operator_credential(&cred)
            .expect("credential is valid metadata")
    }

    /// A client asserting the identity `id` (`x-writ-caller`).
    pub async fn party(&self, id: &str) -> WritClient {
        self.connect()
            .await
            .as_caller(id)
            .expect("caller id is valid metadata")
    }

    /// Shuts the server down and waits until it stopped (the store is closed).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("the server shut down cleanly");
        }
    }

    /// Starts the server again on the same data directory and configuration (a new
    /// ephemeral port).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// Restarts on the same data directory with a changed configuration.
    pub async fn restart_with(&mut self, configure: impl FnOnce(&mut Config)) {
        configure(&mut self.config);
        self.stop().await;
        let running = writ_server::start(self.config.clone())
            .await
            .expect("restarting the Writ server");
        self.addr = running.local_addr;
        self.ops_addr = running.ops_addr;
        self.http_addr = running.http_addr;
        self.running = Some(running);
    }

    /// Mints `req` as the local minter, panicking on refusal.
    pub async fn mint(&self, req: pb::MintRequest) -> pb::MintResponse {
        ok(self.minter().await.mint(req).await, "mint")
    }

    /// Downscopes as `caller`, panicking on refusal.
    pub async fn downscope(
        &self,
        caller: &str,
        req: pb::DownscopeRequest,
    ) -> pb::DownscopeResponse {
        ok(self.party(caller).await.downscope(req).await, "downscope")
    }

    /// Revokes as the local operator, panicking on refusal; returns the newly revoked ids.
    pub async fn revoke_as_operator(&self, req: pb::RevokeRequest) -> Vec<String> {
        ok(self.operator().await.revoke(req).await, "revoke").revoked_token_ids
    }

    /// Revokes by presenting the token itself as its holder (the token's audience),
    /// panicking on refusal; returns the newly revoked ids.
    pub async fn revoke_as_holder(&self, holder: &str, token: &str, reason: &str) -> Vec<String> {
        ok(
            self.party(holder)
                .await
                .revoke(revoke_token(token, reason))
                .await,
            "revoke",
        )
        .revoked_token_ids
    }

    /// Every audit event of `txn`, as an operator reads them through ListEvents pages of
    /// `page` events.
    pub async fn events_in_pages(&self, txn: &str, page: u32) -> Vec<pb::AuditEvent> {
        let mut op = self.operator().await;
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let r = ok(
                op.list_events(pb::ListEventsRequest {
                    txn: txn.into(),
                    after: after.clone(),
                    page_size: page,
                })
                .await,
                "list_events",
            );
            let n = r.events.len();
            out.extend(r.events);
            if n < page as usize {
                return out;
            }
            after = r.next_cursor;
        }
    }

    /// Every audit event of `txn`.
    pub async fn events(&self, txn: &str) -> Vec<pb::AuditEvent> {
        self.events_in_pages(txn, 100).await
    }

    /// Validates as `caller`, panicking on an RPC error (inactive is an answer, not an error).
    pub async fn validate(&self, caller: &str, req: pb::ValidateRequest) -> pb::ValidateResponse {
        ok(self.party(caller).await.validate(req).await, "validate")
    }
}

/// An HTTP answer: status, headers and body.
#[derive(Debug)]
pub struct PlainAnswer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body, as text.
    pub body: String,
}

/// `GET path` on `addr` over plain HTTP/1.1 (hyper's client), on a connection of its own.
pub async fn http_get(addr: SocketAddr, path: &str) -> PlainAnswer {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<hyper::body::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .expect("an HTTP/1.1 handshake");
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::new())
        .expect("a request");
    let answer = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let body = answer
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("reading the body of GET {path}: {e}"))
        .to_bytes();
    driver.abort();
    PlainAnswer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
    }
}

// ---- the OAuth HTTP face ----

/// Which HTTP version an [`http_client`] speaks over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// Offers `h2` and `http/1.1` (ALPN) and speaks what the server picks.
    Any,
    /// Offers and speaks only HTTP/1.1.
    Http1,
    /// Offers and speaks only HTTP/2.
    Http2,
}

/// An HTTPS client (rustls on ring) trusting `ca_pem`, presenting `identity`.
pub fn http_client(
    ca_pem: &str,
    identity: Option<(String, String)>,
    version: HttpVersion,
) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("the CA bundle is PEM"))
            .expect("the CA certificate is a usable root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let mut tls = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("the client certificate is PEM"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("the client key is PEM"),
            )
            .expect("a usable client certificate"),
    };
    tls.alpn_protocols = match version {
        HttpVersion::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
        HttpVersion::Http2 => vec![b"h2".to_vec()],
    };
    let builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30));
    let builder = match version {
        HttpVersion::Http1 => builder.http1_only(),
        HttpVersion::Http2 => builder.http2_prior_knowledge(),
        HttpVersion::Any => builder,
    };
    builder.build().expect("building the HTTP client")
}

/// `pairs` as an `application/x-www-form-urlencoded` body (a name may repeat).
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// An answer of the OAuth face: status, headers and JSON body (`Null` when not JSON).
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub json: serde_json::Value,
    /// The body as text.
    pub text: String,
    /// The HTTP version it came over.
    pub version: reqwest::Version,
}

impl HttpAnswer {
    /// Reads a response whole.
    pub async fn read(r: reqwest::Response) -> HttpAnswer {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let version = r.version();
        let text = r.text().await.expect("reading the answer");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        HttpAnswer {
            status,
            headers,
            json,
            text,
            version,
        }
    }

    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts an OAuth error answer with `status` and `error` whose description names
    /// every needle; returns the description.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: &str, needles: &[&str]) -> String {
        assert_eq!(
            (self.status, self.json["error"].as_str()),
            (status, Some(error)),
            "unexpected answer: {self:?}"
        );
        let description = self.json["error_description"]
            .as_str()
            .unwrap_or_else(|| panic!("an error says why: {self:?}"));
        for n in needles {
            assert!(
                description.contains(n),
                "description {description:?} does not name {n:?}"
            );
        }
        assert_eq!(self.header("cache-control"), "no-store", "{self:?}");
        assert_eq!(self.header("pragma"), "no-cache", "{self:?}");
        description.to_owned()
    }
}

/// POSTs the form `pairs` to `url` with `client` (extra `headers` added) and reads the
/// answer.
pub async fn post_form(
    client: &reqwest::Client,
    url: &str,
    pairs: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> HttpAnswer {
    let mut request = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(pairs));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    HttpAnswer::read(
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:?}")),
    )
    .await
}

// ---- request builders ----

/// Owned strings.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A claims map.
pub fn claims(v: Vec<(&str, pb::Constraint)>) -> HashMap<String, pb::Constraint> {
    v.into_iter().map(|(k, c)| (k.to_string(), c)).collect()
}

/// A mint request for `subject` with the agent `audience`.
pub fn mint_request(
    subject: &str,
    audience: pb::Party,
    targets: &[&str],
    scopes: &[&str],
    claim_list: Vec<(&str, pb::Constraint)>,
) -> pb::MintRequest {
    pb::MintRequest {
        subject: subject.into(),
        audience: Some(audience),
        targets: strings(targets),
        scopes: strings(scopes),
        claims: claims(claim_list),
        ..Default::default()
    }
}

/// The trip scenario's root: alice's transaction handed to the `planner` agent, which
/// may reach `booking` and `payments`, with `amount ≤ 1000` and `category ∉ {gambling}`.
pub fn trip_mint() -> pb::MintRequest {
    pb::MintRequest {
        purpose: "book a trip".into(),
        tctx: [("trip".to_string(), "lisbon-2026".to_string())].into(),
        rctx: [("req_ip".to_string(), "203.0.113.7".to_string())].into(),
        ..mint_request(
            "alice",
            build::agent("planner"),
            &["booking", "payments"],
            &["trips:book", "payments:charge"],
            vec![
                ("amount", build::max(1000)),
                ("category", build::deny(&["gambling"])),
            ],
        )
    }
}

/// A downscope request of `parent` for `audience`.
pub fn child(
    parent: &str,
    audience: pb::Party,
    targets: &[&str],
    scopes: &[&str],
    claim_list: Vec<(&str, pb::Constraint)>,
) -> pb::DownscopeRequest {
    pb::DownscopeRequest {
        parent_token: parent.into(),
        audience: Some(audience),
        targets: strings(targets),
        scopes: strings(scopes),
        claims: claims(claim_list),
        ..Default::default()
    }
}

/// A plain introspection of `token`.
pub fn introspect(token: &str) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.into(),
        decision_only: false,
        action: None,
        ..Default::default()
    }
}

/// An introspection of `token` that also checks one action.
pub fn check(token: &str, scope: &str, attributes: Vec<(&str, pb::Value)>) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.into(),
        decision_only: false,
        action: Some(pb::Action {
            scope: scope.into(),
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        ..Default::default()
    }
}

/// A revocation of `token` by its holder.
pub fn revoke_token(token: &str, reason: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::Token(token.into())),
        reason: reason.into(),
    }
}

/// A revocation of the token `id` and its descendants (operators).
pub fn revoke_token_id(id: &str, reason: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::TokenId(id.into())),
        reason: reason.into(),
    }
}

/// A revocation of the whole transaction `txn` (operators).
pub fn revoke_txn(txn: &str, reason: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(pb::revoke_request::Target::Txn(txn.into())),
        reason: reason.into(),
    }
}

/// `ids`, sorted, for comparing sets of token ids.
pub fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v = strings(ids);
    v.sort();
    v
}

/// The id of a minted or derived token.
#[track_caller]
pub fn token_id(info: Option<&pb::TokenInfo>) -> String {
    info.expect("an issued token comes with its info")
        .token_id
        .clone()
}

// ---- answer checks ----

/// The value of a successful call; panics with the refusal otherwise.
#[track_caller]
pub fn ok<T>(r: Result<T, ClientError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// Asserts the call was refused with `code` and a message containing every needle;
/// returns the message.
#[track_caller]
pub fn assert_refused<T: Debug>(r: Result<T, ClientError>, code: Code, needles: &[&str]) -> String {
    let status = match r {
        Ok(v) => panic!("expected {code:?} naming {needles:?}, but the call succeeded: {v:?}"),
        Err(ClientError::Status(s)) => s,
        Err(other) => panic!("expected {code:?} naming {needles:?}, got a client error: {other}"),
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {:?}",
        status.message()
    );
    for n in needles {
        assert!(
            status.message().contains(n),
            "message {:?} does not name {n:?}",
            status.message()
        );
    }
    status.message().to_string()
}

/// Asserts the answer is active and returns its info.
#[track_caller]
pub fn assert_active(r: &pb::ValidateResponse) -> pb::TokenInfo {
    assert!(r.active, "expected an active token, got {r:?}");
    assert_eq!(
        r.inactive_reason(),
        pb::InactiveReason::Unspecified,
        "{r:?}"
    );
    r.info
        .clone()
        .unwrap_or_else(|| panic!("an active answer carries the token info: {r:?}"))
}

/// Asserts the answer is inactive for `reason` and says nothing else.
#[track_caller]
pub fn assert_inactive(r: &pb::ValidateResponse, reason: pb::InactiveReason) {
    assert!(!r.active, "expected inactive ({reason:?}), got {r:?}");
    assert_eq!(r.inactive_reason(), reason, "{r:?}");
    assert!(
        r.info.is_none(),
        "an inactive answer must carry no info: {r:?}"
    );
    assert!(
        r.decision.is_none(),
        "an inactive answer must carry no decision: {r:?}"
    );
}

/// Asserts the answer is active with an allowed action.
#[track_caller]
pub fn assert_allowed(r: &pb::ValidateResponse) {
    assert_active(r);
    let d = r
        .decision
        .as_ref()
        .unwrap_or_else(|| panic!("an action was asked, no decision: {r:?}"));
    assert!(d.allowed, "expected the action to be allowed: {d:?}");
    assert_eq!(d.denied_by, "", "{d:?}");
}

/// Asserts the answer is active with the action denied by `denied_by`; returns the reason.
#[track_caller]
pub fn assert_denied(r: &pb::ValidateResponse, denied_by: &str) -> String {
    assert_active(r);
    let d = r
        .decision
        .as_ref()
        .unwrap_or_else(|| panic!("an action was asked, no decision: {r:?}"));
    assert!(
        !d.allowed,
        "expected the action to be denied by {denied_by:?}: {d:?}"
    );
    assert_eq!(d.denied_by, denied_by, "{d:?}");
    assert!(!d.reason.is_empty(), "a denial says why: {d:?}");
    d.reason.clone()
}

/// The actor chain, current actor first: `(id, kind)` pairs.
pub fn act_chain(info: &pb::TokenInfo) -> Vec<(String, pb::ActorKind)> {
    let mut out = Vec::new();
    let mut cur = info.act.as_ref();
    while let Some(a) = cur {
        out.push((a.id.clone(), a.kind()));
        cur = a.act.as_deref();
    }
    out
}

/// Just the ids of [`act_chain`].
pub fn act_ids(info: &pb::TokenInfo) -> Vec<String> {
    act_chain(info).into_iter().map(|(id, _)| id).collect()
}

// ---- token mangling, time, files ----

/// `token` with the character in its middle replaced by another base64url character:
/// still well-formed, but its integrity tag no longer verifies.
pub fn flip_middle(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let out: String = chars.into_iter().collect();
    assert_ne!(out, token);
    out
}

/// Sleeps long enough for a token minted with `ttl_seconds = 1` to be expired.
pub async fn sleep_past_one_second_ttl() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {}: {e}", d.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", d.display()));
            let ft = entry
                .file_type()
                .unwrap_or_else(|e| panic!("stat {}: {e}", entry.path().display()));
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// True when `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Creates the data directory `data_dir` (0700) holding a copy of the server key ring
/// `keys` (0600).
fn with_key_ring_of(keys: &Path, data_dir: &Path) {
    std::fs::create_dir_all(data_dir).expect("creating the data directory");
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .expect("chmod 700 on the data directory");
    let copy = data_dir.join(KEYS_FILE);
    std::fs::copy(keys, &copy).expect("copying the server key ring");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600 on the copied key ring");
}

/// The servers' logs on stderr, when `WRIT_TEST_LOG` names a filter (`warn`,
/// `writ_server=debug`): what a failing test's server said.
fn log_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("WRIT_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}
