//! Secrets the server keeps on disk: its MAC key ring and the local minter credential.
//! Both are created on first start with owner-only permissions, and a file that others
//! can read is refused rather than used.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;
use writ_core::{KeyRing, ServerKey};

/// File name of the key ring inside the data directory.
pub const KEYS_FILE: &str = "server-keys.toml";
/// File name of the generated local minter credential inside the data directory.
pub const MINTER_CREDENTIAL_FILE: &str = "minter.credential";
/// Identity of the generated local minter.
pub const LOCAL_MINTER_ID: &str = "local-minter";
/// File name of the generated local operator credential inside the data directory.
pub const OPERATOR_CREDENTIAL_FILE: &str = "operator.credential";
/// Identity of the generated local operator.
pub const LOCAL_OPERATOR_ID: &str = "local-operator";
const OPERATOR_CREDENTIAL_PREFIX: &str = "woc_";
const CREDENTIAL_PREFIX: &str = "wmc_";
const CREDENTIAL_CONTEXT: &str = "writ 2026-11 minter credential v1";

/// A secret file that cannot be created, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error("{path}: permissions {mode:o} let others read it; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file's content is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` owner-only if missing; refuses an existing one that group or others can
/// enter, since the store's files inside it inherit no stricter protection.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SecretsError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let mode = fs::metadata(dir).map_err(io(dir))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretsError::Permissions {
            path: dir.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Reads a secret file after checking that only its owner can read it.
fn read_private(path: &Path) -> Result<String, SecretsError> {
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretsError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    fs::read_to_string(path).map_err(io(path))
}

/// Writes a new secret file with mode 0600 atomically: a temporary file is written and
/// synced, renamed into place and the directory synced, so a crash never leaves an empty
/// or partial secret behind.
fn create_private(path: &Path, content: &str) -> Result<(), SecretsError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(content.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: u32,
    key: String,
}

/// Loads the key ring from the data directory, generating a first key if there is none.
/// To rotate, put a new key first in the file; old keys keep verifying until removed.
pub fn load_or_create_key_ring(data_dir: &Path) -> Result<KeyRing, SecretsError> {
    let path = data_dir.join(KEYS_FILE);
    if !path.exists() {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let file = KeyFile {
            keys: vec![KeyEntry {
                id: 1,
                key: hex::encode(key),
            }],
        };
        let body = toml::to_string(&file).map_err(|e| SecretsError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let text = format!(
            "# Writ server MAC keys. The first key signs new tokens; every key verifies.\n\
             # To rotate: add a new key with a new id at the top; remove old keys once their tokens expired.\n{body}"
        );
        create_private(&path, &text)?;
        tracing::info!(path = %path.display(), "generated a new server key");
    }
    let invalid = |message: String| SecretsError::Invalid {
        path: path.clone(),
        message,
    };
    let file: KeyFile =
        toml::from_str(&read_private(&path)?).map_err(|e| invalid(e.to_string()))?;
    let keys = file
        .keys
        .into_iter()
        .map(|e| {
            let mut key = [0u8; 32];
            hex::decode_to_slice(&e.key, &mut key)
                .map_err(|_| invalid(format!("key {} is not 64 hex digits", e.id)))?;
            Ok(ServerKey { id: e.id, key })
        })
        .collect::<Result<Vec<_>, SecretsError>>()?;
    KeyRing::new(keys).ok_or_else(|| invalid("needs at least one key, with distinct ids".into()))
}

/// The blake3 digest under which a minter credential is configured and compared.
pub fn credential_digest(credential: &str) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(CREDENTIAL_CONTEXT)
        .update(credential.as_bytes())
        .finalize()
        .as_bytes()
}

/// The digest as configured in `[[minters]] credential_blake3`.
pub fn credential_hex(credential: &str) -> String {
    hex::encode(credential_digest(credential))
}

/// Loads the local minter credential, generating one on first start. Returns its digest.
pub fn load_or_create_local_minter(data_dir: &Path) -> Result<[u8; 32], SecretsError> {
    load_or_create_local_credential(
        data_dir,
        MINTER_CREDENTIAL_FILE,
        CREDENTIAL_PREFIX,
        "minter",
    )
}

/// Loads the local operator credential, generating one on first start. Returns its digest.
pub fn load_or_create_local_operator(data_dir: &Path) -> Result<[u8; 32], SecretsError> {
    load_or_create_local_credential(
        data_dir,
        OPERATOR_CREDENTIAL_FILE,
        OPERATOR_CREDENTIAL_PREFIX,
        "operator",
    )
}

fn load_or_create_local_credential(
    data_dir: &Path,
    file: &str,
    prefix: &str,
    role: &str,
) -> Result<[u8; 32], SecretsError> {
    let path = data_dir.join(file);
    if !path.exists() {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        create_private(&path, &format!("{prefix}{}\n", hex::encode(raw)))?;
        tracing::info!(path = %path.display(), "generated the local {role} credential");
    }
    let credential = read_private(&path)?;
    let credential = credential.trim();
    let well_formed = credential
        .strip_prefix(prefix)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(SecretsError::Invalid {
            path,
            message: format!(
                "not a {role} credential (`{prefix}` and 64 hex digits); delete it to generate a new one"
            ),
        });
    }
    Ok(credential_digest(credential))
}

/// Shortest credential [`Credentials::identify`] will consider.
pub const MIN_CREDENTIAL_LEN: usize = 32;

/// What a credential lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Start transactions (Mint).
    Minter,
    /// Investigate and revoke call chains.
    Operator,
}

/// Credentialed identities (minters, operators) and their credential digests; compares
/// in constant time.
#[derive(Clone, Default)]
pub struct Credentials {
    entries: Vec<(String, Role, [u8; 32])>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(id, role, _)| (id, role)))
            .finish()
    }
}

impl Credentials {
    /// Adds an identity.
    pub fn add(&mut self, id: String, role: Role, digest: [u8; 32]) {
        self.entries.push((id, role, digest));
    }

    /// Is `id` a credentialed identity? Nobody may assert one without its credential.
    pub fn is_credentialed_id(&self, id: &str) -> bool {
        self.entries.iter().any(|(m, _, _)| m == id)
    }

    /// Whose credential this is, if anyone's. Checks every entry, so timing does not
    /// reveal which one matched.
    pub fn identify(&self, credential: &str) -> Option<(&str, Role)> {
        // An empty or short credential never matches, even if one was misconfigured.
        if credential.len() < MIN_CREDENTIAL_LEN {
            return None;
        }
        let d = credential_digest(credential);
        let mut found = None;
        for (id, role, digest) in &self.entries {
            if bool::from(digest.ct_eq(&d)) {
                found = Some((id.as_str(), *role));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_ring_is_created_private_and_reloaded_identically() {
        let dir = tempfile::tempdir().unwrap();
        let ring = load_or_create_key_ring(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEYS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (tok, _) = ring.issue([1; 32]);
        let again = load_or_create_key_ring(dir.path()).unwrap();
        assert!(again.verify(tok.expose()).is_ok());
    }

    #[test]
    fn readable_secret_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_local_minter(dir.path()).unwrap();
        let p = dir.path().join(MINTER_CREDENTIAL_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_local_minter(dir.path()),
            Err(SecretsError::Permissions { .. })
        ));
    }

    #[test]
    fn minters_identify_only_their_own_credential() {
        let mut m = Credentials::default();
        let c1 = "wmc_0000000000000000000000000000000000000001";
        let c3 = "woc_0000000000000000000000000000000000000003";
        m.add("gw".into(), Role::Minter, credential_digest(c1));
        m.add("ops".into(), Role::Operator, credential_digest(c3));
        m.add("empty".into(), Role::Minter, credential_digest(""));
        assert_eq!(m.identify(c1), Some(("gw", Role::Minter)));
        assert_eq!(m.identify(c3), Some(("ops", Role::Operator)));
        assert_eq!(
            m.identify("wmc_0000000000000000000000000000000000000002"),
            None
        );
        assert_eq!(
            m.identify(""),
            None,
            "an empty credential never authenticates"
        );
        assert!(m.is_credentialed_id("gw") && m.is_credentialed_id("ops"));
        assert!(!m.is_credentialed_id("planner"));
        assert!(!format!("{m:?}").contains("wmc_"));
    }

    #[test]
    fn empty_or_garbled_credential_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(MINTER_CREDENTIAL_FILE);
        for content in [
            "",
            "\n",
            "wmc_short",
            "password1234567890password1234567890",
        ] {
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            let r = load_or_create_local_minter(dir.path());
            assert!(
                matches!(r, Err(SecretsError::Invalid { .. })),
                "{content:?}"
            );
        }
    }

    #[test]
    fn data_dirs_others_can_enter_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            ensure_private_dir(&d),
            Err(SecretsError::Permissions { .. })
        ));
    }
}
