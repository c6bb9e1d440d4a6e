//! The end-to-end suite on the second backend: every other test binary of this package,
//! run again with `WRIT_TEST_BACKEND=redis` against one six-node Redis Cluster, so
//! `cargo test --workspace` proves the same behaviour on RocksDB and on Redis with one
//! suite, not a copy. Cargo builds every test binary of the package before it runs any,
//! so the newest binary of each name is this build's. Run it with the package's others
//! (`cargo test -p writ-e2e` or `--workspace`): `cargo test --test backends` alone builds
//! only this binary and would run whatever the last build left of the others.

use std::path::{Path, PathBuf};
use std::process::Command;

/// This build's binary of the test target `name`: the newest `deps/<name>-<hash>`.
fn binary(deps: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}-");
    std::fs::read_dir(deps)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let file = e.file_name();
            let file = file.to_string_lossy();
            file.starts_with(&prefix)
                && !file.contains('.')
                && file[prefix.len()..].chars().all(|c| c.is_ascii_hexdigit())
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

#[test]
fn the_end_to_end_suite_passes_on_a_redis_cluster() {
    // A run already on a chosen backend (including the runs this test starts) does not
    // start another.
    if std::env::var_os("WRIT_TEST_BACKEND").is_some() {
        return;
    }
    let nodes = writ_e2e::redis::cluster_nodes().join(",");
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the deps directory");
    let tests = writ_e2e::repo_root().join("tests/tests");
    let mut names: Vec<String> = std::fs::read_dir(&tests)
        .expect("tests/tests")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_owned)
        })
        // faults starts clusters of its own, whatever the backend.
        .filter(|n| n != "backends" && n != "faults")
        .collect();
    names.sort();
    assert!(names.len() > 20, "found the suite's targets: {names:?}");
    let mut failed = Vec::new();
    for name in &names {
        let bin = binary(deps, name)
            .unwrap_or_else(|| panic!("no binary of test target {name} in {}", deps.display()));
        let out = Command::new(&bin)
            .env("WRIT_TEST_BACKEND", "redis")
            .env("WRIT_TEST_REDIS_NODES", &nodes)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout
            .lines()
            .rfind(|l| l.starts_with("test result:"))
            .unwrap_or("no summary");
        eprintln!("redis: {name}: {summary}");
        if !out.status.success() {
            failed.push(format!(
                "{name}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "on the Redis backend:\n{}",
        failed.join("\n")
    );
}
