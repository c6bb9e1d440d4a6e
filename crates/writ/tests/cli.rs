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
        Server::start_with(data_dir, run, None)
    }

    /// As [`Server::start`], with a configuration file.
    fn start_with(data_dir: &Path, run: u32, config: Option<&Path>) -> Server {
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
            .args(
                config
                    .map(|c| ["--config".as_ref(), c.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
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
            "--subject",
            "alice",
            "--audience",
            "planner",
        ],
        &[("WRIT_MINTER_CREDENTIAL", "wmc_wrong")],
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

    // Anyone else presenting it is refused without learning anything.
    let out = writ(
        &[
            "revoke", "--as", "booking", "--reason", "stolen", "--server", &url,
        ],
        &[("WRIT_TOKEN", &other_token)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a valid token"),
        "{}",
        describe(&out)
    );

    // Its holder revokes it with WRIT_TOKEN, no credential at all.
    let out = writ(
        &[
            "revoke", "--as", "planner", "--reason", "done", "--server", &url,
        ],
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

/// `writ events TXN --json` against `srv` as the operator: the trail's event kinds.
fn event_kinds(srv: &Server, txn: &str) -> Vec<String> {
    let operator_file = srv.data_dir.join("operator.credential");
    let url = srv.url();
    let out = writ(
        &[
            "events",
            txn,
            "--json",
            "--server",
            &url,
            "--credential-file",
            operator_file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Json = serde_json::from_str(l).expect("a JSON line");
            str_field(&v, "/kind").to_string()
        })
        .collect()
}

#[test]
fn an_acknowledged_mint_and_a_listed_validation_survive_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut srv = Server::start(&data, 0);
    let minted = cli_mint(&srv, &["--ttl", "600"]);
    let token = str_field(&minted, "/token").to_string();
    let txn = str_field(&minted, "/info/txn").to_string();
    let url = srv.url();
    let v = writ(
        &["validate", "--server", &url, "--as", "planner"],
        &[("WRIT_TOKEN", &token)],
    );
    assert_eq!(v.status.code(), Some(0), "{}", describe(&v));
    // Listed, so stored: the validation's event was appended without an fsync of its
    // own, which a killed process must not lose.
    assert_eq!(event_kinds(&srv, &txn), ["minted", "validated"]);

    srv.kill_hard();
    let srv = Server::start(&data, 1);
    assert_eq!(event_kinds(&srv, &txn), ["minted", "validated"]);

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
fn the_runtime_is_chosen_by_the_configuration() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("writ.toml");
    std::fs::write(&config, "[runtime]\nflavor = \"current_thread\"\n").expect("config");
    let srv = Server::start_with(&tmp.path().join("data"), 0, Some(&config));
    let minted = cli_mint(&srv, &[]);
    assert!(!str_field(&minted, "/token").is_empty());
    let log = srv.log();
    assert!(log.contains("runtime=CurrentThread"), "{log}");
    drop(srv);
    std::fs::write(
        &config,
        "[runtime]\nflavor = \"multi_thread\"\nworker_threads = 3\n",
    )
    .expect("config");
    let srv = Server::start_with(&tmp.path().join("data"), 1, Some(&config));
    let log = srv.log();
    assert!(log.contains("runtime=MultiThread"), "{log}");
    drop(srv);

    std::fs::write(
        &config,
        "[runtime]\nflavor = \"current_thread\"\nworker_threads = 2\n",
    )
    .expect("config");
    let out = writ(
        &["serve", "--config", config.to_str().expect("utf-8 path")],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("runtime.worker_threads"),
        "{}",
        describe(&out)
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
    // A clean stop flushed the memtables: the mint is in a table file, not only in the log
    // a restart would have to replay.
    let tables = std::fs::read_dir(data.join("db"))
        .expect("the store's directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        })
        .count();
    assert!(tables > 0, "no table file after a clean stop");

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

#[test]
fn secrets_never_come_from_the_command_line_and_remote_plaintext_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    let root = cli_mint(&srv, &[]);
    let token = str_field(&root, "/token").to_string();
    // No flag takes a token or a credential itself: it would show in the process list.
    for (cmd, flag) in [
        ("validate", "--token"),
        ("downscope", "--token"),
        ("revoke", "--token"),
        ("mint", "--credential"),
        ("chain", "--credential"),
    ] {
        let out = writ(&[cmd, "--server", &url, flag, "secret-value"], &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd} {flag}: {}",
            describe(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("secret-value"),
            "the refusal must not echo the secret: {}",
            describe(&out)
        );
    }
    // The token from a file works as from WRIT_TOKEN.
    let file = tmp.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("writing the token file");
    let file = file.to_str().expect("utf-8 path");
    let out = writ(
        &[
            "validate",
            "--server",
            &url,
            "--as",
            "planner",
            "--token-file",
            file,
            "--json",
        ],
        &[],
    );
    assert_eq!(json_exit(&out, 0)["active"], true);
    // A server that is not on loopback is refused unless --insecure says otherwise.
    let out = writ(
        &[
            "validate",
            "--server",
            "http://192.0.2.1:7433",
            "--as",
            "planner",
        ],
        &[("WRIT_TOKEN", &token)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plaintext"),
        "{}",
        describe(&out)
    );
}

#[test]
fn cli_chain_and_token_show_the_call_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    let operator_file = srv.data_dir.join("operator.credential");
    let operator_file = operator_file.to_str().expect("utf-8 path");

    // alice's token for the planner, which may reach booking, payments and hotel.
    let minted = cli_mint(
        &srv,
        &[
            "--target",
            "payments",
            "--target",
            "hotel",
            "--scope",
            "payments:charge",
        ],
    );
    let root = str_field(&minted, "/token").to_string();
    let root_id = str_field(&minted, "/info/token_id").to_string();
    let txn = str_field(&minted, "/info/txn").to_string();

    let downscope = |parent: &str, caller: &str, audience: &str, extra: &[&str]| {
        let mut args = vec![
            "downscope",
            "--server",
            url.as_str(),
            "--json",
            "--as",
            caller,
            "--audience",
            audience,
        ];
        args.extend_from_slice(extra);
        let v = json_exit(&writ(&args, &[("WRIT_TOKEN", parent)]), 0);
        (
            str_field(&v, "/token").to_string(),
            str_field(&v, "/info/token_id").to_string(),
        )
    };
    // The planner's token branches: booking (which goes on to the hotel) and payments.
    let (booking, booking_id) = downscope(
        &root,
        "planner",
        "booking",
        &[
            "--target",
            "hotel",
            "--scope",
            "trips:book",
            "--claim",
            "amount:max:100",
        ],
    );
    let (_, hotel_id) = downscope(&booking, "booking", "hotel", &["--scope", "trips:book"]);
    let (_, payments_id) = downscope(
        &root,
        "planner",
        "payments",
        &["--scope", "payments:charge"],
    );

    // The operator revokes the booking branch (booking and the hotel).
    let out = writ(
        &[
            "revoke",
            &booking_id,
            "--reason",
            "test",
            "--server",
            &url,
            "--credential-file",
            operator_file,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let chain = |extra: &[&str]| {
        let mut args = vec![
            "chain",
            txn.as_str(),
            "--server",
            url.as_str(),
            "--credential-file",
            operator_file,
        ];
        args.extend_from_slice(extra);
        writ(&args, &[])
    };

    // The tree: a header, then one line per token with tree(1)'s guides.
    let out = chain(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains('\x1b'), "no colour off a terminal: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 4, "{text}");
    assert!(lines[0].starts_with(&txn), "{text}");
    let expect = [
        ("", &root_id, "local-minter -> planner", "active"),
        ("├── ", &booking_id, "planner -> booking", "revoked"),
        ("│   └── ", &hotel_id, "booking -> hotel", "revoked"),
        ("└── ", &payments_id, "planner -> payments", "active"),
    ];
    for (line, (guide, id, hop, status)) in lines[1..].iter().zip(expect) {
        assert!(
            line.starts_with(&format!("{guide}{id}  ")),
            "expected {guide:?}{id} at the start of {line:?}\n{text}"
        );
        assert!(line.contains(hop), "{line}");
        assert!(line.contains(&format!("  {status}  ")), "{line}");
    }
    assert!(!lines[1].contains(" revoked "), "{text}");
    assert!(!lines[4].contains(" revoked "), "{text}");
    // What the booking hop narrowed, on its line.
    assert!(
        lines[2].contains("[") && lines[2].contains("claim amount:"),
        "{text}"
    );
    assert!(
        lines[2].contains("100") && lines[2].contains("500"),
        "{text}"
    );
    assert!(lines[2].contains("targets dropped:"), "{text}");

    // JSON: every token, each parent before its children.
    let v = json_exit(&chain(&["--json"]), 0);
    assert_eq!(str_field(&v, "/txn"), txn);
    assert_eq!(str_field(&v, "/subject"), "alice");
    assert_eq!(v.pointer("/truncated").and_then(Json::as_bool), Some(false));
    let tokens = v
        .pointer("/tokens")
        .and_then(Json::as_array)
        .expect("tokens");
    let ids: Vec<&str> = tokens.iter().map(|t| str_field(t, "/token_id")).collect();
    assert_eq!(
        ids,
        [
            root_id.as_str(),
            booking_id.as_str(),
            hotel_id.as_str(),
            payments_id.as_str()
        ],
        "{v}"
    );
    for (k, t) in tokens.iter().enumerate() {
        if let Some(p) = t.pointer("/parent_token_id").and_then(Json::as_str) {
            let at = ids.iter().position(|i| *i == p).expect("parent listed");
            assert!(at < k, "parent after child: {v}");
        }
        assert_eq!(str_field(t, "/info/token_id"), ids[k]);
    }
    assert_eq!(str_field(&tokens[1], "/status"), "revoked");
    assert_eq!(str_field(&tokens[3], "/status"), "active");
    assert_eq!(
        tokens[0].pointer("/children").and_then(Json::as_u64),
        Some(2)
    );
    assert_eq!(
        str_field(&tokens[1], "/revocation/cause_token_id"),
        booking_id
    );

    // Graphviz: a digraph, one edge per child.
    let out = chain(&["--dot"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let dot = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dot.starts_with("digraph"), "{dot}");
    // Edges are `"parent" -> "child"`; the narrowed labels may hold arrows of their own.
    assert_eq!(dot.matches("\" -> \"").count(), 3, "{dot}");
    assert!(
        dot.contains(&format!("\"{root_id}\" -> \"{payments_id}\"")),
        "{dot}"
    );
    assert!(dot.contains("color=red"), "{dot}");

    // One token with its ancestry, root first.
    let out = writ(
        &[
            "token",
            &hotel_id,
            "--json",
            "--server",
            &url,
            "--credential-file",
            operator_file,
        ],
        &[],
    );
    let v = json_exit(&out, 0);
    assert_eq!(str_field(&v, "/token/token_id"), hotel_id);
    let ancestors: Vec<&str> = v
        .pointer("/ancestors")
        .and_then(Json::as_array)
        .expect("ancestors")
        .iter()
        .map(|a| str_field(a, "/token_id"))
        .collect();
    assert_eq!(ancestors, [root_id.as_str(), booking_id.as_str()], "{v}");
    let out = writ(
        &[
            "token",
            &payments_id,
            "--json",
            "--server",
            &url,
            "--credential-file",
            operator_file,
        ],
        &[],
    );
    let v = json_exit(&out, 0);
    assert_eq!(str_field(&v, "/ancestors/0/token_id"), root_id, "{v}");

    // Unknown ids and non-operators are refused with exit 1 and the server's reason.
    let out = writ(
        &[
            "token",
            "tid_00000000000000000000000000000000",
            "--server",
            &url,
            "--credential-file",
            operator_file,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{}",
        describe(&out)
    );
    let minter_file = srv.credential_file();
    let out = writ(
        &[
            "chain",
            &txn,
            "--server",
            &url,
            "--credential-file",
            minter_file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

#[test]
fn cli_events_and_txns_show_the_trail_and_the_listing() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    let operator_file = srv.data_dir.join("operator.credential");
    let operator_file = operator_file.to_str().expect("utf-8 path");
    let op = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--server", &url, "--credential-file", operator_file]);
        writ(&all, &[])
    };

    // Follow every transaction's minted events, as JSON lines, before anything happens.
    let mut follower = Command::new(WRIT)
        .args([
            "events",
            "--follow",
            "--json",
            "--kind",
            "minted",
            "--server",
            &url,
            "--credential-file",
            operator_file,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning writ events --follow");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower subscribes asynchronously: mint until it reports one (bounded), so
    // the test needs no sleep to know the watch is open.
    let mut followed = None;
    let mut txn = String::new();
    let mut root = String::new();
    for _ in 0..20 {
        let minted = cli_mint(&srv, &[]);
        txn = str_field(&minted, "/info/txn").to_string();
        root = str_field(&minted, "/token").to_string();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            followed = Some(line.expect("reading the follower"));
            break;
        }
    }
    let followed: Json = serde_json::from_str(&followed.expect("the follower printed an event"))
        .expect("a JSON line");
    assert_eq!(str_field(&followed, "/kind"), "minted");
    assert_eq!(str_field(&followed, "/subject"), "alice");
    let _ = follower.kill();
    let _ = follower.wait();

    // Downscope, validate, an escalation, a revocation: each one event.
    let down = writ(
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
        &[("WRIT_TOKEN", root.as_str())],
    );
    let child_token = str_field(&json_exit(&down, 0), "/token").to_string();
    let v = writ(
        &[
            "validate",
            "--server",
            &url,
            "--as",
            "booking",
            "--scope",
            "trips:book",
            "--attr",
            "amount=50",
        ],
        &[("WRIT_TOKEN", child_token.as_str())],
    );
    assert_eq!(v.status.code(), Some(0), "{}", describe(&v));
    let wider = writ(
        &[
            "downscope",
            "--server",
            &url,
            "--as",
            "booking",
            "--audience",
            "hotel",
            "--scope",
            "trips:book",
            "--claim",
            "amount:max:900",
        ],
        &[("WRIT_TOKEN", child_token.as_str())],
    );
    assert_eq!(wider.status.code(), Some(1), "{}", describe(&wider));
    let out = op(&["revoke", &txn, "--reason", "done"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // The trail as text: one line per event, in order, no colour off a terminal.
    let out = op(&["events", &txn]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains('\x1b'), "{text}");
    let kinds: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["minted", "downscoped", "validated", "refused", "revoked"],
        "{text}"
    );
    assert!(text.contains("local-minter -> planner"), "{text}");
    assert!(text.contains("trips:book: allowed"), "{text}");
    assert!(text.contains("audience:"), "{text}");
    assert!(text.contains("whole transaction"), "{text}");
    // And as JSON lines.
    let out = op(&["events", &txn, "--json"]);
    let lines: Vec<Json> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(str_field(&lines[3], "/dimension"), "audience");
    assert_eq!(str_field(&lines[4], "/reason"), "done");

    // The listing: alice's transactions in the last hour, newest first.
    let out = op(&["txns", "--subject", "alice", "--since", "1h", "--json"]);
    let listed = json_exit(&out, 0);
    let list = listed["transactions"].as_array().expect("an array");
    assert!(!list.is_empty());
    assert_eq!(str_field(&list[0], "/txn"), txn);
    assert_eq!(str_field(&list[0], "/status"), "revoked");
    let out = op(&["txns", "--subject", "alice", "--since", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("MINTED"), "{text}");
    assert!(
        rows[1].contains(&txn) && rows[1].contains("revoked"),
        "{text}"
    );
    // Columns line up: every row has its status where the header has STATUS.
    let col = rows[0].find("STATUS").expect("a STATUS column");
    assert!(rows[1..].iter().all(|r| r.len() > col), "{text}");
    let out = op(&["txns", "--subject", "bob", "--json"]);
    assert_eq!(json_exit(&out, 0)["transactions"], serde_json::json!([]));
    // Usage errors exit 2 without contacting anyone.
    let out = op(&["events"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = op(&["txns", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
