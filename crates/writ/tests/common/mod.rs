//! What the CLI's test binaries share.

use std::path::PathBuf;

/// The repository's root (this crate is `crates/writ`), from the `CARGO_MANIFEST_DIR`
/// cargo sets when it runs a test: a test binary reused from a target directory shared with
/// another checkout must find this checkout's files, not the path it was compiled at (the
/// fallback, for a binary started by hand).
pub fn repo_root() -> PathBuf {
    let package: PathBuf = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    package
        .ancestors()
        .nth(2)
        .expect("crates/writ has a grandparent")
        .to_path_buf()
}
