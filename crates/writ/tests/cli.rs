//! Process-level tests of the `writ` binary: `writ serve` as a child process, the client
//! commands against it over TLS with client certificates from `writ certs issue`, crash
//! durability (SIGKILL) and clean shutdown (SIGTERM).

mod common;

use serde_json::Value as Json;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");

/// The parties of the tests, as the certificates `writ certs issue` makes name them.
const PLANNER: &str = "spiffe://writ.local/agent/planner";
const BOOKING: &str = "spiffe://writ.local/agent/booking";
const HOTEL: &str = "spiffe://writ.local/agent/hotel";
const MALLORY: &str = "spiffe://writ.local/agent/mallory";
const PAYMENTS: &str = "spiffe://writ.local/workload/payments";

/// Every environment variable `writ serve` reads a setting from.
const SERVE_ENV: [&str; 9] = [
    "WRIT_CONFIG",
    "WRIT_HTTP_LISTEN",
    "WRIT_LISTEN",
    "WRIT_DATA_DIR",
    "WRIT_POLICY",
    "WRIT_OPS_LISTEN",
    "WRIT_LOG_FORMAT",
    "WRIT_LOG_LEVEL",
    "WRIT_OTLP_ENDPOINT",
];

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
    /// Serves TLS (the default); `false` for a configuration with `tls.enabled = false`.
    tls: bool,
}

impl Server {
    /// Starts `writ serve` on a fresh port over `data_dir` and waits until it accepts
    /// connections. `run` numbers the log file so restarts keep earlier logs.
    fn start(data_dir: &Path, run: u32) -> Server {
        Server::start_with(data_dir, run, None)
    }

    /// As [`Server::start`], with a configuration file.
    fn start_with(data_dir: &Path, run: u32, config: Option<&Path>) -> Server {
        Server::launch(data_dir, run, config, true)
    }

    /// As [`Server::start_with`]; `tls` says whether the configuration leaves TLS on.
    /// Logs as text, with the ops listener on an ephemeral port.
    fn launch(data_dir: &Path, run: u32, config: Option<&Path>, tls: bool) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--listen".as_ref(),
            listen.as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ];
        if let Some(c) = config {
            args.extend(["--config".as_ref(), c.as_os_str()]);
        }
        // The OAuth and ops listeners on ephemeral ports: servers run side by side.
        let envs = [
            ("WRIT_HTTP_LISTEN", "127.0.0.1:0"),
            ("WRIT_OPS_LISTEN", "127.0.0.1:0"),
            ("WRIT_LOG_FORMAT", "text"),
        ];
        Server::spawn(data_dir, run, port, &args, &envs, tls)
    }

    /// `writ serve ARGS` with the environment `envs` (and no other `WRIT_*` setting),
    /// expected to listen on `port`.
    fn spawn(
        data_dir: &Path,
        run: u32,
        port: u16,
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &str)],
        tls: bool,
    ) -> Server {
        let log = data_dir
            .parent()
            .expect("data dir has a parent")
            .join(format!("serve-{run}.log"));
        let log_file = File::create(&log).expect("creating the server log");
        let mut cmd = Command::new(WRIT);
        cmd.arg("serve").args(args);
        for v in SERVE_ENV {
            cmd.env_remove(v);
        }
        let child = cmd
            .envs(envs.iter().copied())
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
            tls,
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

    /// The log once it says the server is listening (the port accepts before the store is
    /// open): bounded wait, 100 × 50 ms.
    fn log_when_listening(&self) -> String {
        for _ in 0..100 {
            let log = self.log();
            if log.contains("writ listening") {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no \"writ listening\" within 5 s; log:\n{}", self.log());
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
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The development CA `writ serve` created: what clients trust.
    fn ca(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    /// Where `writ certs issue` writes by default, and `--as` looks.
    fn certs_dir(&self) -> PathBuf {
        self.data_dir.join("certs")
    }

    /// Runs a client command against this server: its CA in `WRIT_CA` and its certificates
    /// in `WRIT_CERTS` (the command line may still override both).
    fn writ(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let ca = self.ca();
        let certs = self.certs_dir();
        let mut all = vec![
            ("WRIT_CA", ca.to_str().expect("utf-8 path")),
            ("WRIT_CERTS", certs.to_str().expect("utf-8 path")),
        ];
        all.extend_from_slice(envs);
        writ(args, &all)
    }

    /// `writ certs issue NAMES --kind KIND` for this server's data directory; returns the
    /// JSON it printed.
    fn issue(&self, kind: &str, names: &[&str]) -> Json {
        let data = self.data_dir.to_str().expect("utf-8 path");
        let mut args = vec![
            "certs",
            "issue",
            "--kind",
            kind,
            "--data-dir",
            data,
            "--json",
        ];
        args.extend_from_slice(names);
        json_exit(&writ(&args, &[]), 0)
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
        "WRIT_CA",
        "WRIT_CERTS",
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

/// Mints alice's token for the planner (which may reach booking) through the CLI; returns
/// the mint JSON.
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
        PLANNER,
        "--target",
        BOOKING,
        "--scope",
        "trips:book",
        "--claim",
        "amount:max:500",
    ];
    args.extend_from_slice(extra);
    json_exit(&srv.writ(&args, &[]), 0)
}

#[test]
fn cli_mint_downscope_validate_and_escalation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    srv.issue("agent", &["planner", "booking"]);

    let minted = cli_mint(&srv, &[]);
    let root = str_field(&minted, "/token").to_string();
    assert!(root.starts_with("writ_"), "{minted}");
    assert_eq!(str_field(&minted, "/info/subject"), "alice");
    assert_eq!(str_field(&minted, "/info/audience/id"), PLANNER);
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
    assert_eq!(str_field(&minted, "/info/actor_auth"), "bearer");

    // The planner, proving its identity with its certificate (--as planner), derives
    // booking's token; the parent comes from WRIT_TOKEN.
    let out = srv.writ(
        &[
            "downscope",
            "--server",
            &url,
            "--json",
            "--as",
            "planner",
            "--audience",
            BOOKING,
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
    assert_eq!(str_field(&derived, "/info/act/id"), PLANNER);
    assert_eq!(str_field(&derived, "/info/actor_auth"), "mtls");
    assert_eq!(str_field(&derived, "/info/act/act/id"), "local-minter");
    assert_eq!(
        derived
            .pointer("/info/agent_traffic")
            .and_then(Json::as_bool),
        Some(true)
    );

    // Booking validates an action within the grant: exit 0, allowed.
    let validate = |caller: &str, amount: &str, token: &str| {
        srv.writ(
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
    assert_eq!(str_field(&v, "/info/audience/id"), BOOKING);

    // Over the child's limit: exit 1, denied by the claim.
    let v = json_exit(&validate("booking", "amount=101", &child), 1);
    assert_eq!(
        v.pointer("/decision/allowed").and_then(Json::as_bool),
        Some(false),
        "{v}"
    );
    assert_eq!(str_field(&v, "/decision/denied_by"), "amount");

    // The wrong audience (the planner's certificate): exit 1, inactive, nothing else said.
    let v = json_exit(&validate("planner", "amount=50", &child), 1);
    assert_eq!(
        v.pointer("/active").and_then(Json::as_bool),
        Some(false),
        "{v}"
    );
    assert_eq!(str_field(&v, "/inactive_reason"), "wrong_audience");
    assert!(v.get("info").is_none(), "{v}");

    // Escalation: a wider amount than the parent's is refused with exit 1.
    let out = srv.writ(
        &[
            "downscope",
            "--server",
            &url,
            "--as",
            "planner",
            "--audience",
            BOOKING,
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
    let out = srv.writ(
        &[
            "downscope",
            "--server",
            &url,
            "--json",
            "--as",
            "planner",
            "--audience",
            BOOKING,
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
    let out = srv.writ(
        &[
            "mint",
            "--server",
            &url,
            "--subject",
            "alice",
            "--audience",
            PLANNER,
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
    srv.issue("agent", &["planner", "booking"]);

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
    let out = srv.writ(
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
    let out = srv.writ(
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
    let out = srv.writ(
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
    let out = srv.writ(
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

    // Anyone else presenting it (booking, with its own certificate) is refused without
    // learning anything.
    let out = srv.writ(
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

    // Its holder revokes it with WRIT_TOKEN and its certificate, no credential at all.
    let out = srv.writ(
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

    // A TARGET is revoked as an operator, never as a holder too: usage error, exit 2.
    let out = srv.writ(
        &[
            "revoke", &other_id, "--as", "planner", "--reason", "x", "--server", &url,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("operator credential"),
        "{}",
        describe(&out)
    );

    // A token is not a TARGET: usage error, exit 2, and the secret is not echoed.
    let out = srv.writ(
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
    let out = srv.writ(
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
    srv.issue("agent", &["planner"]);
    let minted = cli_mint(&srv, &["--ttl", "600"]);
    let token = str_field(&minted, "/token").to_string();
    let txn = str_field(&minted, "/info/txn").to_string();
    let url = srv.url();
    let v = srv.writ(
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

    // The restarted server kept its CA: the certificate issued before the crash still
    // proves the planner.
    let out = srv.writ(
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
    srv.issue("agent", &["planner"]);
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

    // The data directory is reusable after a clean stop, its CA and certificates too.
    let srv = Server::start(&data, 1);
    let out = srv.writ(
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

/// Runs `writ` in `dir` (where the default `writ-data/...` paths resolve).
fn writ_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(WRIT);
    cmd.args(args).current_dir(dir);
    for v in ["WRIT_SERVER", "WRIT_CA", "WRIT_CERTS", "WRIT_CONFIG"] {
        cmd.env_remove(v);
    }
    cmd.envs(envs.iter().copied());
    cmd.stdin(Stdio::null()).output().expect("running writ")
}

#[test]
fn client_commands_fail_cleanly_without_a_server_a_ca_or_a_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).to_string();
    // A port nothing listens on: a connection error is exit 2, not a refusal.
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = writ(
        &["validate", "--server", &url, "--assert-as", "planner"],
        &[("WRIT_TOKEN", "writ_x")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("writ:"), "{}", describe(&out));

    // Over TLS (the default) without the CA: exit 2, saying where it normally is and what
    // creates it.
    let out = writ_in(
        tmp.path(),
        &["mint", "--subject", "alice", "--audience", PLANNER],
        &[("WRIT_MINTER_CREDENTIAL", "wmc_x")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let e = stderr(&out);
    assert!(
        e.contains("writ-data/tls/ca.pem") && e.contains("`writ serve` creates"),
        "{e}"
    );

    // `--as NAME` without NAME's certificate: exit 2, naming the command that makes it.
    let out = writ_in(
        tmp.path(),
        &["validate", "--as", "ghost"],
        &[("WRIT_TOKEN", "writ_x")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let e = stderr(&out);
    assert!(
        e.contains("writ-data/certs/ghost.pem") && e.contains("`writ certs issue ghost`"),
        "{e}"
    );
    // With another certificate directory, the command names the data directory it is in.
    let certs = tmp.path().join("elsewhere").join("certs");
    let certs = certs.to_str().expect("utf-8 path");
    let out = writ_in(
        tmp.path(),
        &["downscope", "--as", "ghost", "--audience", BOOKING],
        &[("WRIT_TOKEN", "writ_x"), ("WRIT_CERTS", certs)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let e = stderr(&out);
    let data = tmp.path().join("elsewhere");
    assert!(
        e.contains(&format!(
            "`writ certs issue ghost --data-dir {}`",
            data.display()
        )),
        "{e}"
    );
    // No identity at all where one is needed: exit 2, listing the ways to give one.
    let out = writ_in(tmp.path(), &["validate"], &[("WRIT_TOKEN", "writ_x")]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("--as NAME"), "{}", describe(&out));
    // `writ certs issue` needs the CA that `writ serve` creates.
    let out = writ_in(tmp.path(), &["certs", "issue", "planner"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("start the server once"),
        "{}",
        describe(&out)
    );
    assert!(!tmp.path().join("writ-data").exists(), "nothing written");
}

#[test]
fn secrets_never_come_from_the_command_line_and_remote_plaintext_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    srv.issue("agent", &["planner"]);
    let root = cli_mint(&srv, &[]);
    let token = str_field(&root, "/token").to_string();
    // No flag takes a token, a credential or a key itself: it would show in the process
    // list.
    for (cmd, flag) in [
        ("validate", "--token"),
        ("downscope", "--token"),
        ("revoke", "--token"),
        ("mint", "--credential"),
        ("chain", "--credential"),
        ("validate", "--key-pem"),
    ] {
        let out = srv.writ(&[cmd, "--server", &url, flag, "secret-value"], &[]);
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
    // --key takes a path: a key pasted in its place is refused, and not echoed.
    let cert = srv.certs_dir().join("planner.pem");
    let cert = cert.to_str().expect("utf-8 path");
    let out = srv.writ(
        &[
            "validate",
            "--server",
            &url,
            "--cert",
            cert,
            "--key",
            "-----BEGIN PRIVATE KEY-----\nsecret-value\n-----END PRIVATE KEY-----",
        ],
        &[("WRIT_TOKEN", &token)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("secret-value") && stderr.contains("path"),
        "{}",
        describe(&out)
    );
    // A key file others can read is refused; the same key, owner-only, works.
    let key = srv.certs_dir().join("planner-key.pem");
    let copy = tmp.path().join("planner-key.pem");
    std::fs::copy(&key, &copy).expect("copying the key");
    let open = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).expect("chmod");
        srv.writ(
            &[
                "validate",
                "--server",
                &url,
                "--cert",
                cert,
                "--key",
                copy.to_str().expect("utf-8 path"),
                "--json",
            ],
            &[("WRIT_TOKEN", &token)],
        )
    };
    let out = open(0o644);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        describe(&out)
    );
    assert_eq!(json_exit(&open(0o600), 0)["active"], true);

    // The token from a file works as from WRIT_TOKEN.
    let file = tmp.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("writing the token file");
    let file = file.to_str().expect("utf-8 path");
    let out = srv.writ(
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
    // Plaintext (http://) to a server that is not on loopback is refused unless --insecure
    // says otherwise.
    let out = srv.writ(
        &[
            "validate",
            "--server",
            "http://192.0.2.1:7433",
            "--assert-as",
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
    // A client certificate is never offered over plaintext, loopback or not.
    for server in ["http://192.0.2.1:7433", "http://127.0.0.1:7433"] {
        let out = srv.writ(
            &["validate", "--server", server, "--as", "planner"],
            &[("WRIT_TOKEN", &token)],
        );
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs TLS"),
            "{}",
            describe(&out)
        );
    }
    // Plaintext to this TLS server fails as a connection error (exit 2), not a refusal.
    let plain = url.replacen("https://", "http://", 1);
    let out = srv.writ(
        &["validate", "--server", &plain, "--assert-as", "planner"],
        &[("WRIT_TOKEN", &token)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn cli_chain_and_token_show_the_call_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    let operator_file = srv.data_dir.join("operator.credential");
    let operator_file = operator_file.to_str().expect("utf-8 path");
    srv.issue("agent", &["planner", "booking", "hotel"]);
    srv.issue("workload", &["payments"]);

    // alice's token for the planner, which may reach booking, payments and hotel.
    let minted = cli_mint(
        &srv,
        &[
            "--target",
            PAYMENTS,
            "--target",
            HOTEL,
            "--scope",
            "payments:charge",
        ],
    );
    let root = str_field(&minted, "/token").to_string();
    let root_id = str_field(&minted, "/info/token_id").to_string();
    let txn = str_field(&minted, "/info/txn").to_string();

    // `caller` is the name of the certificate presented, `audience` a SPIFFE ID.
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
        let v = json_exit(&srv.writ(&args, &[("WRIT_TOKEN", parent)]), 0);
        (
            str_field(&v, "/token").to_string(),
            str_field(&v, "/info/token_id").to_string(),
        )
    };
    // The planner's token branches: booking (which goes on to the hotel) and payments.
    let (booking, booking_id) = downscope(
        &root,
        "planner",
        BOOKING,
        &[
            "--target",
            HOTEL,
            "--scope",
            "trips:book",
            "--claim",
            "amount:max:100",
        ],
    );
    let (_, hotel_id) = downscope(&booking, "booking", HOTEL, &["--scope", "trips:book"]);
    let (_, payments_id) = downscope(
        &root,
        "planner",
        PAYMENTS,
        &["--audience-kind", "workload", "--scope", "payments:charge"],
    );

    // The operator revokes the booking branch (booking and the hotel).
    let out = srv.writ(
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
        srv.writ(&args, &[])
    };

    // The tree: a header, then one line per token with tree(1)'s guides.
    let out = chain(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains('\x1b'), "no colour off a terminal: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 4, "{text}");
    assert!(lines[0].starts_with(&txn), "{text}");
    let hop = |from: &str, to: &str| format!("{from} -> {to}");
    let expect = [
        ("", &root_id, hop("local-minter", PLANNER), "active"),
        ("├── ", &booking_id, hop(PLANNER, BOOKING), "revoked"),
        ("│   └── ", &hotel_id, hop(BOOKING, HOTEL), "revoked"),
        ("└── ", &payments_id, hop(PLANNER, PAYMENTS), "active"),
    ];
    for (line, (guide, id, hop, status)) in lines[1..].iter().zip(expect) {
        assert!(
            line.starts_with(&format!("{guide}{id}  ")),
            "expected {guide:?}{id} at the start of {line:?}\n{text}"
        );
        assert!(line.contains(&hop), "{line}");
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
    let out = srv.writ(
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
    let out = srv.writ(
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
    let out = srv.writ(
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
    let out = srv.writ(
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
    srv.issue("agent", &["planner", "booking"]);
    let op = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--server", &url, "--credential-file", operator_file]);
        srv.writ(&all, &[])
    };

    // Follow every transaction's minted events, as JSON lines, before anything happens.
    let mut follower = Command::new(WRIT)
        .env("WRIT_CA", srv.ca())
        .env_remove("WRIT_SERVER")
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
    let down = srv.writ(
        &[
            "downscope",
            "--server",
            &url,
            "--json",
            "--as",
            "planner",
            "--audience",
            BOOKING,
            "--scope",
            "trips:book",
            "--claim",
            "amount:max:100",
        ],
        &[("WRIT_TOKEN", root.as_str())],
    );
    let child_token = str_field(&json_exit(&down, 0), "/token").to_string();
    let v = srv.writ(
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
    let wider = srv.writ(
        &[
            "downscope",
            "--server",
            &url,
            "--as",
            "booking",
            "--audience",
            HOTEL,
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
    assert!(
        text.contains(&format!("local-minter -> {PLANNER}")),
        "{text}"
    );
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
    // Who acted, and how each proved it: the minter by its credential, the agents by
    // their certificates.
    let actors: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (str_field(l, "/actor"), str_field(l, "/actor_auth")))
        .collect();
    assert_eq!(
        actors,
        [
            ("local-minter", "bearer"),
            (PLANNER, "mtls"),
            (BOOKING, "mtls"),
            (BOOKING, "mtls"),
            ("local-operator", "bearer"),
        ]
    );
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

#[test]
fn certs_issue_writes_owner_only_keys_and_prints_the_spiffe_ids() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let data = srv.data_dir.to_str().expect("utf-8 path");
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };

    // Text: one line per certificate, its SPIFFE ID first, then the files.
    let out = writ(
        &[
            "certs",
            "issue",
            "planner",
            "booking",
            "--kind",
            "agent",
            "--data-dir",
            data,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, (id, name)) in lines
        .iter()
        .zip([(PLANNER, "planner"), (BOOKING, "booking")])
    {
        let cert = srv.certs_dir().join(format!("{name}.pem"));
        let key = srv.certs_dir().join(format!("{name}-key.pem"));
        assert!(line.starts_with(&format!("{id}  ")), "{text}");
        assert!(line.contains(&cert.display().to_string()), "{text}");
        assert!(line.ends_with(&key.display().to_string()), "{text}");
        assert_eq!(mode(&key), 0o600, "{}", key.display());
        assert_eq!(mode(&cert), 0o644, "{}", cert.display());
        let pem = std::fs::read_to_string(&key).expect("the key");
        assert!(pem.contains("PRIVATE KEY"), "a PEM key");
        assert!(!text.contains(pem.lines().nth(1).expect("a body line")));
    }
    assert!(lines[2].starts_with("expires "), "{text}");
    assert_eq!(mode(&srv.certs_dir()), 0o700);

    // JSON, a workload, another directory.
    let out_dir = tmp.path().join("apis");
    let issued = json_exit(
        &writ(
            &[
                "certs",
                "issue",
                "payments",
                "--kind",
                "workload",
                "--data-dir",
                data,
                "--out",
                out_dir.to_str().expect("utf-8 path"),
                "--days",
                "2",
                "--json",
            ],
            &[],
        ),
        0,
    );
    assert_eq!(str_field(&issued, "/issued/0/spiffe_id"), PAYMENTS);
    assert_eq!(str_field(&issued, "/issued/0/name"), "payments");
    let key = PathBuf::from(str_field(&issued, "/issued/0/key"));
    assert_eq!(key, out_dir.join("payments-key.pem"));
    assert_eq!(mode(&key), 0o600);

    // Existing files are kept unless --replace; then the key is new and still 0600.
    let key = srv.certs_dir().join("planner-key.pem");
    let before = std::fs::read(&key).expect("the key");
    let again = |extra: &[&str]| {
        let mut args = vec!["certs", "issue", "planner", "--data-dir", data];
        args.extend_from_slice(extra);
        writ(&args, &[])
    };
    let out = again(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--replace"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read(&key).expect("the key"), before, "left alone");
    let out = again(&["--replace"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_ne!(std::fs::read(&key).expect("the key"), before, "replaced");
    assert_eq!(mode(&key), 0o600);

    // A NAME is one SPIFFE path segment and a file name; one bad NAME issues nothing.
    for bad in [
        "a/b",
        ".hidden",
        "spiffe://writ.local/agent/x",
        "tab\tname",
        "",
    ] {
        let out = writ(&["certs", "issue", "fine", bad, "--data-dir", data], &[]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", describe(&out));
    }
    assert!(!srv.certs_dir().join("fine.pem").exists());
    // The CA belongs to one trust domain.
    let out = writ(
        &[
            "certs",
            "issue",
            "x",
            "--data-dir",
            data,
            "--trust-domain",
            "other.test",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // The issued certificates work: one named by files (--cert/--key), one by --as with
    // the directory on the command line.
    srv.issue("agent", &["hotel"]);
    let minted = cli_mint(&srv, &[]);
    let token = str_field(&minted, "/token");
    let url = srv.url();
    let certs = srv.certs_dir();
    let ca = srv.ca();
    let planner_cert = certs.join("planner.pem");
    let out = writ(
        &[
            "validate",
            "--server",
            &url,
            "--ca",
            ca.to_str().expect("utf-8 path"),
            "--cert",
            planner_cert.to_str().expect("utf-8 path"),
            "--key",
            key.to_str().expect("utf-8 path"),
            "--json",
        ],
        &[("WRIT_TOKEN", token)],
    );
    assert_eq!(json_exit(&out, 0)["active"], true);
    let out = writ(
        &[
            "validate",
            "--server",
            &url,
            "--ca",
            ca.to_str().expect("utf-8 path"),
            "--certs-dir",
            certs.to_str().expect("utf-8 path"),
            "--as",
            "hotel",
            "--json",
        ],
        &[("WRIT_TOKEN", token)],
    );
    let v = json_exit(&out, 1);
    assert_eq!(str_field(&v, "/inactive_reason"), "wrong_audience", "{v}");
}

#[test]
fn a_stolen_token_is_refused_to_every_other_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(&tmp.path().join("data"), 0);
    let url = srv.url();
    srv.issue("agent", &["planner", "booking", "mallory"]);
    srv.issue("workload", &["payments"]);

    // alice's chain: the planner derives booking's token, which may reach payments.
    let minted = cli_mint(&srv, &["--target", PAYMENTS, "--scope", "payments:charge"]);
    let root = str_field(&minted, "/token").to_string();
    let txn = str_field(&minted, "/info/txn").to_string();
    let out = srv.writ(
        &[
            "downscope",
            "--server",
            &url,
            "--json",
            "--as",
            "planner",
            "--audience",
            BOOKING,
            "--target",
            PAYMENTS,
            "--scope",
            "payments:charge",
        ],
        &[("WRIT_TOKEN", &root)],
    );
    let booking = json_exit(&out, 0);
    let stolen = str_field(&booking, "/token").to_string();
    let stolen_id = str_field(&booking, "/info/token_id").to_string();

    // Mallory copied booking's token. Presented with mallory's certificate (or the
    // planner's, who handed it on) it is worth nothing.
    for thief in ["mallory", "planner"] {
        // Validate: inactive, wrong audience, nothing of its context.
        let out = srv.writ(
            &["validate", "--server", &url, "--as", thief, "--json"],
            &[("WRIT_TOKEN", &stolen)],
        );
        let v = json_exit(&out, 1);
        assert_eq!(str_field(&v, "/inactive_reason"), "wrong_audience", "{v}");
        assert!(v.get("info").is_none(), "{v}");
        // Downscope: refused, the caller does not hold it.
        let out = srv.writ(
            &[
                "downscope",
                "--server",
                &url,
                "--as",
                thief,
                "--audience",
                PAYMENTS,
                "--audience-kind",
                "workload",
                "--scope",
                "payments:charge",
            ],
            &[("WRIT_TOKEN", &stolen)],
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("PERMISSION_DENIED") && e.contains("does not hold"),
            "{e}"
        );
        assert!(out.stdout.is_empty(), "no token: {}", describe(&out));
        // Revoke (a denial of service): refused as if it were no token at all.
        let out = srv.writ(
            &[
                "revoke", "--server", &url, "--as", thief, "--reason", "mine now",
            ],
            &[("WRIT_TOKEN", &stolen)],
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("UNAUTHENTICATED") && e.contains("not a valid token"),
            "{e}"
        );
    }
    // Claiming to be booking without its certificate: refused, development mode is off.
    let out = srv.writ(
        &["validate", "--server", &url, "--assert-as", BOOKING],
        &[("WRIT_TOKEN", &stolen)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("UNAUTHENTICATED") && e.contains("x-writ-caller"),
        "{e}"
    );
    // Two ways of naming the caller at once are a usage error.
    let out = srv.writ(
        &[
            "validate",
            "--server",
            &url,
            "--as",
            "mallory",
            "--assert-as",
            BOOKING,
        ],
        &[("WRIT_TOKEN", &stolen)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // Booking's token is untouched: booking still uses it, and the trail names the thief.
    let out = srv.writ(
        &[
            "downscope",
            "--server",
            &url,
            "--json",
            "--as",
            "booking",
            "--audience",
            PAYMENTS,
            "--audience-kind",
            "workload",
            "--scope",
            "payments:charge",
        ],
        &[("WRIT_TOKEN", &stolen)],
    );
    json_exit(&out, 0);
    let out = srv.writ(
        &[
            "events",
            &txn,
            "--json",
            "--server",
            &url,
            "--credential-file",
            srv.data_dir
                .join("operator.credential")
                .to_str()
                .expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let events: Vec<Json> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let refused: Vec<&Json> = events
        .iter()
        .filter(|e| str_field(e, "/kind") == "refused")
        .collect();
    assert!(
        refused.iter().any(|e| str_field(e, "/actor") == MALLORY
            && str_field(e, "/actor_auth") == "mtls"
            && str_field(e, "/token_id") == stolen_id),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| str_field(e, "/kind") == "revoked"),
        "{events:?}"
    );
}

#[test]
fn development_mode_accepts_asserted_identities_over_tls_and_plaintext() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("writ.toml");
    let data = tmp.path().join("data");

    // Development mode over TLS: --assert-as names the caller, unproven.
    std::fs::write(&config, "[auth]\nasserted_identities = true\n").expect("config");
    let srv = Server::start_with(&data, 0, Some(&config));
    assert!(srv.log().contains("DEVELOPMENT MODE"), "{}", srv.log());
    let url = srv.url();
    let minted = json_exit(
        &srv.writ(
            &[
                "mint",
                "--server",
                &url,
                "--json",
                "--credential-file",
                srv.credential_file().to_str().expect("utf-8 path"),
                "--subject",
                "alice",
                "--audience",
                "planner",
            ],
            &[],
        ),
        0,
    );
    let token = str_field(&minted, "/token").to_string();
    let v = json_exit(
        &srv.writ(
            &[
                "validate",
                "--server",
                &url,
                "--assert-as",
                "planner",
                "--json",
            ],
            &[("WRIT_TOKEN", &token)],
        ),
        0,
    );
    assert_eq!(v["active"], true, "{v}");
    // The trail marks the unproven identity.
    let out = srv.writ(
        &[
            "events",
            str_field(&minted, "/info/txn"),
            "--server",
            &url,
            "--credential-file",
            srv.data_dir
                .join("operator.credential")
                .to_str()
                .expect("utf-8 path"),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("planner (asserted)"), "{text}");
    drop(srv);

    // And over plaintext (tls.enabled = false, an http:// address).
    std::fs::write(
        &config,
        "[auth]\nasserted_identities = true\n[tls]\nenabled = false\n",
    )
    .expect("config");
    let srv = Server::launch(&data, 1, Some(&config), false);
    let url = srv.url();
    assert!(url.starts_with("http://"), "{url}");
    let v = json_exit(
        &writ(
            &[
                "validate",
                "--server",
                &url,
                "--assert-as",
                "planner",
                "--json",
            ],
            &[("WRIT_TOKEN", &token)],
        ),
        0,
    );
    assert_eq!(v["active"], true, "{v}");
}

/// `writ policy check` validates a policy file offline: the example prints what each
/// party may hold; a bad file fails naming the field, and the server refuses to start on it.
#[test]
fn policy_check_reports_a_good_file_and_refuses_a_bad_one() {
    let example = common::repo_root().join("deploy/policy.example.toml");
    let example = example.to_str().expect("a UTF-8 path");
    let o = writ(&["policy", "check", example], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains("spiffe://writ.local/agent/booking"),
        "{report}"
    );
    assert!(report.contains("payments:charge"), "{report}");

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "trust_domain = \"writ.local\"\n[parties.\"spiffe://writ.local/agent/x\"]\nkind = \"robot\"\nclient_type = \"confidential\"\nroles = [\"agent\"]\nscopes = []\n",
    )
    .expect("writing the policy");
    let o = writ(&["policy", "check", bad.to_str().expect("utf-8")], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kind") || err.contains("robot"), "{err}");
}

#[test]
fn version_and_the_precedence_of_settings_are_documented() {
    let out = writ(&["--version"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("writ {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = writ(&["serve", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "precedence",
        "WRIT_CONFIG",
        "[env: WRIT_LISTEN=]",
        "[env: WRIT_OPS_LISTEN=]",
        "[env: WRIT_LOG_FORMAT=]",
        "command-line flags",
    ] {
        assert!(help.contains(needle), "no {needle:?} in:\n{help}");
    }
}

/// Defaults < the configuration file (--config or WRIT_CONFIG) < the environment < flags:
/// the same setting from each layer, and the server listens (and logs) as the highest
/// layer says.
#[test]
fn serve_settings_come_from_flags_over_environment_over_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = tmp.path().join("writ.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\n[observability]\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n"
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path");
    let data_arg = data.as_os_str();
    let is_json = |log: &str| {
        let first = log.lines().next().unwrap_or_default();
        serde_json::from_str::<Json>(first).is_ok()
    };

    // The file over the defaults (7433, text on no terminal would be JSON anyway: the
    // file says json, and the next layers say otherwise).
    let srv = Server::spawn(
        &data,
        0,
        file_port,
        &[
            "--config".as_ref(),
            config.as_ref(),
            "--data-dir".as_ref(),
            data_arg,
        ],
        &[],
        true,
    );
    let log = srv.log_when_listening();
    assert!(is_json(&log), "{log}");
    drop(srv);

    // The environment over the file (named by WRIT_CONFIG this time).
    let env_listen = format!("127.0.0.1:{env_port}");
    let envs = [
        ("WRIT_CONFIG", config),
        ("WRIT_LISTEN", env_listen.as_str()),
        ("WRIT_LOG_FORMAT", "text"),
    ];
    let srv = Server::spawn(
        &data,
        1,
        env_port,
        &["--data-dir".as_ref(), data_arg],
        &envs,
        true,
    );
    let log = srv.log_when_listening();
    assert!(!is_json(&log), "{log}");
    assert!(log.contains(&env_listen), "{log}");
    drop(srv);

    // Flags over the environment.
    let flag_listen = format!("127.0.0.1:{flag_port}");
    let srv = Server::spawn(
        &data,
        2,
        flag_port,
        &[
            "--data-dir".as_ref(),
            data_arg,
            "--listen".as_ref(),
            flag_listen.as_ref(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ],
        &envs,
        true,
    );
    let log = srv.log_when_listening();
    assert!(is_json(&log), "{log}");
    assert!(log.contains(&flag_listen), "{log}");
}

/// `writ keys list|rotate` as the operator, and `writ validate --jwt`; an acknowledged
/// rotation survives SIGKILL.
#[test]
fn cli_keys_rotate_survives_sigkill_and_validate_prints_a_jwt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut srv = Server::start(&data, 0);
    srv.issue("workload", &["payments"]);
    srv.issue("agent", &["planner"]);
    let operator = data.join("operator.credential");
    let operator = operator.to_str().expect("utf-8 path");
    let url = srv.url();
    let keys = |srv: &Server, command: &str| {
        let out = srv.writ(
            &[
                "keys",
                command,
                "--json",
                "--server",
                &srv.url(),
                "--credential-file",
                operator,
            ],
            &[],
        );
        json_exit(&out, 0)
    };
    // (kid, state) of every key.
    let states = |v: &Json| -> Vec<(String, String)> {
        v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| (str_field(k, "/kid").into(), str_field(k, "/state").into()))
            .collect()
    };
    let before = keys(&srv, "list");
    assert_eq!(states(&before).len(), 4, "{before}");
    assert_eq!(before["jwks"]["keys"].as_array().map(Vec::len), Some(4));
    let signing = |v: &Json| -> String {
        let k = v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["signing"] == true)
            .expect("a signing key");
        str_field(k, "/kid").to_string()
    };
    let old = signing(&before);

    // The development policy lets a workload receive a JWT, never an agent.
    let cred = srv.credential_file();
    let mint = |audience: &str, kind: &str| {
        let out = srv.writ(
            &[
                "mint",
                "--server",
                &url,
                "--json",
                "--credential-file",
                cred.to_str().expect("utf-8 path"),
                "--subject",
                "alice",
                "--audience",
                audience,
                "--audience-kind",
                kind,
                "--scope",
                "trips:book",
            ],
            &[],
        );
        str_field(&json_exit(&out, 0), "/token").to_string()
    };
    let token = mint(PAYMENTS, "workload");
    let out = srv.writ(
        &[
            "validate", "--server", &url, "--as", "payments", "--jwt", "--json",
        ],
        &[("WRIT_TOKEN", &token)],
    );
    let v = json_exit(&out, 0);
    let jwt = str_field(&v, "/txn_token_jwt");
    assert_eq!(jwt.split('.').count(), 3, "{v}");
    let out = srv.writ(
        &["validate", "--server", &url, "--as", "payments", "--jwt"],
        &[("WRIT_TOKEN", &token)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("jwt         {}", &jwt[..20])),
        "{}",
        describe(&out)
    );
    let agent_token = mint(PLANNER, "agent");
    let out = srv.writ(
        &["validate", "--server", &url, "--as", "planner", "--jwt"],
        &[("WRIT_TOKEN", &agent_token)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("txn_token_jwt"),
        "{}",
        describe(&out)
    );

    let rotated = keys(&srv, "rotate");
    assert_ne!(signing(&rotated), old);
    assert!(
        states(&rotated).contains(&(old.clone(), "retired".into())),
        "{rotated}"
    );
    let text = srv.writ(
        &[
            "keys",
            "list",
            "--server",
            &url,
            "--credential-file",
            operator,
        ],
        &[],
    );
    assert_eq!(text.status.code(), Some(0), "{}", describe(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("KID"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&old) && l.contains("retired") && l.contains("removed 20")),
        "{text}"
    );

    // Acknowledged, so on disk: a crash right after keeps it.
    srv.kill_hard();
    let srv = Server::start(&data, 1);
    let after = keys(&srv, "list");
    assert_eq!(states(&after), states(&rotated));
    // Rotations are logged by kid, never with key material.
    let logs = ["serve-0.log", "serve-1.log"]
        .map(|f| std::fs::read_to_string(tmp.path().join(f)).expect("a server log"));
    assert!(logs[0].contains("JWT signing keys rotated") && logs[0].contains(&old));
    assert!(logs.iter().all(|l| !l.contains("PRIVATE KEY")));
    drop(srv);
}

/// `writ consent request|list|show|approve|deny|redeem`: the agent asks, an approver app
/// (or the operator) decides for the user, the agent redeems, the API checks the action.
#[test]
fn cli_consent_request_decide_and_redeem() {
    const WALLET: &str = "spiffe://writ.local/workload/wallet";
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
trust_domain = "writ.local"
[scopes."payments:charge"]
description = "Charge the user's card"
high_privilege = true
[parties."{PLANNER}"]
kind = "agent"
client_type = "confidential"
roles = ["agent"]
scopes = ["payments:charge"]
[parties."{BOOKING}"]
name = "Booking agent"
kind = "agent"
client_type = "confidential"
roles = ["agent"]
scopes = ["payments:charge"]
[parties."{PAYMENTS}"]
kind = "workload"
client_type = "confidential"
roles = ["resource_server"]
scopes = ["payments:charge"]
[parties."{WALLET}"]
kind = "workload"
client_type = "confidential"
roles = ["approver"]
"#
        ),
    )
    .expect("writing the policy");
    let config = tmp.path().join("writ.toml");
    std::fs::write(
        &config,
        format!("policy = {:?}\n", policy.display().to_string()),
    )
    .expect("writing the configuration");
    let srv = Server::start_with(&tmp.path().join("data"), 0, Some(&config));
    let url = srv.url();
    let operator_file = srv.data_dir.join("operator.credential");
    let operator_file = operator_file.to_str().expect("utf-8 path");
    srv.issue("agent", &["planner", "booking"]);
    srv.issue("workload", &["payments", "wallet"]);
    let minted = cli_mint_scoped(&srv);
    let root = str_field(&minted, "/token").to_string();
    let txn = str_field(&minted, "/info/txn").to_string();
    let booking = json_exit(
        &srv.writ(
            &[
                "downscope",
                "--server",
                &url,
                "--json",
                "--as",
                "planner",
                "--audience",
                BOOKING,
                "--target",
                PAYMENTS,
                "--scope",
                "payments:charge",
            ],
            &[("WRIT_TOKEN", &root)],
        ),
        0,
    );
    let booking = str_field(&booking, "/token").to_string();
    let shown = booking_validated(&srv, &booking);
    assert_eq!(
        shown.pointer("/info/latent_scopes"),
        Some(&serde_json::json!(["payments:charge"])),
        "{shown}"
    );

    let request = |amount: &str| {
        let attr = format!("amount={amount}");
        json_exit(
            &srv.writ(
                &[
                    "consent",
                    "request",
                    "--server",
                    &url,
                    "--json",
                    "--as",
                    "booking",
                    "--resource",
                    PAYMENTS,
                    "--scope",
                    "payments:charge",
                    "--attr",
                    &attr,
                    "--reason",
                    "the Lisbon flight",
                ],
                &[("WRIT_TOKEN", &booking)],
            ),
            0,
        )
    };
    let asked = request("450");
    let id = str_field(&asked, "/id").to_string();
    assert!(
        str_field(&asked, "/consent_url").starts_with("https://localhost:7434/consent/"),
        "{asked}"
    );
    assert_eq!(str_field(&asked, "/request/status"), "pending");

    let op = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", url.as_str(), "--credential-file", operator_file]);
        srv.writ(&all, &[])
    };
    let listed = json_exit(&op(&["consent", "list", "--json", "--txn", &txn]), 0);
    assert_eq!(str_field(&listed, "/requests/0/id"), id);
    let shown = op(&["consent", "show", &id]);
    assert_eq!(shown.status.code(), Some(0), "{}", describe(&shown));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("pending"), "{text}");
    assert!(
        text.contains("Charge the user's card (payments:charge) with amount = 450"),
        "{text}"
    );

    // The approver app decides for alice, and only for alice.
    let wrong = srv.writ(
        &[
            "consent",
            "approve",
            &id,
            "--server",
            &url,
            "--as",
            "wallet",
            "--subject",
            "mallory",
        ],
        &[],
    );
    assert_eq!(wrong.status.code(), Some(1), "{}", describe(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("PERMISSION_DENIED"),
        "{}",
        describe(&wrong)
    );
    let approved = json_exit(
        &srv.writ(
            &[
                "consent",
                "approve",
                &id,
                "--server",
                &url,
                "--json",
                "--as",
                "wallet",
                "--subject",
                "alice",
            ],
            &[],
        ),
        0,
    );
    assert_eq!(str_field(&approved, "/status"), "approved");
    assert_eq!(str_field(&approved, "/decision/channel"), "back_channel");
    assert_eq!(str_field(&approved, "/decision/by"), WALLET);

    let redeemed = json_exit(
        &srv.writ(
            &[
                "consent", "redeem", &id, "--server", &url, "--json", "--as", "booking",
            ],
            &[("WRIT_TOKEN", &booking)],
        ),
        0,
    );
    assert_eq!(str_field(&redeemed, "/info/consent_request_id"), id);
    assert_eq!(str_field(&redeemed, "/info/audience/id"), PAYMENTS);
    let single = str_field(&redeemed, "/token").to_string();
    let check = |amount: &str| {
        let attr = format!("amount={amount}");
        srv.writ(
            &[
                "validate",
                "--server",
                &url,
                "--as",
                "payments",
                "--scope",
                "payments:charge",
                "--attr",
                &attr,
            ],
            &[("WRIT_TOKEN", &single)],
        )
    };
    let other = check("451");
    assert_eq!(other.status.code(), Some(1), "{}", describe(&other));
    let allowed = check("450");
    assert_eq!(allowed.status.code(), Some(0), "{}", describe(&allowed));

    // The operator denies another request for alice.
    let second = request("300");
    let second_id = str_field(&second, "/id");
    let denied = json_exit(
        &op(&["consent", "deny", second_id, "--subject", "alice", "--json"]),
        0,
    );
    assert_eq!(str_field(&denied, "/status"), "denied");
    assert_eq!(str_field(&denied, "/decision/channel"), "operator");
    let kinds = event_kinds(&srv, &txn);
    for k in [
        "consent_requested",
        "consent_approved",
        "consent_redeemed",
        "consent_denied",
    ] {
        assert!(kinds.iter().any(|e| e == k), "{k}: {kinds:?}");
    }
}

/// alice's token for the planner holding the latent `payments:charge`, via the CLI.
fn cli_mint_scoped(srv: &Server) -> Json {
    let url = srv.url();
    let cred = srv.credential_file();
    json_exit(
        &srv.writ(
            &[
                "mint",
                "--server",
                &url,
                "--json",
                "--credential-file",
                cred.to_str().expect("utf-8 path"),
                "--subject",
                "alice",
                "--audience",
                PLANNER,
                "--target",
                BOOKING,
                "--target",
                PAYMENTS,
                "--scope",
                "payments:charge",
                "--claim",
                "amount:max:1000",
            ],
            &[],
        ),
        0,
    )
}

/// What `writ validate --json` shows the booking agent of its token.
fn booking_validated(srv: &Server, token: &str) -> Json {
    let url = srv.url();
    json_exit(
        &srv.writ(
            &["validate", "--server", &url, "--json", "--as", "booking"],
            &[("WRIT_TOKEN", token)],
        ),
        0,
    )
}
