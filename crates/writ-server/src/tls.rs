//! TLS for the gRPC listener, with optional client certificates that prove a SPIFFE ID.
//!
//! Writ's callers are workloads. Some hold an X.509-SVID (a certificate whose one URI SAN
//! is `spiffe://<trust-domain>/<path>`, issued by SPIRE or by `writ certs issue`); others
//! authenticate with a bearer credential or a JWT assertion and present no certificate.
//! So client certificates are optional at the TLS layer, but one that is presented must
//! verify completely, or the handshake fails:
//! - rustls-webpki checks the chain to the trust bundle (`client_ca`), the validity period
//!   and the extended key usage (clientAuth, when the extension is present);
//! - a wrapping verifier then checks that the leaf is an X.509-SVID of the configured trust
//!   domain (exactly one URI SAN, a valid SPIFFE ID, not a CA, a signing key usage).
//!
//! The verified ID reaches the service as [`PeerInfo`] in each request's extensions (tonic
//! copies a connection's [`Connected::ConnectInfo`] there); the auth seam reads
//! `request.extensions().get::<PeerInfo>()`. tonic's `Request::remote_addr()` does not
//! know this type: use [`PeerInfo::remote_addr`].
//!
//! Hot reload: [`TlsSource`] keeps the current `rustls::ServerConfig` behind an
//! [`ArcSwap`]. [`TlsSource::reload`] re-reads the three files and swaps in a new config
//! when their content changed; [`TlsSource::spawn_reloader`] polls (by content hash: SPIRE
//! and cert-manager rewrite or re-link files, and mtimes are not reliable). A half-rotated
//! state (new certificate, old key) is refused and retried on the next tick; the config in
//! force stays until a complete, consistent set is on disk. Each handshake takes the config
//! current at accept time: connections opened after a reload use the new material, open
//! ones keep the material they were established with until they close.
//!
//! Handshakes run concurrently in their own tasks, each bounded by a timeout, on top of
//! [`crate::transport::Conn`] (so the transport's connection caps stay held for the life of
//! the connection). A failed handshake is logged and dropped, never yielded as an error.
//!
//! Session resumption is off: every connection runs a full handshake, so every client
//! certificate is checked against the configuration in force (agents hold long-lived
//! HTTP/2 connections, so this costs little).

use crate::transport::Conn;
use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ServerConfig, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{OtherError, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use writ_core::limits::MAX_ID_LEN;
use x509_parser::extensions::GeneralName;

/// Largest certificate, key or bundle file read (a trust bundle of a few hundred CAs is
/// well below; a path mistakenly pointing at a device or a huge file is refused).
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Shortest reload interval [`TlsSource::spawn_reloader`] accepts.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(10);

/// Why TLS material, a SPIFFE ID or a client certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{what} {path}: {source}")]
    Read {
        /// Which setting (`tls.cert`, `tls.key`, `tls.client_ca`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file's content is unusable.
    #[error("{what} {path}: {message}")]
    File {
        /// Which setting (`tls.cert`, `tls.key`, `tls.client_ca`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The private key is not the certificate's.
    #[error("tls.key {key}: private key does not match certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Not a SPIFFE ID Writ accepts.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidSpiffeId {
        /// The text (shortened if long).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Not a valid trust domain name.
    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        /// The text (shortened if long).
        trust_domain: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A client certificate that chains to the bundle but is not an X.509-SVID.
    #[error("client certificate is not an X.509-SVID: {0}")]
    NotAnSvid(String),
    /// An SVID of another trust domain.
    #[error("client certificate's SPIFFE ID {id} is not in trust domain {expected:?}")]
    ForeignTrustDomain {
        /// The certificate's ID.
        id: SpiffeId,
        /// The configured trust domain.
        expected: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A SPIFFE ID naming a workload: `spiffe://<trust-domain>/<path>`, in canonical form.
///
/// Parsed per the SPIFFE ID specification, and bounded by Writ's party id length
/// ([`MAX_ID_LEN`] bytes) so that it can stand for a party anywhere an id can.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The whole ID.
    id: String,
    /// Length of the trust domain, which starts after `spiffe://`.
    td_len: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses a workload's SPIFFE ID: scheme `spiffe` (lowercase), a trust domain of
    /// `[a-z0-9.-_]`, and a non-empty path of segments of `[A-Za-z0-9.-_]` (none empty,
    /// `.` or `..`; no trailing slash); no port, user info, query or fragment; at most
    /// [`MAX_ID_LEN`] bytes.
    pub fn parse(id: &str) -> Result<SpiffeId, TlsError> {
        let bad = |reason| TlsError::InvalidSpiffeId {
            id: shorten(id),
            reason,
        };
        if id.len() > MAX_ID_LEN {
            return Err(bad("longer than 256 bytes"));
        }
        let Some(rest) = id.strip_prefix(SCHEME) else {
            return Err(bad("must start with `spiffe://` (lowercase)"));
        };
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        trust_domain_problem(td).map_or(Ok(()), |r| Err(bad(r)))?;
        if path.is_empty() {
            return Err(bad("a workload's ID needs a path after the trust domain"));
        }
        path_problem(path).map_or(Ok(()), |r| Err(bad(r)))?;
        Ok(SpiffeId {
            id: id.to_owned(),
            td_len: td.len(),
        })
    }

    /// `spiffe://<trust_domain>/<path>`, validated as by [`SpiffeId::parse`]; a leading
    /// `/` on `path` is optional.
    pub fn from_parts(trust_domain: &str, path: &str) -> Result<SpiffeId, TlsError> {
        let path = path.strip_prefix('/').unwrap_or(path);
        SpiffeId::parse(&format!("{SCHEME}{trust_domain}/{path}"))
    }

    /// The trust domain, such as `writ.local`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The path, with its leading `/`, such as `/agents/planner`.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.td_len..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

/// Checks a trust domain name (as in `trust_domain` of the configuration): `[a-z0-9.-_]`,
/// non-empty.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), TlsError> {
    let problem = if trust_domain.len() > MAX_ID_LEN - SCHEME.len() - 2 {
        Some("too long")
    } else {
        trust_domain_problem(trust_domain)
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(TlsError::InvalidTrustDomain {
            trust_domain: shorten(trust_domain),
            reason,
        }),
    }
}

fn trust_domain_problem(td: &str) -> Option<&'static str> {
    if td.is_empty() {
        return Some("the trust domain is empty");
    }
    for b in td.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b'A'..=b'Z' => return Some("the trust domain must be lowercase"),
            b':' => return Some("a port is not allowed"),
            b'@' => return Some("user info is not allowed"),
            b'?' => return Some("a query is not allowed"),
            b'#' => return Some("a fragment is not allowed"),
            _ => return Some("the trust domain may contain only a-z, 0-9, `.`, `-` and `_`"),
        }
    }
    None
}

/// `path` starts with `/`.
fn path_problem(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        if segment.is_empty() {
            return Some(if i == last {
                "a trailing `/` is not allowed"
            } else {
                "empty path segments are not allowed"
            });
        }
        if segment == "." || segment == ".." {
            return Some("`.` and `..` path segments are not allowed");
        }
        for b in segment.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
                b'?' => return Some("a query is not allowed"),
                b'#' => return Some("a fragment is not allowed"),
                b'%' => return Some("percent-encoding is not allowed"),
                _ => {
                    return Some("path segments may contain only A-Z, a-z, 0-9, `.`, `-` and `_`");
                }
            }
        }
    }
    None
}

/// Untrusted text for an error message: bounded, escaped by the `{:?}` that shows it.
fn shorten(s: &str) -> String {
    const SHOWN: usize = 300;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks that `der` is an X.509-SVID of `trust_domain` (the chain, validity and EKU are
/// rustls-webpki's part) and returns its SPIFFE ID.
pub fn svid_id(der: &[u8], trust_domain: &str) -> Result<SpiffeId, TlsError> {
    svid(der, trust_domain).map(|(id, _)| id)
}

/// [`svid_id`], and the certificate's expiry (`notAfter`, Unix seconds), from one parse.
fn svid(der: &[u8], trust_domain: &str) -> Result<(SpiffeId, i64), TlsError> {
    let not = |m: String| TlsError::NotAnSvid(m);
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| not(format!("unparseable certificate: {e}")))?;
    let constraints = cert
        .basic_constraints()
        .map_err(|e| not(format!("basicConstraints: {e}")))?;
    if constraints.is_some_and(|c| c.value.ca) {
        return Err(not(
            "it is a CA certificate (basicConstraints cA is true)".into()
        ));
    }
    if let Some(usage) = cert
        .key_usage()
        .map_err(|e| not(format!("keyUsage: {e}")))?
    {
        if !usage.value.digital_signature() {
            return Err(not("keyUsage lacks digitalSignature".into()));
        }
        if usage.value.key_cert_sign() || usage.value.crl_sign() {
            return Err(not(
                "keyUsage allows signing certificates or CRLs (keyCertSign, cRLSign)".into(),
            ));
        }
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| not(format!("subjectAltName: {e}")))?
        .ok_or_else(|| not("no subjectAltName, so no URI SAN".into()))?;
    let uri = match uri_names(&san.value.general_names).as_slice() {
        [one] => *one,
        [] => return Err(not("no URI SAN".into())),
        many => {
            return Err(not(format!(
                "{} URI SANs; an X.509-SVID has exactly one",
                many.len()
            )));
        }
    };
    let id = SpiffeId::parse(uri)?;
    if id.trust_domain() != trust_domain {
        return Err(TlsError::ForeignTrustDomain {
            id,
            expected: trust_domain.to_owned(),
        });
    }
    Ok((id, cert.validity().not_after.timestamp()))
}

/// The URIs among a subjectAltName's names.
pub(crate) fn uri_names<'a>(names: &[GeneralName<'a>]) -> Vec<&'a str> {
    names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

/// The files of a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server certificate's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The trust bundle (PEM): the CAs whose client certificates are accepted.
    pub client_ca: PathBuf,
}

/// The three files' bytes, as read once.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
        Ok(Contents {
            cert: read_capped("tls.cert", &files.cert)?,
            key: read_capped("tls.key", &files.key)?,
            client_ca: read_capped("tls.client_ca", &files.client_ca)?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for part in [&self.cert, &self.key, &self.client_ca] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        *h.finalize().as_bytes()
    }
}

/// Reads a whole file of at most [`MAX_PEM_BYTES`]. Symlinks are followed: SPIRE's helper
/// and Kubernetes' secret volumes rotate files by re-linking them.
fn read_capped(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::File {
            what,
            path: path.to_owned(),
            message: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// The TLS configuration in force, rebuilt from its files on [`TlsSource::reload`].
pub struct TlsSource {
    files: TlsFiles,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
    /// The configurations in force, one per [`Alpn`], swapped together.
    config: ArcSwap<Configs>,
    /// Digest of the files the config in force was built from; held through a reload, so
    /// reloads never interleave.
    digest: Mutex<[u8; 32]>,
}

impl fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSource")
            .field("files", &self.files)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TlsSource {
    /// Reads the files and builds the first configuration (blocking file I/O). Client
    /// certificates are accepted if they are X.509-SVIDs of `trust_domain`.
    pub fn load(files: TlsFiles, trust_domain: &str) -> Result<Arc<TlsSource>, TlsError> {
        validate_trust_domain(trust_domain)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let contents = Contents::read(&files)?;
        let config = build_config(&files, trust_domain, &provider, &contents)?;
        Ok(Arc::new(TlsSource {
            digest: Mutex::new(contents.digest()),
            files,
            trust_domain: trust_domain.to_owned(),
            provider,
            config: ArcSwap::from_pointee(Configs::new(config)),
        }))
    }

    /// The configuration for the next handshake of the gRPC listener ([`Alpn::H2`]).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current_for(Alpn::H2)
    }

    /// The configuration for the next handshake of a listener offering `alpn`.
    pub fn current_for(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let configs = self.config.load();
        match alpn {
            Alpn::H2 => configs.h2.clone(),
            Alpn::H2Http11 => configs.h2_http11.clone(),
        }
    }

    /// The files this source reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The trust domain of accepted client certificates.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Re-reads the files (blocking file I/O); if their content changed, builds and swaps
    /// in a new configuration. Returns whether it did. On error the configuration in force
    /// stays, and the next call tries again.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut in_force = self
            .digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let contents = Contents::read(&self.files)?;
        let digest = contents.digest();
        if digest == *in_force {
            return Ok(false);
        }
        let config = build_config(&self.files, &self.trust_domain, &self.provider, &contents)?;
        self.config.store(Arc::new(Configs::new(config)));
        *in_force = digest;
        tracing::info!(
            cert = %self.files.cert.display(),
            client_ca = %self.files.client_ca.display(),
            "reloaded TLS certificate, key and client CA bundle; new connections use them"
        );
        Ok(true)
    }

    /// Calls [`TlsSource::reload`] every `interval` (at least 10 ms) until `stop` turns
    /// true or its sender is dropped. A refused change is logged once (as a warning) and
    /// retried each tick: a rotation caught halfway completes on a later one.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let source = self.clone();
        let mut last_error: Option<String> = None;
        crate::periodic::every_blocking(
            interval.max(MIN_RELOAD_INTERVAL),
            // The files were just loaded.
            crate::periodic::First::AfterInterval,
            stop,
            "TLS reload",
            move || source.reload(),
            move |reloaded| match reloaded {
                Ok(_) => last_error = None,
                Err(e) => {
                    let message = e.to_string();
                    if last_error.as_deref() == Some(message.as_str()) {
                        tracing::debug!(error = %message, "TLS files still unusable");
                    } else {
                        tracing::warn!(
                            error = %message,
                            "TLS files changed but cannot be used (a rotation in progress?); \
                             keeping the certificate in force and retrying"
                        );
                    }
                    last_error = Some(message);
                }
            },
        )
    }
}

/// The application protocols a listener offers in the TLS handshake (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` only: gRPC.
    H2,
    /// `h2` and `http/1.1`: the OAuth HTTP face, whose clients often speak only HTTP/1.1.
    H2Http11,
}

/// One configuration per [`Alpn`], built from the same material.
#[derive(Debug)]
struct Configs {
    h2: Arc<ServerConfig>,
    h2_http11: Arc<ServerConfig>,
}

impl Configs {
    /// `h2` as built, and a copy that also offers `http/1.1`.
    fn new(h2: Arc<ServerConfig>) -> Configs {
        let mut both = (*h2).clone();
        both.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Configs {
            h2,
            h2_http11: Arc::new(both),
        }
    }
}

fn build_config(
    files: &TlsFiles,
    trust_domain: &str,
    provider: &Arc<CryptoProvider>,
    contents: &Contents,
) -> Result<Arc<ServerConfig>, TlsError> {
    let file = |what, path: &Path, message: String| TlsError::File {
        what,
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&contents.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file("tls.cert", &files.cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file("tls.cert", &files.cert, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| {
        let message = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no private key found".to_owned(),
            e => format!("bad PEM: {e}"),
        };
        file("tls.key", &files.key, message)
    })?;

    let mut roots = RootCertStore::empty();
    let mut bundle = 0;
    for ca in CertificateDer::pem_slice_iter(&contents.client_ca) {
        let ca =
            ca.map_err(|e| file("tls.client_ca", &files.client_ca, format!("bad PEM: {e}")))?;
        roots.add(ca).map_err(|e| {
            file(
                "tls.client_ca",
                &files.client_ca,
                format!("certificate {} unusable as a trust anchor: {e}", bundle + 1),
            )
        })?;
        bundle += 1;
    }
    if bundle == 0 {
        return Err(file(
            "tls.client_ca",
            &files.client_ca,
            "no certificate found".into(),
        ));
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| file("tls.client_ca", &files.client_ca, e.to_string()))?;
    let verifier = Arc::new(SvidVerifier {
        inner: webpki,
        trust_domain: trust_domain.to_owned(),
    });

    let certified =
        rustls::sign::CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            },
            e => file("tls.key", &files.key, format!("unusable private key: {e}")),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // Only for material taking effect: a refused rotation retried each tick says nothing.
    warn_if_key_readable_by_others(&files.key);
    Ok(Arc::new(config))
}

/// The key file is the operator's (or SPIRE's, or a Kubernetes secret's): Writ does not
/// refuse it for its mode, as it does its own secrets, but says when others can read it.
fn warn_if_key_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "tls.key is open to group or others; make it readable by the server's user only"
            );
        }
    }
}

/// rustls-webpki's verifier (chain, validity, EKU), then the X.509-SVID checks.
#[derive(Debug)]
struct SvidVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for SvidVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        svid_id(end_entity, &self.trust_domain).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// Who is on the other end of a TLS connection; tonic puts it in each request's
/// extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The SPIFFE ID of the client certificate, verified in the handshake; `None` when the
    /// client presented none.
    pub spiffe_id: Option<SpiffeId>,
    /// When that certificate expires (Unix seconds): a connection outlives its
    /// handshake, so the identity seam refuses requests on it once this has passed.
    pub not_after: Option<i64>,
}

/// A TLS connection over an accepted [`Conn`], which it holds (and with it the
/// connection's place under the transport's caps) until dropped.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<Conn>,
    peer: PeerInfo,
}

impl TlsConn {
    /// The peer, as tonic will report it.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The TLS session (negotiated version, ALPN, peer certificates).
    pub fn session(&self) -> &rustls::ServerConnection {
        self.stream.get_ref().1
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

// As `Conn`: no vectored writes, so h2 copies small frames into its buffer and many
// answers leave in one write, here one TLS record.
crate::transport::buffered_writes!(TlsConn, stream);

/// TLS connections over `conns`. Each handshake runs in its own task with the
/// configuration current when the connection was accepted, and must finish within
/// `handshake_timeout`; one that fails or times out is logged and dropped (its connection
/// closed), so no client can stall the others or stop the server. Errors of `conns` itself
/// (failed accepts) are passed on as they are.
pub fn incoming(
    conns: impl Stream<Item = io::Result<Conn>> + Send + 'static,
    source: Arc<TlsSource>,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<TlsConn>> + Send + 'static {
    incoming_with_alpn(conns, source, handshake_timeout, Alpn::H2)
}

/// [`incoming`] for a listener that offers `alpn` (the same material, certificates and
/// client verification; only the offered protocols differ).
pub fn incoming_with_alpn(
    conns: impl Stream<Item = io::Result<Conn>> + Send + 'static,
    source: Arc<TlsSource>,
    handshake_timeout: Duration,
    alpn: Alpn,
) -> impl Stream<Item = io::Result<TlsConn>> + Send + 'static {
    Handshakes {
        conns: Some(Box::pin(conns)),
        tasks: JoinSet::new(),
        source,
        timeout: handshake_timeout,
        alpn,
    }
}

type Conns = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

struct Handshakes {
    /// `None` once the accepted connections ended.
    conns: Option<Conns>,
    /// Handshakes under way; dropped (aborted) with the stream.
    tasks: JoinSet<Option<TlsConn>>,
    source: Arc<TlsSource>,
    timeout: Duration,
    alpn: Alpn,
}

impl Stream for Handshakes {
    type Item = io::Result<TlsConn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let mut progressed = false;
            if let Some(conns) = this.conns.as_mut() {
                match conns.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(conn))) => {
                        let config = this.source.current_for(this.alpn);
                        let source = this.source.clone();
                        this.tasks
                            .spawn(handshake(conn, config, source, this.timeout));
                        progressed = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        this.conns = None;
                        progressed = true;
                    }
                    Poll::Pending => {}
                }
            }
            match this.tasks.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                Poll::Ready(Some(Ok(None))) => progressed = true,
                Poll::Ready(Some(Err(e))) => {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a TLS handshake task panicked");
                    }
                    progressed = true;
                }
                Poll::Ready(None) if this.conns.is_none() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => {}
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

/// Runs `conn`'s handshake with `config`, `source`'s configuration when `conn` was
/// accepted, and names its peer.
async fn handshake(
    conn: Conn,
    config: Arc<ServerConfig>,
    source: Arc<TlsSource>,
    timeout: Duration,
) -> Option<TlsConn> {
    let remote_addr = conn.connect_info().remote_addr();
    let peer = remote_addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(conn);
    let stream = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            match refused_certificate(&e) {
                Some(why) => tracing::info!(%peer, reason = %why, "TLS client certificate refused"),
                None => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            }
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, timeout_ms = timeout.as_millis() as u64, "TLS handshake timed out");
            return None;
        }
    };
    let (spiffe_id, not_after) = match stream.get_ref().1.peer_certificates() {
        None | Some([]) => (None, None),
        Some([leaf, ..]) => match svid(leaf, source.trust_domain()) {
            Ok((id, not_after)) => (Some(id), Some(not_after)),
            Err(e) => {
                // The verifier accepted this certificate: unreachable, but fail closed.
                tracing::error!(%peer, error = %e, "a verified client certificate has no SPIFFE ID; closing");
                return None;
            }
        },
    };
    Some(TlsConn {
        stream,
        peer: PeerInfo {
            remote_addr,
            spiffe_id,
            not_after,
        },
    })
}

/// Why a client certificate was refused, if that is why the handshake failed.
fn refused_certificate(e: &io::Error) -> Option<String> {
    let rustls::Error::InvalidCertificate(cert) = e.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    Some(match cert {
        CertificateError::Other(OtherError(inner)) => inner.to_string(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, IssuedPem};
    use crate::transport::{self, Limits};
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
    use rustls::ClientConfig;
    use rustls::pki_types::ServerName;
    use std::time::SystemTime;
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_stream::StreamExt;

    const TD: &str = "writ.test";
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    /// Long enough never to fire in a test that expects a handshake to complete.
    const PATIENT: Duration = Duration::from_secs(60);

    fn now() -> SystemTime {
        crate::pki::wall_clock()
    }

    fn new_ca(td: &str) -> Ca {
        Ca::generate("test CA", td, now() - DAY, now() + 30 * DAY).unwrap()
    }

    fn svid(ca: &Ca, id: &str) -> IssuedPem {
        ca.issue_svid(&SpiffeId::parse(id).unwrap(), now() - DAY, now() + DAY)
            .unwrap()
    }

    fn server_cert(ca: &Ca) -> IssuedPem {
        ca.issue_server(&["localhost"], &[], None, now() - DAY, now() + DAY)
            .unwrap()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// A CA and the server's files signed by it, in a temporary directory.
    struct Setup {
        _dir: tempfile::TempDir,
        ca: Ca,
        files: TlsFiles,
        server: IssuedPem,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(TD);
        let server = server_cert(&ca);
        let files = TlsFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server-key.pem"),
            client_ca: dir.path().join("ca.pem"),
        };
        std::fs::write(&files.cert, &server.cert_pem).unwrap();
        std::fs::write(&files.key, &server.key_pem).unwrap();
        std::fs::write(&files.client_ca, ca.cert_pem()).unwrap();
        Setup {
            _dir: dir,
            ca,
            files,
            server,
        }
    }

    /// What the server saw of an accepted connection.
    #[derive(Debug)]
    struct Seen {
        peer: PeerInfo,
        vectored: bool,
        alpn: Option<Vec<u8>>,
    }

    /// Serves TLS on a loopback port: greets each connection with the SPIFFE ID it saw
    /// (`-` for none) and a newline, then echoes. Panics (so later connections fail) if
    /// the stream ever yields an error.
    async fn serve(
        source: Arc<TlsSource>,
        handshake_timeout: Duration,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
        serve_offering(source, handshake_timeout, Alpn::H2).await
    }

    /// [`serve`] offering `alpn`.
    async fn serve_offering(
        source: Arc<TlsSource>,
        handshake_timeout: Duration,
        alpn: Alpn,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            first_byte: PATIENT,
            ..Limits::default()
        };
        let conns = transport::incoming_limited(listener, limits);
        let mut accepted = Box::pin(incoming_with_alpn(conns, source, handshake_timeout, alpn));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(conn) = accepted.next().await {
                let mut conn = conn.expect("failed handshakes are not yielded as errors");
                let _ = tx.send(Seen {
                    peer: conn.peer().clone(),
                    vectored: conn.is_write_vectored(),
                    alpn: conn.session().alpn_protocol().map(<[u8]>::to_vec),
                });
                tokio::spawn(async move {
                    let id = conn
                        .connect_info()
                        .spiffe_id
                        .map_or_else(|| "-".to_owned(), |id| id.to_string());
                    if conn.write_all(format!("{id}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A client that trusts `ca` and presents `identity`.
    fn client(ca: &Ca, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![der(cert)],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    fn with_svid(ca: &Ca, cert: &IssuedPem) -> Arc<ClientConfig> {
        client(ca, Some((&cert.cert_pem, &cert.key_pem)))
    }

    /// Connects and reads the server's greeting: the SPIFFE ID it saw. A refused client
    /// certificate fails here (in TLS 1.3 the client learns of it on its first read).
    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<(Client, String)> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let mut line = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            if tls.read(&mut byte).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if byte[0] == b'\n' {
                return Ok((tls, String::from_utf8(line).unwrap()));
            }
            line.push(byte[0]);
        }
    }

    fn leaf(client: &Client) -> CertificateDer<'static> {
        client.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    async fn echo(client: &mut Client, msg: &[u8]) {
        client.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn spiffe_ids_are_parsed_per_the_spec() {
        let id = SpiffeId::parse("spiffe://writ.local/agents/planner").unwrap();
        assert_eq!(id.trust_domain(), "writ.local");
        assert_eq!(id.path(), "/agents/planner");
        assert_eq!(id.to_string(), "spiffe://writ.local/agents/planner");
        for ok in [
            "spiffe://example.org/a",
            "spiffe://a-b_c.9/Path.With-All_Chars/x...y",
            "spiffe://td/.a/a./...",
        ] {
            assert_eq!(SpiffeId::parse(ok).unwrap().as_str(), ok);
        }
        let long_path = "a".repeat(MAX_ID_LEN - "spiffe://td/".len());
        assert!(SpiffeId::parse(&format!("spiffe://td/{long_path}")).is_ok());
        for (bad, why) in [
            ("SPIFFE://writ.local/a", "lowercase"),
            ("Spiffe://writ.local/a", "lowercase"),
            ("https://writ.local/a", "spiffe://"),
            ("spiffe:/writ.local/a", "spiffe://"),
            ("spiffe://Writ.local/a", "lowercase"),
            ("spiffe://writ.local", "needs a path"),
            ("spiffe://writ.local/", "trailing"),
            ("spiffe:///a", "empty"),
            ("spiffe://writ.local/a/", "trailing"),
            ("spiffe://writ.local/a//b", "empty path segment"),
            ("spiffe://writ.local/a/../b", "`..`"),
            ("spiffe://writ.local/./b", "`.`"),
            ("spiffe://writ.local/..", "`..`"),
            ("spiffe://writ.local/a?x=1", "query"),
            ("spiffe://writ.local/a#frag", "fragment"),
            ("spiffe://writ.local:8443/a", "port"),
            ("spiffe://user@writ.local/a", "user info"),
            ("spiffe://writ.local/a%20b", "percent"),
            ("spiffe://writ.local/a b", "may contain only"),
            ("spiffe://writ.local/é", "may contain only"),
            ("spiffe://wr!t.local/a", "may contain only"),
        ] {
            let err = SpiffeId::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let too_long = format!("spiffe://td/{long_path}b");
        let err = SpiffeId::parse(&too_long).unwrap_err().to_string();
        assert!(err.contains("longer than 256"), "{err}");
        assert_eq!(
            SpiffeId::from_parts("writ.local", "/writ").unwrap(),
            SpiffeId::from_parts("writ.local", "writ").unwrap()
        );
        assert!(validate_trust_domain("writ.local").is_ok());
        assert!(validate_trust_domain("Writ.local").is_err());
        assert!(validate_trust_domain("").is_err());
    }

    /// The X.509-SVID checks on their own, for what rustls-webpki does not look at.
    #[test]
    fn only_x509_svids_of_the_trust_domain_pass() {
        let ca = new_ca(TD);
        let good = svid(&ca, "spiffe://writ.test/agents/a");
        assert_eq!(
            svid_id(&der(&good.cert_pem), TD).unwrap().as_str(),
            "spiffe://writ.test/agents/a"
        );
        let foreign = svid(&ca, "spiffe://other.test/agents/a");
        assert!(matches!(
            svid_id(&der(&foreign.cert_pem), TD),
            Err(TlsError::ForeignTrustDomain { .. })
        ));
        let refused = |params: CertificateParams, why: &str| {
            let cert = ca.sign(params).unwrap();
            let err = svid_id(&der(&cert.cert_pem), TD).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        };
        let uri = |u: &str| SanType::URI(u.try_into().unwrap());
        let base = || {
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![uri("spiffe://writ.test/a")];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p
        };
        let mut p = base();
        p.subject_alt_names.push(uri("spiffe://writ.test/b"));
        refused(p, "2 URI SANs");
        let mut p = base();
        p.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())];
        refused(p, "no URI SAN");
        let mut p = base();
        p.subject_alt_names = vec![];
        refused(p, "no subjectAltName");
        let mut p = base();
        p.subject_alt_names = vec![uri("spiffe://writ.test/a/../b")];
        refused(p, "invalid SPIFFE ID");
        let mut p = base();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        refused(p, "CA certificate");
        let mut p = base();
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        refused(p, "lacks digitalSignature");
        let mut p = base();
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        refused(p, "keyCertSign");
        // Without a keyUsage extension, an SVID passes (the brief's "if present").
        let mut p = base();
        p.key_usages = vec![];
        let cert = ca.sign(p).unwrap();
        assert!(svid_id(&der(&cert.cert_pem), TD).is_ok());
        // And the CA's own certificate is no SVID.
        assert!(svid_id(ca.cert_der(), TD).is_err());
    }

    #[tokio::test]
    async fn a_good_svid_is_the_peers_identity_and_none_is_fine() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (addr, mut seen) = serve(source, PATIENT).await;
        let cert = svid(&s.ca, "spiffe://writ.test/agents/planner");
        let (client_conn, greeting) = connect(addr, with_svid(&s.ca, &cert)).await.unwrap();
        assert_eq!(greeting, "spiffe://writ.test/agents/planner");
        let server_side = seen.recv().await.unwrap();
        assert_eq!(
            server_side.peer.spiffe_id.as_ref().map(SpiffeId::as_str),
            Some("spiffe://writ.test/agents/planner")
        );
        assert_eq!(
            server_side.peer.remote_addr,
            Some(client_conn.get_ref().0.local_addr().unwrap())
        );
        // The identity seam stops trusting the connection once its certificate expires.
        let presented = der(&cert.cert_pem);
        let (_, presented) = x509_parser::parse_x509_certificate(&presented).unwrap();
        assert_eq!(
            server_side.peer.not_after,
            Some(presented.validity().not_after.timestamp())
        );
        assert!(!server_side.vectored, "writes stay buffered, as on Conn");
        assert_eq!(server_side.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(leaf(&client_conn), der(&s.server.cert_pem));

        let (_anonymous, greeting) = connect(addr, client(&s.ca, None)).await.unwrap();
        assert_eq!(greeting, "-");
        let anonymous = seen.recv().await.unwrap().peer;
        assert!(anonymous.spiffe_id.is_none());
        assert_eq!(anonymous.not_after, None);
    }

    /// A client offering `protocols`.
    fn offering(ca: &Ca, protocols: &[&[u8]]) -> Arc<ClientConfig> {
        let mut config = (*client(ca, None)).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// gRPC's listener offers only `h2`; the HTTP face's also `http/1.1`, from the same
    /// material, and a reload swaps both.
    #[tokio::test]
    async fn the_http_face_offers_http1_beside_h2_and_grpc_does_not() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (http, mut seen) = serve_offering(source.clone(), PATIENT, Alpn::H2Http11).await;
        connect(http, offering(&s.ca, &[b"http/1.1"]))
            .await
            .unwrap();
        assert_eq!(
            seen.recv().await.unwrap().alpn.as_deref(),
            Some(&b"http/1.1"[..])
        );
        connect(http, offering(&s.ca, &[b"h2", b"http/1.1"]))
            .await
            .unwrap();
        assert_eq!(seen.recv().await.unwrap().alpn.as_deref(), Some(&b"h2"[..]));
        let (grpc, _) = serve(source.clone(), PATIENT).await;
        assert!(
            connect(grpc, offering(&s.ca, &[b"http/1.1"]))
                .await
                .is_err(),
            "gRPC's listener must not agree to HTTP/1.1"
        );
        let before = (source.current(), source.current_for(Alpn::H2Http11));
        let renewed = server_cert(&s.ca);
        std::fs::write(&s.files.cert, &renewed.cert_pem).unwrap();
        std::fs::write(&s.files.key, &renewed.key_pem).unwrap();
        assert!(source.reload().unwrap());
        assert!(!Arc::ptr_eq(&before.0, &source.current()));
        assert!(!Arc::ptr_eq(&before.1, &source.current_for(Alpn::H2Http11)));
        let (mut c, _) = connect(http, offering(&s.ca, &[b"http/1.1"]))
            .await
            .unwrap();
        let presented = c.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(presented, der(&renewed.cert_pem));
        c.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn client_certificates_that_are_not_good_svids_fail_the_handshake() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (addr, mut seen) = serve(source, PATIENT).await;
        let other_ca = new_ca(TD);
        let expired =
            s.ca.issue_svid(
                &SpiffeId::parse("spiffe://writ.test/old").unwrap(),
                now() - 3 * DAY,
                now() - DAY,
            )
            .unwrap();
        let uri = |u: &str| SanType::URI(u.try_into().unwrap());
        let mut two_uris = CertificateParams::default();
        two_uris.subject_alt_names = vec![uri("spiffe://writ.test/a"), uri("spiffe://writ.test/b")];
        two_uris.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut no_uri = CertificateParams::default();
        no_uri.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())];
        no_uri.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let ca_key = s.ca.key_pem();
        let cases: Vec<(&str, Arc<ClientConfig>)> = vec![
            (
                "another CA",
                with_svid(&s.ca, &svid(&other_ca, "spiffe://writ.test/a")),
            ),
            (
                "another trust domain",
                with_svid(&s.ca, &svid(&s.ca, "spiffe://other.test/a")),
            ),
            ("expired", with_svid(&s.ca, &expired)),
            (
                "two URI SANs",
                with_svid(&s.ca, &s.ca.sign(two_uris).unwrap()),
            ),
            ("no URI SAN", with_svid(&s.ca, &s.ca.sign(no_uri).unwrap())),
            (
                "the CA's own certificate",
                client(&s.ca, Some((s.ca.cert_pem(), &ca_key))),
            ),
        ];
        for (case, config) in cases {
            let err = match connect(addr, config).await {
                Ok((_, id)) => panic!("{case}: accepted as {id:?}"),
                Err(e) => e,
            };
            // Refused in the handshake (the server's alert), not dropped after it.
            let alert = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>());
            assert!(
                matches!(alert, Some(rustls::Error::AlertReceived(_))),
                "{case}: {err}"
            );
        }
        // The server is still serving, and yielded only this one.
        let good = svid(&s.ca, "spiffe://writ.test/good");
        let (_c, greeting) = connect(addr, with_svid(&s.ca, &good)).await.unwrap();
        assert_eq!(greeting, "spiffe://writ.test/good");
        let first = seen.recv().await.unwrap();
        assert_eq!(
            first.peer.spiffe_id.map(|i| i.to_string()).as_deref(),
            Some("spiffe://writ.test/good")
        );
    }

    #[tokio::test]
    async fn reload_swaps_the_certificate_for_new_connections_only() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (addr, _seen) = serve(source.clone(), PATIENT).await;
        let config = client(&s.ca, None);
        let (mut old, _) = connect(addr, config.clone()).await.unwrap();
        assert_eq!(leaf(&old), der(&s.server.cert_pem));
        assert!(!source.reload().unwrap(), "nothing changed yet");

        let next = server_cert(&s.ca);
        std::fs::write(&s.files.key, &next.key_pem).unwrap();
        std::fs::write(&s.files.cert, &next.cert_pem).unwrap();
        assert!(source.reload().unwrap());
        assert!(!source.reload().unwrap(), "same content: no new config");
        let (new, _) = connect(addr, config.clone()).await.unwrap();
        assert_eq!(leaf(&new), der(&next.cert_pem));
        echo(&mut old, b"still here").await;
        assert_eq!(leaf(&old), der(&s.server.cert_pem));

        // Garbage: refused, the certificate in force stays.
        std::fs::write(&s.files.cert, "not a certificate\n").unwrap();
        let err = source.reload().unwrap_err().to_string();
        assert!(err.contains("tls.cert"), "{err}");
        assert!(err.contains(&s.files.cert.display().to_string()), "{err}");
        assert!(err.contains("no certificate found"), "{err}");
        let (c, _) = connect(addr, config.clone()).await.unwrap();
        assert_eq!(leaf(&c), der(&next.cert_pem));

        // Half rotated: a new certificate with the old key.
        let third = server_cert(&s.ca);
        std::fs::write(&s.files.cert, &third.cert_pem).unwrap();
        let err = source.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match"), "{err}");
        let (c, _) = connect(addr, config.clone()).await.unwrap();
        assert_eq!(leaf(&c), der(&next.cert_pem));

        // A bad bundle is refused too.
        std::fs::write(&s.files.cert, &next.cert_pem).unwrap();
        std::fs::write(&s.files.client_ca, "").unwrap();
        let err = source.reload().unwrap_err().to_string();
        assert!(err.contains("tls.client_ca"), "{err}");
        let (c, _) = connect(addr, config).await.unwrap();
        assert_eq!(leaf(&c), der(&next.cert_pem));
    }

    #[tokio::test]
    async fn the_reloader_waits_out_a_half_rotation() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (addr, _seen) = serve(source.clone(), PATIENT).await;
        let (stop, stopped) = watch::channel(false);
        let reloader = source.spawn_reloader(Duration::from_millis(20), stopped);
        let config = client(&s.ca, None);
        let next = server_cert(&s.ca);
        // The certificate first: until the key follows, the old pair stays in force.
        std::fs::write(&s.files.cert, &next.cert_pem).unwrap();
        let (c, _) = connect(addr, config.clone()).await.unwrap();
        assert_eq!(leaf(&c), der(&s.server.cert_pem));
        std::fs::write(&s.files.key, &next.key_pem).unwrap();
        tokio::time::timeout(PATIENT, async {
            loop {
                let (c, _) = connect(addr, config.clone()).await.unwrap();
                if leaf(&c) == der(&next.cert_pem) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the reloader picked up the completed rotation");
        stop.send(true).unwrap();
        tokio::time::timeout(PATIENT, reloader)
            .await
            .expect("the reloader stops when told")
            .unwrap();
    }

    /// Session resumption is off: a client that offers to resume still runs a full
    /// handshake, so its certificate is checked against the configuration in force.
    #[tokio::test]
    async fn every_connection_runs_a_full_handshake() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (addr, _seen) = serve(source, PATIENT).await;
        let cert = svid(&s.ca, "spiffe://writ.test/agents/again");
        // One client config, with rustls' default session cache: it would resume if the
        // server let it.
        let config = with_svid(&s.ca, &cert);
        for _ in 0..3 {
            let (c, greeting) = connect(addr, config.clone()).await.unwrap();
            assert_eq!(greeting, "spiffe://writ.test/agents/again");
            assert_eq!(
                c.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full)
            );
        }
    }

    /// Handshakes run concurrently: a client that connects and says nothing does not hold
    /// up the next one (whose handshake completes while the silent one is still open).
    #[tokio::test]
    async fn a_silent_client_does_not_block_other_handshakes() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (addr, _seen) = serve(source, PATIENT / 2).await;
        let silent = TcpStream::connect(addr).await.unwrap();
        let cert = svid(&s.ca, "spiffe://writ.test/b");
        let (_c, greeting) = connect(addr, with_svid(&s.ca, &cert)).await.unwrap();
        assert_eq!(greeting, "spiffe://writ.test/b");
        let mut buf = [0u8; 1];
        let still_open = silent.try_read(&mut buf);
        assert!(
            matches!(&still_open, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the silent client's handshake should still be pending, not over before the other \
             ran: {still_open:?}"
        );
    }

    #[tokio::test]
    async fn a_handshake_that_does_not_finish_in_time_is_dropped() {
        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let (addr, _seen) = serve(source, Duration::from_millis(100)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(PATIENT, silent.read(&mut buf))
            .await
            .expect("the server closed the silent connection");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        // And serves the next client.
        let (_c, greeting) = connect(addr, client(&s.ca, None)).await.unwrap();
        assert_eq!(greeting, "-");
    }

    #[test]
    fn load_names_the_file_that_is_wrong() {
        let s = setup();
        let missing = TlsFiles {
            key: s.files.key.with_file_name("nope.pem"),
            ..s.files.clone()
        };
        let err = TlsSource::load(missing, TD).unwrap_err().to_string();
        assert!(
            err.starts_with("tls.key ") && err.contains("nope.pem"),
            "{err}"
        );
        std::fs::write(&s.files.key, "").unwrap();
        let err = TlsSource::load(s.files.clone(), TD)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no private key found"), "{err}");
        let other = server_cert(&s.ca);
        std::fs::write(&s.files.key, &other.key_pem).unwrap();
        let err = TlsSource::load(s.files.clone(), TD)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("private key does not match certificate"),
            "{err}"
        );
        std::fs::write(&s.files.key, &s.server.key_pem).unwrap();
        // A bundle past the size cap is refused, not read whole.
        let huge = vec![b'#'; usize::try_from(MAX_PEM_BYTES).unwrap() + 1];
        std::fs::write(&s.files.client_ca, huge).unwrap();
        let err = TlsSource::load(s.files.clone(), TD)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tls.client_ca ") && err.contains("larger than"),
            "{err}"
        );
        std::fs::write(&s.files.client_ca, s.ca.cert_pem()).unwrap();
        assert!(TlsSource::load(s.files.clone(), "Not.Valid").is_err());
        TlsSource::load(s.files, TD).unwrap();
    }

    /// tonic puts [`PeerInfo`] in the request's extensions, and its TLS client (ALPN h2)
    /// talks to this listener.
    #[tokio::test]
    async fn tonic_hands_the_peer_info_to_services() {
        use tonic::codegen::http;
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

        /// Answers every call with UNAUTHENTICATED carrying the caller's SPIFFE ID.
        #[derive(Clone)]
        struct WhoAmI;
        impl tonic::server::NamedService for WhoAmI {
            const NAME: &'static str = "writ.v1.TokenService";
        }
        impl tonic::codegen::Service<http::Request<tonic::body::Body>> for WhoAmI {
            type Response = http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
                let id = req
                    .extensions()
                    .get::<PeerInfo>()
                    .map(|p| p.spiffe_id.as_ref().map_or("-".into(), |i| i.to_string()))
                    .unwrap_or_else(|| "no PeerInfo".into());
                std::future::ready(Ok(tonic::Status::unauthenticated(id).into_http()))
            }
        }

        let s = setup();
        let source = TlsSource::load(s.files.clone(), TD).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = incoming(transport::incoming(listener), source, PATIENT);
        let (stop, mut stopped) = watch::channel(false);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WhoAmI)
                .serve_with_incoming_shutdown(conns, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }),
        );
        let cert = svid(&s.ca, "spiffe://writ.test/agents/caller");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(s.ca.cert_pem()))
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = writ_api::pb::token_service_client::TokenServiceClient::new(channel);
        let status = grpc
            .validate(writ_api::pb::ValidateRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "spiffe://writ.test/agents/caller");
        stop.send(true).unwrap();
        drop(grpc);
        server.await.unwrap().unwrap();
    }
}
