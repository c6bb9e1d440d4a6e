//! Starts a server (Writ, or the empty baseline) on a thread of its own with a Tokio
//! runtime of its own, so the server's runtime flavour and worker count are a choice of
//! the measurement (issue 4 asks for both) and the load generator's runtime never
//! shares worker threads with it. Both still share the machine's cores.

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use writ_server::Config;

use crate::baseline;

/// Which Tokio runtime the server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// `new_multi_thread` (what `#[tokio::main]` gives `writ serve`).
    Multi,
    /// `new_current_thread`: one thread runs every task.
    Current,
}

/// A server runtime: flavour and, for `Multi`, the worker count (default: one per core).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RuntimeSpec {
    /// Multi-thread or current-thread.
    pub flavor: Flavor,
    /// Worker threads of a multi-thread runtime; `None` is Tokio's default (the cores).
    pub workers: Option<usize>,
}

impl RuntimeSpec {
    /// Builds the runtime.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.flavor {
            Flavor::Current => tokio::runtime::Builder::new_current_thread()
                .thread_name("server")
                .enable_all()
                .build(),
            Flavor::Multi => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                // Named, so a profile of writ-load tells server threads from client ones.
                b.thread_name("server");
                if let Some(n) = self.workers {
                    b.worker_threads(n);
                }
                b.enable_all().build()
            }
        }
    }
}

/// A server running on its own thread; [`ServerHandle::stop`] shuts it down cleanly.
#[derive(Debug)]
pub struct ServerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Writ's data directory (for reading the generated credentials); `None` for the
    /// baseline.
    pub data_dir: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
    _tmp: Option<TempDir>,
}

impl ServerHandle {
    /// Stops the server and waits for its thread.
    pub fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts Writ (`writ_server::start`) with `configure` applied to a default configuration whose listen address
/// is an ephemeral loopback port and whose data directory is a new temporary directory.
pub fn spawn_writ(spec: RuntimeSpec, configure: impl FnOnce(&mut Config)) -> Result<ServerHandle> {
    spawn_writ_with(spec, configure, None)
}

/// [`spawn_writ`] for another node of the same trust domain as `peer` (a server this
/// harness started, sharing its Redis store through `configure`): its data directory
/// starts with a copy of `peer`'s server key ring and local minter and operator
/// credentials, so a token minted through either validates through both and one
/// credential file serves every node (what `tests/src/lib.rs`'s `start_node_of` does,
/// and what a deployment shares through its Secret).
pub fn spawn_writ_node_of(
    peer: &ServerHandle,
    spec: RuntimeSpec,
    configure: impl FnOnce(&mut Config),
) -> Result<ServerHandle> {
    let from = peer
        .data_dir
        .as_deref()
        .context("the peer is not a Writ server")?;
    spawn_writ_with(spec, configure, Some(from))
}

/// The files another node of the same trust domain shares with the first.
const SHARED_SECRETS: [&str; 3] = [
    writ_server::secrets::KEYS_FILE,
    writ_server::secrets::MINTER_CREDENTIAL_FILE,
    writ_server::secrets::OPERATOR_CREDENTIAL_FILE,
];

fn copy_secrets(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    writ_server::secrets::ensure_private_dir(to)?;
    for name in SHARED_SECRETS {
        let dst = to.join(name);
        std::fs::copy(from.join(name), &dst)
            .with_context(|| format!("copying {name} from {}", from.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn spawn_writ_with(
    spec: RuntimeSpec,
    configure: impl FnOnce(&mut Config),
    secrets_from: Option<&Path>,
) -> Result<ServerHandle> {
    let tmp = tempfile::tempdir().context("creating a temporary data directory")?;
    let data_dir = tmp.path().join("data");
    if let Some(from) = secrets_from {
        copy_secrets(from, &data_dir)?;
    }
    let mut config = Config::default();
    // Plaintext with asserted identities on loopback, as the empty-RPC floor is measured
    // (the TLS and mTLS costs are issue 15's to measure).
    config.tls.enabled = false;
    config.auth.asserted_identities = true;
    // One benchmark client exceeds any per-caller limit by design.
    config.limits.enabled = false;
    configure(&mut config);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // Several servers may run at once: no fixed ops or OAuth-over-HTTP port.
    config.observability.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.data_dir = data_dir.clone();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("writ-server".into())
        .spawn(move || -> Result<()> {
            let rt = spec.build()?;
            rt.block_on(async move {
                let running = match writ_server::start(config).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(running.local_addr));
                let _ = stop_rx.await;
                running.shutdown().await.map_err(|e| anyhow!("{e}"))
            })
        })?;
    let addr = ready_rx
        .recv()
        .context("the server thread ended before it started")?
        .map_err(|e| anyhow!("starting Writ: {e}"))?;
    Ok(ServerHandle {
        addr,
        data_dir: Some(data_dir),
        stop: Some(stop_tx),
        thread: Some(thread),
        _tmp: Some(tmp),
    })
}

/// Starts the empty-RPC baseline server on an ephemeral loopback port.
pub fn spawn_baseline(spec: RuntimeSpec) -> Result<ServerHandle> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("baseline-server".into())
        .spawn(move || -> Result<()> {
            let rt = spec.build()?;
            rt.block_on(async move {
                let listener = match TcpListener::bind(("127.0.0.1", 0)).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                let addr = listener.local_addr()?;
                // The transport Writ's `start` uses.
                let incoming = writ_server::transport::incoming(listener);
                let _ = ready_tx.send(Ok(addr));
                baseline::server_builder()
                    .add_service(baseline::pb::baseline_server::BaselineServer::new(
                        baseline::EmptyService,
                    ))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await?;
                Ok(())
            })
        })?;
    let addr = ready_rx
        .recv()
        .context("the baseline thread ended before it started")?
        .map_err(|e| anyhow!("starting the baseline: {e}"))?;
    Ok(ServerHandle {
        addr,
        data_dir: None,
        stop: Some(stop_tx),
        thread: Some(thread),
        _tmp: None,
    })
}
