//! The client libraries where agents live, and the runnable example, tested against this
//! build's `writ` binary: the Python package's suite (with MCP), the TypeScript package's
//! suite and the multi-agent example. Each is one script that installs what it needs
//! (pinned, into a cache outside the clone, reused while its lock file is unchanged),
//! starts its own `writ serve` processes on free ports from `WRIT_BIN`, and exits non-zero
//! on any failure. So `cargo test --workspace` runs them, and so does `.ci/run`.
//!
//! `WRIT_SKIP_LIBRARY_TESTS=1` skips them (with a notice) for a quick Rust-only run; CI
//! never sets it. A machine without Python 3.11+ or Node.js 20+ fails here, naming what
//! to install.

mod common;

use common::repo_root;
use std::process::Command;
use std::time::Instant;

const WRIT: &str = env!("CARGO_BIN_EXE_writ");

/// The Python suite and the example share one virtualenv: one at a time.
static PYTHON_VENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `script` (relative to the root) with `WRIT_BIN` set, and fails the test with its
/// whole output unless it exits 0. `needs` names the tool the script cannot run without.
fn run_suite(script: &str, needs: &str) {
    if std::env::var_os("WRIT_SKIP_LIBRARY_TESTS").is_some_and(|v| v == "1") {
        eprintln!("NOTICE: WRIT_SKIP_LIBRARY_TESTS=1: {script} not run");
        return;
    }
    if Command::new(needs).arg("--version").output().is_err() {
        panic!("{script} needs `{needs}` on PATH (Python 3.11+ with venv, Node.js 20+ with npm)");
    }
    let path = repo_root().join(script);
    assert!(path.is_file(), "{} is missing", path.display());
    let started = Instant::now();
    let out = Command::new(&path)
        .current_dir(repo_root())
        .env("WRIT_BIN", WRIT)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    // Shown by the harness when the test fails (and with --nocapture).
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{script}: {:?} in {:.0?}", out.status, started.elapsed());
    assert!(
        out.status.success(),
        "{script} failed ({}); its output is above",
        out.status
    );
}

#[test]
fn the_python_package_and_its_mcp_integration() {
    let _venv = PYTHON_VENV.lock().unwrap_or_else(|e| e.into_inner());
    run_suite("python/run-tests", "python3");
}

#[test]
fn the_typescript_package() {
    run_suite("typescript/run-tests", "npm");
}

#[test]
fn the_travel_example_runs_end_to_end() {
    let _venv = PYTHON_VENV.lock().unwrap_or_else(|e| e.into_inner());
    run_suite("examples/travel/run-test", "python3");
}
