//! A local certificate authority for development and small deployments without SPIRE.
//!
//! On first start the server creates, under `<data_dir>/tls/`, a CA (10 years) and a server
//! certificate signed by it (90 days) naming `localhost`, `127.0.0.1`, `::1` and
//! `spiffe://<trust-domain>/writ`; `writ certs issue` signs X.509-SVIDs for workloads with
//! the same CA. Clients trust `ca.pem`; the server trusts the same file for client
//! certificates. The server certificate is re-issued when it has less than 30 days left or
//! names another trust domain; the CA is never replaced (every certificate it issued
//! depends on it), and one made for another trust domain is refused.
//!
//! Keys are secrets and follow `secrets.rs`: the directory is owner-only (0700), key files
//! are 0600, created under a temporary name and linked into place without replacing an
//! existing file (a renewed server key replaces the old one by rename, 0600 from the
//! start). Certificates are public (0644). All keys are ECDSA P-256, fresh per
//! certificate, with random serial numbers.

use crate::secrets::{self, SecretsError};
use crate::tls::{SpiffeId, TlsError, TlsFiles, uri_names, validate_trust_domain};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls_pki_types::pem::PemObject;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Directory of the development CA and server certificate inside the data directory.
pub const TLS_DIR: &str = "tls";
/// The CA certificate (PEM): what clients trust, and the server's client CA bundle.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (PEM, 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The server certificate (PEM).
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The server certificate's private key (PEM, 0600).
pub const SERVER_KEY_FILE: &str = "server-key.pem";
/// SPIFFE path of the development server certificate.
pub const SERVER_SPIFFE_PATH: &str = "/writ";

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Lifetime of a new development CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Lifetime of a new development server certificate.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// A server certificate with less left than this is re-issued at start.
pub const SERVER_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// New certificates are valid from this long before their issuing, for clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why a certificate or key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A key file (or the directory) could not be created, read or trusted.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CA certificate and key given as text are unusable.
    #[error("CA certificate and key: {0}")]
    Ca(String),
    /// The development CA belongs to another trust domain.
    #[error(
        "{path}: the development CA is for trust domain {found:?}, but trust_domain is {expected:?}; \
         set trust_domain back, or move {dir} away to create a new CA (clients must then trust the new ca.pem)"
    )]
    TrustDomain {
        /// The CA certificate.
        path: PathBuf,
        /// The CA's directory.
        dir: PathBuf,
        /// The CA's trust domain.
        found: String,
        /// The configured one.
        expected: String,
    },
    /// There is no development CA to sign with.
    #[error(
        "{dir}: no development CA ({CA_CERT_FILE}, {CA_KEY_FILE}); start the server once to create it"
    )]
    NoCa {
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A file that is not to be overwritten exists.
    #[error("{path} already exists; remove it or ask to replace it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// An argument is not acceptable.
    #[error("{0}")]
    Argument(String),
    /// A SPIFFE ID or trust domain is not valid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// rcgen could not make a key or certificate.
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A new certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedPem {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8): a secret.
    pub key_pem: String,
}

impl fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

/// A certificate authority: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    trust_domain: Option<String>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA with a fresh P-256 key, named `common_name`, carrying the URI
    /// SAN `spiffe://<trust_domain>` (as SPIFFE bundles' CAs do), which may issue end-entity
    /// certificates only (path length 0).
    pub fn generate(
        common_name: &str,
        trust_domain: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Ca::self_signed(common_name, trust_domain, not_before, not_after, key)
    }

    fn self_signed(
        common_name: &str,
        trust_domain: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        key: KeyPair,
    ) -> Result<Ca, PkiError> {
        validate_trust_domain(trust_domain)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = vec![uri(&format!("spiffe://{trust_domain}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its certificate and key (PEM). The key must be the certificate's, and the
    /// certificate a CA's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let bad = |m: String| PkiError::Ca(m);
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("no certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("no usable key: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| bad(format!("unparseable certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(bad(
                "the certificate is not a CA's (basicConstraints)".into()
            ));
        }
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(bad("the key is not the certificate's".into()));
        }
        let trust_domain = uri_sans(&cert)
            .into_iter()
            .find_map(|u| u.strip_prefix("spiffe://").map(str::to_owned));
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Ca {
            cert_pem: pem("CERTIFICATE", &cert_der),
            cert_der,
            issuer,
            trust_domain,
        })
    }

    /// The certificate (PEM): what clients and servers trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key (PKCS#8 PEM). A secret: whoever holds it can mint any identity of
    /// the trust domain.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The trust domain of the CA's `spiffe://` URI SAN, if it has one.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// An X.509-SVID for `spiffe_id`: its only SAN is the ID's URI, EKU clientAuth and
    /// serverAuth, key usage digitalSignature, not a CA; fresh P-256 key, random serial.
    pub fn issue_svid(
        &self,
        spiffe_id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedPem, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("Writ workload");
        params.subject_alt_names = vec![uri(spiffe_id.as_str())?];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        self.sign(params)
    }

    /// A server certificate for `dns_names` and `ips` (EKU serverAuth), and, with
    /// `spiffe_id`, an X.509-SVID too (its URI SAN, EKU clientAuth as well).
    pub fn issue_server(
        &self,
        dns_names: &[&str],
        ips: &[IpAddr],
        spiffe_id: Option<&SpiffeId>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedPem, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(dns_names.first().copied().unwrap_or("Writ server"));
        for dns in dns_names {
            let dns = Ia5String::try_from(*dns)
                .map_err(|e| PkiError::Argument(format!("DNS name {dns:?}: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(id) = spiffe_id {
            params.subject_alt_names.push(uri(id.as_str())?);
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        self.sign(params)
    }

    /// Signs `params` for a fresh P-256 key with a random serial number (basicConstraints
    /// cA false unless `params` says otherwise).
    pub(crate) fn sign(&self, mut params: CertificateParams) -> Result<IssuedPem, PkiError> {
        if params.is_ca == IsCa::NoCa {
            params.is_ca = IsCa::ExplicitNoCa;
        }
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Writ");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn uri(u: &str) -> Result<SanType, PkiError> {
    Ia5String::try_from(u)
        .map(SanType::URI)
        .map_err(|e| PkiError::Argument(format!("URI {u:?}: {e}")))
}

/// 16 random bytes, positive and of fixed length (RFC 5280: at most 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn uri_sans<'a>(cert: &x509_parser::certificate::X509Certificate<'a>) -> Vec<&'a str> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => uri_names(&san.value.general_names),
        _ => Vec::new(),
    }
}

/// The development TLS files under `<data_dir>/tls/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevTls {
    /// The CA certificate: clients trust it; the server trusts it for client certificates.
    pub ca_cert: PathBuf,
    /// The CA's key (0600).
    pub ca_key: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server certificate's key (0600).
    pub server_key: PathBuf,
}

impl DevTls {
    fn in_dir(dir: &Path) -> DevTls {
        DevTls {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
        }
    }

    /// The server's certificate and key, with the CA as the client CA bundle.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: self.ca_cert.clone(),
        }
    }
}

/// Creates the development CA and server certificate on first start, reuses them after,
/// and re-issues the server certificate when it has less than [`SERVER_RENEW_BEFORE`]
/// left, names another trust domain, or does not match the CA or its key. Refuses a CA of
/// another trust domain. Call it holding the data directory's lock (blocking file I/O).
pub fn load_or_create_dev_tls(data_dir: &Path, trust_domain: &str) -> Result<DevTls, PkiError> {
    validate_trust_domain(trust_domain)?;
    let dir = data_dir.join(TLS_DIR);
    secrets::ensure_private_dir(&dir)?;
    let files = DevTls::in_dir(&dir);
    let ca = load_or_create_ca(&dir, &files, trust_domain)?;
    if let Some(reason) = server_cert_renewal(&ca, &files, trust_domain)? {
        let id = SpiffeId::from_parts(trust_domain, SERVER_SPIFFE_PATH)?;
        let now = wall_clock();
        let issued = ca.issue_server(
            &["localhost"],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            Some(&id),
            now - BACKDATE,
            now + SERVER_VALIDITY,
        )?;
        // Key first: a crash between the two leaves a mismatch, re-issued at next start.
        replace_file(&files.server_key, &issued.key_pem, 0o600)?;
        replace_file(&files.server_cert, &issued.cert_pem, 0o644)?;
        tracing::info!(path = %files.server_cert.display(), %reason, "issued the development server certificate");
    }
    Ok(files)
}

fn exists(path: &Path) -> Result<bool, PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

fn load_or_create_ca(dir: &Path, files: &DevTls, trust_domain: &str) -> Result<Ca, PkiError> {
    let common_name = format!("Writ development CA ({trust_domain})");
    let now = wall_clock();
    match (exists(&files.ca_cert)?, exists(&files.ca_key)?) {
        (false, false) => {
            let ca = Ca::generate(
                &common_name,
                trust_domain,
                now - BACKDATE,
                now + CA_VALIDITY,
            )?;
            // Key first, never replacing one: with the cert missing, the next start
            // re-signs a certificate for whatever key is there.
            if secrets::install_private(&files.ca_key, &ca.key_pem())? {
                install_new(&files.ca_cert, ca.cert_pem(), 0o644)?;
                tracing::info!(path = %files.ca_cert.display(), "created the development CA");
            }
        }
        (false, true) => {
            // A start that crashed between writing the key and the certificate.
            let key = KeyPair::from_pem(&secrets::read_private(&files.ca_key)?).map_err(|e| {
                PkiError::Invalid {
                    path: files.ca_key.clone(),
                    message: format!("no usable key: {e}"),
                }
            })?;
            let ca = Ca::self_signed(
                &common_name,
                trust_domain,
                now - BACKDATE,
                now + CA_VALIDITY,
                key,
            )?;
            install_new(&files.ca_cert, ca.cert_pem(), 0o644)?;
            tracing::warn!(path = %files.ca_cert.display(), "the development CA certificate was missing; made one for the existing key");
        }
        (true, false) => {
            return Err(PkiError::Invalid {
                path: files.ca_key.clone(),
                message: format!(
                    "missing, but {} exists: restore the key, or move {} away to create a new CA",
                    files.ca_cert.display(),
                    dir.display()
                ),
            });
        }
        (true, true) => {}
    }
    load_ca(dir, files, trust_domain)
}

/// The CA in `dir`, checked to be of `trust_domain` and still valid.
fn load_ca(dir: &Path, files: &DevTls, trust_domain: &str) -> Result<Ca, PkiError> {
    if !exists(&files.ca_cert)? && !exists(&files.ca_key)? {
        return Err(PkiError::NoCa {
            dir: dir.to_owned(),
        });
    }
    let cert_pem = fs::read_to_string(&files.ca_cert).map_err(io(&files.ca_cert))?;
    let key_pem = secrets::read_private(&files.ca_key)?;
    let ca = Ca::from_pem(&cert_pem, &key_pem).map_err(|e| PkiError::Invalid {
        path: files.ca_cert.clone(),
        message: e.to_string(),
    })?;
    if let Some(found) = ca.trust_domain()
        && found != trust_domain
    {
        return Err(PkiError::TrustDomain {
            path: files.ca_cert.clone(),
            dir: dir.to_owned(),
            found: found.to_owned(),
            expected: trust_domain.to_owned(),
        });
    }
    let (_, cert) =
        x509_parser::parse_x509_certificate(ca.cert_der()).map_err(|e| PkiError::Invalid {
            path: files.ca_cert.clone(),
            message: e.to_string(),
        })?;
    if cert.validity().not_after.timestamp() <= unix_now() {
        return Err(PkiError::Invalid {
            path: files.ca_cert.clone(),
            message: format!(
                "the development CA expired; move {} away to create a new one",
                dir.display()
            ),
        });
    }
    Ok(ca)
}

/// The wall clock, read where the server reads it (`service::now_micros`).
pub(crate) fn wall_clock() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(crate::service::now_micros())
}

fn unix_now() -> i64 {
    i64::try_from(crate::service::now_secs()).unwrap_or(i64::MAX)
}

/// Why the server certificate must be (re-)issued, or `None` if it is good. A key file
/// that others can read or another user owns is an error, not a reason.
fn server_cert_renewal(
    ca: &Ca,
    files: &DevTls,
    trust_domain: &str,
) -> Result<Option<String>, PkiError> {
    if !exists(&files.server_cert)? || !exists(&files.server_key)? {
        return Ok(Some("none yet".into()));
    }
    let key_pem = secrets::read_private(&files.server_key)?;
    let Ok(cert_pem) = fs::read(&files.server_cert) else {
        return Ok(Some("the certificate is unreadable".into()));
    };
    let Ok(cert_der) = CertificateDer::from_pem_slice(&cert_pem) else {
        return Ok(Some("the certificate is unreadable".into()));
    };
    let Ok(key) = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) else {
        return Ok(Some("the key is unreadable".into()));
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if rustls::sign::CertifiedKey::from_der(vec![cert_der.clone()], key, &provider).is_err() {
        return Ok(Some("the key does not match the certificate".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(ca.cert_der().clone()).is_err() {
        return Ok(Some("the CA is unusable as a trust anchor".into()));
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| PkiError::Invalid {
                path: files.ca_cert.clone(),
                message: e.to_string(),
            })?;
    let localhost =
        ServerName::try_from("localhost").map_err(|e| PkiError::Argument(e.to_string()))?;
    let now = UnixTime::since_unix_epoch(Duration::from_secs(unix_now().max(0).unsigned_abs()));
    if let Err(e) = verifier.verify_server_cert(&cert_der, &[], &localhost, &[], now) {
        return Ok(Some(format!("it does not verify: {e}")));
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&cert_der) else {
        return Ok(Some("the certificate is unreadable".into()));
    };
    let expected = format!("spiffe://{trust_domain}{SERVER_SPIFFE_PATH}");
    if uri_sans(&cert) != [expected.as_str()] {
        return Ok(Some(format!("it does not name {expected}")));
    }
    let left = cert.validity().not_after.timestamp() - unix_now();
    if left < SERVER_RENEW_BEFORE.as_secs() as i64 {
        return Ok(Some(format!(
            "{} days left",
            left.max(0) / DAY.as_secs() as i64
        )));
    }
    Ok(None)
}

/// Writes `content` to a new temporary file beside `path` (mode `mode` from its creation),
/// synced. Returns its name.
fn write_temp(path: &Path, content: &str, mode: u32) -> Result<PathBuf, PkiError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(content.as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    Ok(tmp)
}

fn sync_dir(path: &Path) -> Result<(), PkiError> {
    match path.parent() {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir)),
        None => Ok(()),
    }
}

/// Replaces `path` atomically by `content` (mode `mode` at every moment).
fn replace_file(path: &Path, content: &str, mode: u32) -> Result<(), PkiError> {
    let tmp = write_temp(path, content, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    sync_dir(path)
}

/// Installs `content` at `path` unless it exists (hard link: never replaces). Returns
/// whether it did.
fn install_new(path: &Path, content: &str, mode: u32) -> Result<bool, PkiError> {
    let tmp = write_temp(path, content, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    let installed = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io(path)(e)),
    };
    sync_dir(path)?;
    Ok(installed)
}

/// Files written by [`issue_client`].
#[derive(Clone, Debug)]
pub struct IssuedFiles {
    /// The certificate's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
}

/// Signs an X.509-SVID for `spiffe://<trust_domain>/<path>`, valid for `validity` from
/// now, with the development CA in `<data_dir>/tls` (which must exist), and writes
/// `<out_dir>/<file_stem>.pem` and `<out_dir>/<file_stem>-key.pem` (0600), creating
/// `out_dir` (0700) if needed. Existing files are refused unless `replace`.
pub fn issue_client(
    data_dir: &Path,
    trust_domain: &str,
    path: &str,
    validity: Duration,
    out_dir: &Path,
    file_stem: &str,
    replace: bool,
) -> Result<IssuedFiles, PkiError> {
    validate_trust_domain(trust_domain)?;
    if file_stem.is_empty() || file_stem.starts_with('.') || file_stem.contains('/') {
        return Err(PkiError::Argument(format!(
            "file name {file_stem:?}: must be non-empty, without `/`, not starting with `.`"
        )));
    }
    if validity.is_zero() {
        return Err(PkiError::Argument("validity must be positive".into()));
    }
    let spiffe_id = SpiffeId::from_parts(trust_domain, path)?;
    let dir = data_dir.join(TLS_DIR);
    let ca = load_ca(&dir, &DevTls::in_dir(&dir), trust_domain)?;
    let now = wall_clock();
    let not_after = now
        .checked_add(validity)
        .ok_or_else(|| PkiError::Argument("validity too long".into()))?;
    let issued = ca.issue_svid(&spiffe_id, now - BACKDATE, not_after)?;

    if !out_dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out_dir)
            .map_err(io(out_dir))?;
    }
    let cert = out_dir.join(format!("{file_stem}.pem"));
    let key = out_dir.join(format!("{file_stem}-key.pem"));
    if replace {
        replace_file(&key, &issued.key_pem, 0o600)?;
        replace_file(&cert, &issued.cert_pem, 0o644)?;
    } else {
        for p in [&key, &cert] {
            if exists(p)? {
                return Err(PkiError::Exists { path: p.clone() });
            }
        }
        if !secrets::install_private(&key, &issued.key_pem)? {
            return Err(PkiError::Exists { path: key });
        }
        if !install_new(&cert, &issued.cert_pem, 0o644)? {
            return Err(PkiError::Exists { path: cert });
        }
    }
    Ok(IssuedFiles {
        spiffe_id,
        cert,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::extensions::GeneralName;

    const TD: &str = "writ.test";

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn not_after(pem: &[u8]) -> i64 {
        let der = CertificateDer::from_pem_slice(pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.validity().not_after.timestamp()
    }

    #[test]
    fn the_dev_ca_is_created_private_and_reused() {
        let data = tempfile::tempdir().unwrap();
        let files = load_or_create_dev_tls(data.path(), TD).unwrap();
        let dir = data.path().join(TLS_DIR);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&files.ca_key), 0o600);
        assert_eq!(mode(&files.server_key), 0o600);
        assert_eq!(files, DevTls::in_dir(&dir));
        let ca_cert = fs::read(&files.ca_cert).unwrap();
        let ca_key = fs::read(&files.ca_key).unwrap();
        let server_cert = fs::read(&files.server_cert).unwrap();

        let again = load_or_create_dev_tls(data.path(), TD).unwrap();
        assert_eq!(again, files);
        assert_eq!(fs::read(&files.ca_cert).unwrap(), ca_cert);
        assert_eq!(fs::read(&files.ca_key).unwrap(), ca_key);
        assert_eq!(fs::read(&files.server_cert).unwrap(), server_cert);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

        // The CA is valid for ten years, the server certificate for 90 days, and names
        // what a local client dials.
        let ca = Ca::from_pem(
            &String::from_utf8(ca_cert).unwrap(),
            &String::from_utf8(ca_key).unwrap(),
        )
        .unwrap();
        assert_eq!(ca.trust_domain(), Some(TD));
        let years = (not_after(ca.cert_pem().as_bytes()) - unix_now()) / (365 * 86_400);
        assert!((9..=10).contains(&years), "{years}");
        let days = (not_after(&server_cert) - unix_now()) / 86_400;
        assert!((89..=90).contains(&days), "{days}");
        let der = CertificateDer::from_pem_slice(&server_cert).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets()),
                GeneralName::URI("spiffe://writ.test/writ"),
            ]
        );
        crate::tls::TlsSource::load(files.server_files(), TD).unwrap();
    }

    #[test]
    fn an_expiring_server_certificate_is_reissued() {
        let data = tempfile::tempdir().unwrap();
        let files = load_or_create_dev_tls(data.path(), TD).unwrap();
        let ca_cert = fs::read(&files.ca_cert).unwrap();
        let ca = Ca::from_pem(
            &fs::read_to_string(&files.ca_cert).unwrap(),
            &fs::read_to_string(&files.ca_key).unwrap(),
        )
        .unwrap();
        let id = SpiffeId::from_parts(TD, SERVER_SPIFFE_PATH).unwrap();
        let now = wall_clock();
        let soon = ca
            .issue_server(&["localhost"], &[], Some(&id), now - DAY, now + 10 * DAY)
            .unwrap();
        replace_file(&files.server_key, &soon.key_pem, 0o600).unwrap();
        replace_file(&files.server_cert, &soon.cert_pem, 0o644).unwrap();

        load_or_create_dev_tls(data.path(), TD).unwrap();
        let renewed = fs::read(&files.server_cert).unwrap();
        assert_ne!(renewed, soon.cert_pem.as_bytes());
        assert!((not_after(&renewed) - unix_now()) / 86_400 >= 89);
        assert_ne!(fs::read_to_string(&files.server_key).unwrap(), soon.key_pem);
        assert_eq!(mode(&files.server_key), 0o600);
        assert_eq!(fs::read(&files.ca_cert).unwrap(), ca_cert, "same CA");
        crate::tls::TlsSource::load(files.server_files(), TD).unwrap();

        // A certificate whose key went missing is re-issued with a new key.
        fs::remove_file(&files.server_key).unwrap();
        load_or_create_dev_tls(data.path(), TD).unwrap();
        assert_ne!(fs::read(&files.server_cert).unwrap(), renewed);
        crate::tls::TlsSource::load(files.server_files(), TD).unwrap();
    }

    #[test]
    fn a_ca_of_another_trust_domain_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let files = load_or_create_dev_tls(data.path(), TD).unwrap();
        let server_cert = fs::read(&files.server_cert).unwrap();
        let err = load_or_create_dev_tls(data.path(), "other.test").unwrap_err();
        assert!(matches!(err, PkiError::TrustDomain { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("\"writ.test\"") && message.contains("\"other.test\""),
            "{message}"
        );
        assert_eq!(
            fs::read(&files.server_cert).unwrap(),
            server_cert,
            "nothing touched"
        );
        let err =
            issue_client(data.path(), "other.test", "a", DAY, data.path(), "a", false).unwrap_err();
        assert!(matches!(err, PkiError::TrustDomain { .. }), "{err}");
    }

    #[test]
    fn a_ca_key_that_others_can_read_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let files = load_or_create_dev_tls(data.path(), TD).unwrap();
        fs::set_permissions(&files.ca_key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_dev_tls(data.path(), TD).unwrap_err();
        assert!(
            matches!(err, PkiError::Secrets(SecretsError::Permissions { .. })),
            "{err}"
        );
    }

    #[test]
    fn a_missing_ca_certificate_is_remade_for_the_existing_key() {
        let data = tempfile::tempdir().unwrap();
        let files = load_or_create_dev_tls(data.path(), TD).unwrap();
        let key = fs::read(&files.ca_key).unwrap();
        fs::remove_file(&files.ca_cert).unwrap();
        load_or_create_dev_tls(data.path(), TD).unwrap();
        assert_eq!(fs::read(&files.ca_key).unwrap(), key);
        // The server certificate (signed by that key) still verifies against the new one.
        crate::tls::TlsSource::load(files.server_files(), TD).unwrap();
        // Without the key, nothing is made up.
        fs::remove_file(&files.ca_key).unwrap();
        let err = load_or_create_dev_tls(data.path(), TD).unwrap_err();
        assert!(err.to_string().contains("restore the key"), "{err}");
    }

    #[test]
    fn client_certificates_are_issued_once_unless_replaced() {
        let data = tempfile::tempdir().unwrap();
        let out = data.path().join("certs").join("planner");
        let issue = |path: &str, stem: &str, replace: bool| {
            issue_client(data.path(), TD, path, DAY, &out, stem, replace)
        };
        let err = issue("agents/planner", "planner", false).unwrap_err();
        assert!(matches!(err, PkiError::NoCa { .. }), "{err}");
        load_or_create_dev_tls(data.path(), TD).unwrap();

        let issued = issue("agents/planner", "planner", false).unwrap();
        assert_eq!(
            issued.spiffe_id.as_str(),
            "spiffe://writ.test/agents/planner"
        );
        assert_eq!(issued.cert, out.join("planner.pem"));
        assert_eq!(issued.key, out.join("planner-key.pem"));
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&issued.key), 0o600);
        let cert = fs::read(&issued.cert).unwrap();
        let der = CertificateDer::from_pem_slice(&cert).unwrap();
        assert_eq!(
            crate::tls::svid_id(&der, TD).unwrap(),
            issued.spiffe_id,
            "an X.509-SVID the server accepts"
        );
        let days = (not_after(&cert) - unix_now()) as f64 / 86_400.0;
        assert!(days > 0.9 && days <= 1.0, "{days}");

        let err = issue("agents/planner", "planner", false).unwrap_err();
        assert!(matches!(err, PkiError::Exists { .. }), "{err}");
        assert_eq!(fs::read(&issued.cert).unwrap(), cert, "left alone");
        let again = issue("/agents/planner", "planner", true).unwrap();
        assert_ne!(fs::read(&again.cert).unwrap(), cert, "replaced");
        assert_eq!(mode(&again.key), 0o600);

        for (path, stem) in [("a/../b", "x"), ("a", "../x"), ("a", "")] {
            assert!(issue(path, stem, false).is_err());
        }
    }

    #[test]
    fn ca_from_pem_checks_the_pair() {
        let now = wall_clock();
        let a = Ca::generate("a", TD, now, now + DAY).unwrap();
        let b = Ca::generate("b", TD, now, now + DAY).unwrap();
        assert!(Ca::from_pem(a.cert_pem(), &a.key_pem()).is_ok());
        assert!(matches!(
            Ca::from_pem(a.cert_pem(), &b.key_pem()),
            Err(PkiError::Ca(_))
        ));
        let leaf = a
            .issue_svid(
                &SpiffeId::parse("spiffe://writ.test/x").unwrap(),
                now,
                now + DAY,
            )
            .unwrap();
        assert!(
            Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).is_err(),
            "not a CA"
        );
        assert!(!format!("{a:?}").contains("PRIVATE"));
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
    }
}
