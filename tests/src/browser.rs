//! The consent page's harness: a Writ server whose issuer is its own HTTP listener's
//! origin (so consent URLs open as they are, and the browser's `Origin` is Writ's), a
//! consent link reached the way an agent reaches one (mint → downscope →
//! RequestConsent over gRPC), an HTTPS client with a cookie store, and a real headless
//! Chromium (Debian's `chromium` and `chromium-driver`) driven over WebDriver by
//! thirtyfour.
//!
//! Without Chromium or chromedriver a browser test prints a loud SKIP notice and passes,
//! unless `WRIT_REQUIRE_BROWSER=1` (CI installs them and sets it): then it fails.

use crate::{Config, TestServer, build, pb, strings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::metadata::MetadataValue;

/// The parties, the high-privilege scope and its description: the gRPC consent suite's.
pub use crate::consent::{BOOKING, CHARGE, CHARGE_DESCRIPTION, PAYMENTS, PLANNER};
/// The user.
pub const ALICE: &str = "alice";

/// A policy in which `payments:charge` is high-privilege: planner and booking are AI
/// agents with display names, payments a resource server.
pub fn consent_policy() -> String {
    format!(
        r#"
trust_domain = "writ.local"

[scopes."trips:read"]
description = "Read the user's trips"

[scopes."{CHARGE}"]
description = "{CHARGE_DESCRIPTION}"
high_privilege = true

[parties."{PLANNER}"]
name = "Trip planner"
kind = "agent"
client_type = "confidential"
roles = ["agent"]
scopes = ["trips:read", "{CHARGE}"]

[parties."{BOOKING}"]
name = "Booking agent"
kind = "agent"
client_type = "confidential"
roles = ["agent"]
scopes = ["trips:read", "{CHARGE}"]

[parties."{PAYMENTS}"]
name = "Payments API"
kind = "workload"
client_type = "confidential"
roles = ["resource_server"]
scopes = ["{CHARGE}"]
"#
    )
}

/// A server in development mode (parties asserted by id) under [`consent_policy`], whose
/// issuer is `https://127.0.0.1:PORT` of its own HTTP listener, after `configure`.
///
/// The listener's port is known only once the server runs, so it starts once, then
/// restarts on the same data directory with `http.listen` and `issuer` naming that port.
pub async fn consent_server(
    configure: impl FnOnce(&mut Config),
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, consent_policy()).expect("writing the policy");
    let mut srv = TestServer::start_with(|c| {
        c.policy = Some(policy);
        configure(c);
    })
    .await;
    let port = srv.http_addr().port();
    srv.restart_with(|c| {
        c.http.listen = SocketAddr::from(([127, 0, 0, 1], port));
        c.issuer = Some(format!("https://127.0.0.1:{port}"));
    })
    .await;
    assert_eq!(srv.http_addr().port(), port);
    (srv, dir)
}

/// What an agent holds once it asked for consent.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The booking agent's token (the one it asked with).
    pub token: String,
    /// The consent request's id.
    pub id: String,
    /// The consent URL as Writ answered it.
    pub url: String,
    /// The transaction.
    pub txn: String,
}

/// The action the booking agent asks for: charging `amount` EUR to alice's card.
pub fn charge(amount: i64) -> pb::Action {
    pb::Action {
        scope: CHARGE.into(),
        attributes: [
            ("amount".to_string(), build::int(amount)),
            ("currency".to_string(), build::str("EUR")),
        ]
        .into(),
    }
}

/// A raw TokenService client acting as `caller` (asserted, development mode).
pub async fn token_service(
    srv: &TestServer,
    caller: &str,
) -> (
    pb::token_service_client::TokenServiceClient<tonic::transport::Channel>,
    MetadataValue<tonic::metadata::Ascii>,
) {
    let client = pb::token_service_client::TokenServiceClient::new(srv.channel().await);
    (client, caller.parse().expect("an ASCII caller id"))
}

/// `msg` as `caller` (`x-writ-caller`).
pub fn as_caller<T>(caller: &MetadataValue<tonic::metadata::Ascii>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-writ-caller", caller.clone());
    r
}

/// alice's transaction for a Lisbon trip: the planner's root, the booking agent's child
/// (for payments), and the booking agent's RequestConsent for charging `amount` EUR with
/// `reason`. (No amount ceiling: the page is under test here, not the claim lattice.)
pub async fn ask(srv: &TestServer, amount: i64, reason: &str) -> Asked {
    let root = srv
        .mint(pb::MintRequest {
            subject: ALICE.into(),
            audience: Some(build::agent(PLANNER)),
            targets: strings(&[BOOKING, PAYMENTS]),
            scopes: strings(&["trips:read", CHARGE]),
            purpose: "Lisbon trip".into(),
            ..Default::default()
        })
        .await;
    let child = srv
        .downscope(
            PLANNER,
            pb::DownscopeRequest {
                parent_token: root.token.clone(),
                audience: Some(build::agent(BOOKING)),
                targets: strings(&[PAYMENTS]),
                scopes: strings(&[CHARGE]),
                ..Default::default()
            },
        )
        .await;
    let (mut client, booking) = token_service(srv, BOOKING).await;
    let answer = client
        .request_consent(as_caller(
            &booking,
            pb::RequestConsentRequest {
                token: child.token.clone(),
                action: Some(charge(amount)),
                resource: PAYMENTS.into(),
                reason: reason.into(),
            },
        ))
        .await
        .expect("RequestConsent")
        .into_inner();
    let request = answer.request.expect("the request");
    Asked {
        token: child.token,
        id: request.id,
        url: answer.consent_url,
        txn: root.info.map(|i| i.txn).unwrap_or_default(),
    }
}

/// The consent request `id` as an operator sees it.
pub async fn consent_info(srv: &TestServer, id: &str) -> pb::ConsentRequestInfo {
    let mut chain = pb::chain_service_client::ChainServiceClient::new(srv.channel().await);
    let mut r = tonic::Request::new(pb::GetConsentRequest { id: id.into() });
    let bearer: MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", srv.operator_credential().trim())
            .parse()
            .expect("ASCII");
    r.metadata_mut().insert("authorization", bearer);
    chain.get_consent(r).await.expect("GetConsent").into_inner()
}

/// An HTTPS client trusting the server's CA, keeping cookies, following no redirect.
pub fn page_client(srv: &TestServer) -> reqwest::Client {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(srv.ca_pem().as_bytes()) {
        roots
            .add(cert.expect("the CA bundle is PEM"))
            .expect("a usable root");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

// ---- a real browser ----

/// Is a browser required (`WRIT_REQUIRE_BROWSER=1`)?
pub fn browser_required() -> bool {
    std::env::var("WRIT_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// The first of `names` that is an executable file, on `PATH` or as an absolute path.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        let name = Path::new(name);
        if name.is_absolute() {
            return name.is_file().then(|| name.to_owned());
        }
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A headless Chromium driven through chromedriver; both end when it is dropped (or
/// [`Browser::close`]d).
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver session.
    pub driver: thirtyfour::WebDriver,
    chromedriver: Driver,
    _profile: tempfile::TempDir,
}

/// chromedriver, our own child: killed by its handle when dropped (it ends the browser
/// it started).
#[derive(Debug)]
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (a window of `width` × `height` CSS
    /// pixels). `None`, after a loud SKIP notice naming `test`, when either is missing,
    /// unless a browser is [required](browser_required).
    pub async fn start(test: &str, width: u32, height: u32) -> Option<Browser> {
        let driver = find(&["chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = find(&[
            "/usr/lib/chromium/chromium",
            "chromium",
            "chromium-browser",
            "google-chrome",
        ]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            assert!(
                !browser_required(),
                "{test}: WRIT_REQUIRE_BROWSER=1 but chromium or chromedriver is missing \
                 (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "\n==============================================================\n\
                 SKIP {test}: no chromium/chromedriver on this machine.\n\
                 Install Debian's `chromium` and `chromium-driver` to run it\n\
                 (WRIT_REQUIRE_BROWSER=1 makes this a failure).\n\
                 ==============================================================\n"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let chromedriver = Driver(
            Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting chromedriver"),
        );
        // chromedriver takes a moment to listen: bounded retries.
        let mut ready = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            ready,
            "chromedriver did not listen on port {port} within 10 s"
        );
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut caps = thirtyfour::Capabilities::new();
        let options = serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        for (key, value) in [
            ("browserName", serde_json::json!("chrome")),
            // The development CA is not the browser's.
            ("acceptInsecureCerts", serde_json::json!(true)),
            ("goog:chromeOptions", options),
        ] {
            caps.set(key, value).expect("a capability");
        }
        let driver = thirtyfour::WebDriver::new(format!("http://127.0.0.1:{port}"), caps)
            .await
            .expect("a WebDriver session with headless Chromium");
        Some(Browser {
            driver,
            chromedriver,
            _profile: profile,
        })
    }

    /// Ends the session (and the browser), then chromedriver.
    pub async fn close(self) {
        let Browser {
            driver,
            chromedriver,
            _profile,
        } = self;
        let _ = driver.quit().await;
        drop(chromedriver);
    }
}

/// Checks that `bytes` decode as a PNG of at least `min_w` × `min_h` pixels and are of a
/// sensible size; answers its dimensions.
pub fn check_png(bytes: &[u8], min_w: u32, min_h: u32) -> (u32, u32) {
    assert!(
        (10_000..5_000_000).contains(&bytes.len()),
        "a screenshot of {} bytes is not a plausible page",
        bytes.len()
    );
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sized image")];
    let frame = reader.next_frame(&mut buf).expect("PNG image data");
    assert!(
        frame.width >= min_w && frame.height >= min_h,
        "a {}×{} screenshot is smaller than {min_w}×{min_h}",
        frame.width,
        frame.height
    );
    // Not blank: more than one distinct pixel value.
    let first = &buf[..frame.line_size.min(buf.len())];
    assert!(
        buf.chunks(first.len().max(1)).any(|row| row != first),
        "the screenshot is one flat color"
    );
    (frame.width, frame.height)
}
