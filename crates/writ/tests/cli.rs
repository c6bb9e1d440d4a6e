//! Process-level tests of the `writ` binary: `writ serve` as a child process, the client
//! commands against it, crash durability (SIGKILL) and clean shutdown (SIGTERM).

use serde_json::Value as Json;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");

/// A free loopback port: bind port 0, read the port, release it.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A `writ serve` child process; killed (SIGKILL) and reaped on drop, so a failing test
/// never leaves a server behind.
struct Server {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts `writ serve` on a fresh port over `data_dir` and waits until it accepts
    /// connections. `run` numbers the log file so restarts keep earlier logs.
    fn start(data_dir: &Path, run: u32) -> Server {
        let port = free_port();
        let log = data_dir
            .parent()
            .expect("data dir has a parent")
            .join(format!("serve-{run}.log"));
        let log_file = File::create(&log).expect("creating the server log");
        let child = Command::new(WRIT)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env_remove("WRIT_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawning writ serve");
        let mut s = Server {
            child: Some(child),
            port,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        s.wait_ready();
        s
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the server process")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Bounded wait (100 × 50 ms) for a TCP connect to succeed.
    fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..100 {
            if let Some(status) = self.child().try_wait().expect("polling the server") {
                panic!(
                    "writ serve exited early with {status}; log:\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "writ serve did not listen on {addr} within 5 s; log:\n{}",
            self.log()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn credential_file(&self) -> PathBuf {
        self.data_dir.join("minter.credential")
    }

    /// SIGKILL, as in a crash; returns once the process is reaped.
    fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaping the server");
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child().id().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child().try_wait().expect("polling the server") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "writ serve ignored SIGTERM for 10 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a client command of the binary with a clean `WRIT_*` environment plus `envs`.
fn writ(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(WRIT);
    cmd.args(args);
    for v in [
        "WRIT_SERVER",
        "WRIT_TOKEN",
        "WRIT_MINTER_CREDENTIAL",
        "WRIT_OPERATOR_CREDENTIAL",
        "WRIT_CONFIG",
    ] {
        cmd.env_remove(v);
    }
    cmd.envs(envs.iter().copied());
    cmd.stdin(Stdio::null()).output().expect("running writ")
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts exit code `code` and parses stdout as one JSON object.
#[track_caller]
fn json_exit(o: &Output, code: i32) -> Json {
    assert_eq!(o.status.code(), Some(code), "{}", describe(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(o)))
}

fn str_field<'a>(v: &'a Json, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// Mints alice's token for the planner through the CLI; returns the mint JSON.
fn cli_mint(srv: &Server, extra: &[&str]) -> Json {
    let url = srv.url();
    let cred = srv.credential_file();
    let mut args = vec![
        "mint",
        "--server",
        url.as_str(),
        "--json",
        "--credential-file",
        cred.to_str().expect("utf-8 path"),
        "--subject",
        "alice",
        "--audience",
        "planner",
        "--target",
        "booking",
        "--scope",
        "trips:book",
        "--claim",
        "amount:max:500",
    ];
    args.extend_from_slice(extra);
    json_exit(&writ(&args, &[]), 0)
}

#[test]
fn cli_mint_downscope_validate_and_escalation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();

    let minted = cli_mint(&srv, &[]);
    let root = str_field(&minted, "/token").to_string();
    assert!(root.starts_with("writ_"), "{minted}");
    assert_eq!(str_field(&minted, "/info/subject"), "alice");
    assert_eq!(str_field(&minted, "/info/audience/id"), "planner");
    assert_eq!(
        minted.pointer("/info/depth").and_then(Json::as_u64),
        Some(0)
    );
    assert_eq!(
        minted
            .pointer("/info/claims/amount/max")
            .and_then(Json::as_i64),
        Some(500)
    );
    assert_eq!(str_field(&minted, "/info/act/id"), "local-minter");

    // The planner derives booking's token; the parent comes from WRIT_TOKEN.
    let out = writ(
        &[
            "downscope",
            "--server",
            &url,
            "--json",
            "--as",
            "planner",
            "--audience",
            "booking",
            "--scope",
            "trips:book",
            "--claim",
            "amount:max:100",
        ],
        &[("WRIT_TOKEN", &root)],
    );
    let derived = json_exit(&out, 0);
    let child = str_field(&derived, "/token").to_string();
    assert!(child.starts_with("writ_") && child != root, "{derived}");
    assert_eq!(
        derived.pointer("/info/depth").and_then(Json::as_u64),
        Some(1)
    );
    assert_eq!(
        str_field(&derived, "/info/txn"),
        str_field(&minted, "/info/txn")
    );
    assert_eq!(
        str_field(&derived, "/info/parent_token_id"),
        str_field(&minted, "/info/token_id")
    );
    assert_eq!(str_field(&derived, "/info/act/id"), "planner");
    assert_eq!(str_field(&derived, "/info/act/act/id"), "local-minter");
    assert_eq!(
        derived
            .pointer("/info/agent_traffic")
            .and_then(Json::as_bool),
        Some(true)
    );

    // Booking validates an action within the grant: exit 0, allowed.
    let validate = |caller: &str, amount: &str, token: &str| {
        writ(
            &[
                "validate",
                "--server",
                &url,
                "--as",
                caller,
                "--scope",
                "trips:book",
                "--attr",
                amount,
                "--json",
            ],
            &[("WRIT_TOKEN", token)],
        )
    };
    let v = json_exit(&validate("booking", "amount=50", &child), 0);
    assert_eq!(
        v.pointer("/active").and_then(Json::as_bool),
        Some(true),
        "{v}"
    );
    assert_eq!(
        v.pointer("/decision/allowed").and_then(Json::as_bool),
        Some(true),
        "{v}"
    );
    assert_eq!(str_field(&v, "/info/audience/id"), "booking");

    // Over the child's limit: exit 1, denied by the claim.
    let v = json_exit(&validate("booking", "amount=101", &child), 1);
    assert_eq!(
        v.pointer("/decision/allowed").and_then(Json::as_bool),
        Some(false),
        "{v}"
    );
    assert_eq!(str_field(&v, "/decision/denied_by"), "amount");

    // The wrong audience: exit 1, inactive, nothing else said.
    let v = json_exit(&validate("planner", "amount=50", &child), 1);
    assert_eq!(
        v.pointer("/active").and_then(Json::as_bool),
        Some(false),
        "{v}"
    );
    assert_eq!(str_field(&v, "/inactive_reason"), "wrong_audience");
    assert!(v.get("info").is_none(), "{v}");

    // Escalation: a wider amount than the parent's is refused with exit 1.
    let out = writ(
        &[
            "downscope",
            "--server",
            &url,
            "--as",
            "planner",
            "--audience",
            "booking",
            "--scope",
            "trips:book",
            "--claim",
            "amount:max:900",
        ],
        &[("WRIT_TOKEN", &root)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(stderr.contains("claims"), "{stderr}");
    assert!(stderr.contains("amount"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no token is printed on refusal: {}",
        describe(&out)
    );

    // The same refusal with --json prints the error object on stdout.
    let out = writ(
        &[
            "downscope",
            "--server",
            &url,
            "--json",
            "--as",
            "planner",
            "--audience",
            "booking",
            "--scope",
            "trips:book",
            "--claim",
            "amount:max:900",
        ],
        &[("WRIT_TOKEN", &root)],
    );
    let e = json_exit(&out, 1);
    assert_eq!(str_field(&e, "/error/code"), "PERMISSION_DENIED");
    assert!(str_field(&e, "/error/message").contains("claims"), "{e}");

    // Minting with a wrong credential: exit 1, UNAUTHENTICATED.
    let out = writ(
        &[
            "mint",
            "--server",
            &url,
            "--credential",
            "wmc_wrong",
            "--subject",
            "alice",
            "--audience",
            "planner",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"),
        "{}",
        describe(&out)
    );

    // The secret is printed only by mint/downscope, never in the JSON info of validate.
    let v = json_exit(&validate("booking", "amount=50", &child), 0);
    assert!(!v.to_string().contains(&child[5..]), "{v}");
}

#[test]
fn cli_revoke_by_id_and_by_holder_and_max_uses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    let operator_file = srv.data_dir.join("operator.credential");
    let operator_file = operator_file.to_str().expect("utf-8 path");

    let minted = cli_mint(&srv, &["--max-uses", "2"]);
    let token = str_field(&minted, "/token").to_string();
    let id = str_field(&minted, "/info/token_id").to_string();
    assert!(id.starts_with("tid_"), "{minted}");
    assert_eq!(
        minted.pointer("/info/max_uses").and_then(Json::as_u64),
        Some(2),
        "{minted}"
    );

    // The operator revokes the token by id.
    let out = writ(
        &[
            "revoke",
            &id,
            "--reason",
            "test",
            "--json",
            "--server",
            &url,
            "--credential-file",
            operator_file,
        ],
        &[],
    );
    let v = json_exit(&out, 0);
    assert_eq!(v, serde_json::json!({ "revoked_token_ids": [id] }));

    // Validation now fails with exit 1, naming the reason.
    let out = writ(
        &["validate", "--server", &url, "--as", "planner", "--json"],
        &[("WRIT_TOKEN", &token)],
    );
    let v = json_exit(&out, 1);
    assert_eq!(str_field(&v, "/inactive_reason"), "revoked", "{v}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        describe(&out)
    );

    // Again, in text: nothing new.
    let out = writ(
        &["revoke", &id, "--reason", "again", "--server", &url],
        &[("WRIT_OPERATOR_CREDENTIAL", &srv_operator(operator_file))],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "revoked 0 token(s)\n");

    // Only operators revoke by id: the minter credential is refused with exit 1.
    let other = cli_mint(&srv, &[]);
    let other_token = str_field(&other, "/token").to_string();
    let other_id = str_field(&other, "/info/token_id").to_string();
    let minter_file = srv.credential_file();
    let out = writ(
        &[
            "revoke",
            &other_id,
            "--reason",
            "test",
            "--server",
            &url,
            "--credential-file",
            minter_file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"),
        "{}",
        describe(&out)
    );

    // Its holder revokes it with WRIT_TOKEN, no credential at all.
    let out = writ(
        &["revoke", "--reason", "done", "--server", &url],
        &[("WRIT_TOKEN", &other_token)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("revoked 1 token(s)\n{other_id}\n")
    );

    // A token is not a TARGET: usage error, exit 2, and the secret is not echoed.
    let out = writ(
        &["revoke", &other_token, "--reason", "x", "--server", &url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&other_token[5..]),
        "{}",
        describe(&out)
    );
}

/// The operator credential in `file`, trimmed.
fn srv_operator(file: &str) -> String {
    std::fs::read_to_string(file)
        .expect("reading the operator credential")
        .trim()
        .to_string()
}

#[test]
fn an_acknowledged_mint_survives_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut srv = Server::start(&data, 0);
    let minted = cli_mint(&srv, &["--ttl", "600"]);
    let token = str_field(&minted, "/token").to_string();

    srv.kill_hard();
    let srv = Server::start(&data, 1);

    let out = writ(
        &[
            "validate",
            "--server",
            &srv.url(),
            "--as",
            "planner",
            "--json",
        ],
        &[("WRIT_TOKEN", &token)],
    );
    let v = json_exit(&out, 0);
    assert_eq!(
        v.pointer("/active").and_then(Json::as_bool),
        Some(true),
        "{v}"
    );
    assert_eq!(
        v.pointer("/info"),
        minted.pointer("/info"),
        "the record is unchanged after the crash"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut srv = Server::start(&data, 0);
    let token = str_field(&cli_mint(&srv, &[]), "/token").to_string();

    let status = srv.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        srv.log()
    );

    // The data directory is reusable after a clean stop.
    let srv = Server::start(&data, 1);
    let out = writ(
        &[
            "validate",
            "--server",
            &srv.url(),
            "--as",
            "planner",
            "--json",
        ],
        &[("WRIT_TOKEN", &token)],
    );
    assert_eq!(
        json_exit(&out, 0)
            .pointer("/active")
            .and_then(Json::as_bool),
        Some(true)
    );
}

#[test]
fn client_commands_fail_cleanly_without_a_server() {
    // A port nothing listens on: a connection error is exit 2, not a refusal.
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = writ(
        &["validate", "--server", &url, "--as", "planner"],
        &[("WRIT_TOKEN", "writ_x")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writ:"),
        "{}",
        describe(&out)
    );
}
