//! Secrets the server keeps on disk: its MAC key ring and the local minter and operator
//! credentials, and the lock that keeps one server per data directory.
//!
//! - The data directory must be owned by the server's effective uid and closed to group
//!   and others; so must every secret file, which is opened without following symlinks.
//! - [`lock_data_dir`] takes an exclusive lock on `<data_dir>/.lock` before any secret is
//!   read or generated, held until the server stops: a second server on the same
//!   directory fails fast.
//! - Secrets are generated from the operating system's RNG on first start, written to a
//!   uniquely named temporary file, synced, and installed with a hard link, which never
//!   replaces an existing file: if another process installed one first, that one is used.

use rand::TryRngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = ".lock";

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
    /// The file or directory belongs to another user.
    #[error(
        "{path}: owned by uid {owner}, but this server runs as uid {euid}; \
         a data directory and its secrets must belong to the server's user"
    )]
    Owner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The process's effective uid.
        euid: u32,
    },
    /// The file's content is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "{dir}: the data directory is in use by another Writ server (it holds {dir}/{LOCK_FILE}); \
         stop it, or give this one another data_dir"
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The effective uid of this process.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// May a process running as `euid` trust a file or directory owned by `owner`? Only its
/// own: not even root's, since a server running as root should not adopt another
/// user's data directory either.
fn trusted_owner(owner: u32, euid: u32) -> bool {
    owner == euid
}

/// Refuses `meta` (of `path`) unless this process's user owns it and group and others
/// have no access to it.
pub(crate) fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), SecretsError> {
    let euid = euid();
    if !trusted_owner(meta.uid(), euid) {
        return Err(SecretsError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretsError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Creates `dir` owner-only if missing; refuses an existing one that another user owns
/// or that group or others can enter, since the store's files inside it inherit no
/// stricter protection.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SecretsError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    check_private(dir, &fs::metadata(dir).map_err(io(dir))?)
}

/// The exclusive lock on a data directory; released when dropped (or when the process
/// dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the exclusive lock on `data_dir` (which must exist), without waiting:
/// [`SecretsError::Locked`] if another server (in this or another process) holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, SecretsError> {
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(SecretsError::Locked {
            dir: data_dir.to_owned(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

/// Reads a secret file after checking that only its owner, this process's user, can
/// read it. A symlink is refused, and the checks apply to the file actually read.
pub(crate) fn read_private(path: &Path) -> Result<String, SecretsError> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    check_private(path, &file.metadata().map_err(io(path))?)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io(path))?;
    Ok(text)
}

/// Fills `buf` from the operating system's RNG (for a secret to be stored at `path`).
fn os_random(path: &Path, buf: &mut [u8]) -> Result<(), SecretsError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| io(path)(std::io::Error::other(format!("the OS RNG failed: {e}"))))
}

/// Creates `path` (mode 0600; it must not exist) holding `content`, synced.
fn write_new(path: &Path, content: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

/// Installs a new secret file with mode 0600, unless `path` already exists: the content
/// is written to a temporary file of a name no other process uses, synced, and hard-linked
/// into place (which, unlike a rename, never replaces an existing file), then the
/// directory is synced, so a crash never leaves an empty or partial secret behind.
/// Returns `false`, leaving the existing file alone, if `path` was there first.
pub(crate) fn install_private(path: &Path, content: &str) -> Result<bool, SecretsError> {
    let tmp = temporary_beside(path);
    let linked = write_new(&tmp, content).and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    let installed = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io(path)(e)),
    };
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(installed)
}

/// A temporary file name beside `path` no other process uses: `.<name>.<pid>.<random>.tmp`.
fn temporary_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Replaces the secret file `path` (mode 0600) with `content`, atomically and durably:
/// written to a temporary file of a name no other process uses, synced, renamed over
/// `path`, then the directory synced. A crash at any point leaves either the old file or
/// the new one, whole; at worst a stray temporary file (`.<name>.*.tmp`, which
/// [`remove_stale_temporaries`] clears). For files the server rewrites while it holds
/// the data directory's lock (the JWT signing keys on rotation); first creation goes
/// through [`install_private`], which never replaces.
pub(crate) fn replace_private(path: &Path, content: &str) -> Result<(), SecretsError> {
    let tmp = temporary_beside(path);
    let renamed = write_new(&tmp, content).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Deletes the temporary files a crash may have left behind while `path` was being
/// installed or replaced (`.<name>.*.tmp` beside it). Only for files under the data
/// directory's lock, so no other writer's temporary file is removed.
pub(crate) fn remove_stale_temporaries(path: &Path) -> Result<usize, SecretsError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(0);
    };
    let prefix = format!(".{name}.");
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"));
        if stale {
            fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
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
        os_random(&path, &mut key)?;
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
        if install_private(&path, &text)? {
            tracing::info!(path = %path.display(), "generated a new server key");
        }
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
        os_random(&path, &mut raw)?;
        if install_private(&path, &format!("{prefix}{}\n", hex::encode(raw)))? {
            tracing::info!(path = %path.display(), "generated the local {role} credential");
        }
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

    /// Finding 14: installing never replaces a secret that is already there (two
    /// servers starting at once each keep one key ring), and leaves no temporary file.
    #[test]
    fn a_pre_existing_secret_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(MINTER_CREDENTIAL_FILE);
        assert!(install_private(&p, "first\n").unwrap());
        assert!(!install_private(&p, "second\n").unwrap());
        assert_eq!(fs::read_to_string(&p).unwrap(), "first\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A key ring already on disk is loaded as is.
        let ring = load_or_create_key_ring(dir.path()).unwrap();
        let keys = dir.path().join(KEYS_FILE);
        let before = fs::read(&keys).unwrap();
        assert!(!install_private(&keys, "keys = []\n").unwrap());
        assert_eq!(fs::read(&keys).unwrap(), before);
        let (tok, _) = ring.issue([2; 32]);
        let again = load_or_create_key_ring(dir.path()).unwrap();
        assert!(again.verify(tok.expose()).is_ok());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    /// Finding 14: one server per data directory; the lock goes with its holder.
    #[test]
    fn a_second_lock_on_a_data_dir_is_refused_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_dir(dir.path()).unwrap();
        let err = lock_data_dir(dir.path()).unwrap_err();
        assert!(matches!(err, SecretsError::Locked { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("in use"), "{message}");
        drop(first);
        let _again = lock_data_dir(dir.path()).unwrap();
    }

    /// Finding 15: a directory or secret owned by another user is refused. The refusal
    /// itself needs a file of another owner, which only root can make: as another user
    /// the test checks the comparison alone.
    #[test]
    fn data_dirs_and_secrets_of_another_user_are_refused() {
        assert!(trusted_owner(1000, 1000));
        assert!(!trusted_owner(1001, 1000));
        assert!(!trusted_owner(0, 1000), "not even root's");
        assert!(
            !trusted_owner(1000, 0),
            "root adopts nobody else's directory"
        );
        if euid() != 0 {
            return;
        }
        let other = 54_321;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        ensure_private_dir(&d).unwrap();
        load_or_create_local_minter(&d).unwrap();
        let cred = d.join(MINTER_CREDENTIAL_FILE);
        std::os::unix::fs::chown(&cred, Some(other), None).unwrap();
        let err = load_or_create_local_minter(&d).unwrap_err();
        assert!(
            matches!(err, SecretsError::Owner { owner, .. } if owner == other),
            "{err:?}"
        );
        std::os::unix::fs::chown(&d, Some(other), None).unwrap();
        let err = ensure_private_dir(&d).unwrap_err();
        assert!(
            matches!(err, SecretsError::Owner { owner, euid: 0, .. } if owner == other),
            "{err:?}"
        );
        assert!(err.to_string().contains("uid 54321"), "{err}");
    }

    #[test]
    fn a_secret_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, format!("wmc_{}\n", "0".repeat(64))).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(MINTER_CREDENTIAL_FILE)).unwrap();
        assert!(matches!(
            load_or_create_local_minter(dir.path()),
            Err(SecretsError::Io { .. })
        ));
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
