"""The stage the story plays on: a real `writ serve` on free loopback ports over a temporary
data directory, the parties' certificates from its development CA, and uvicorn servers for
the ASGI apps. None of this is code an agent would contain; it stands in for a deployment
(SPIRE, systemd, Kubernetes) so the example runs with one command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

HERE = Path(__file__).resolve().parent
TRUST_DOMAIN = "writ.local"

# Every variable `writ serve` and the CLI read settings from: the stage sets its own.
_WRIT_ENV = (
    "WRIT_CONFIG", "WRIT_LISTEN", "WRIT_HTTP_LISTEN", "WRIT_DATA_DIR", "WRIT_POLICY",
    "WRIT_OPS_LISTEN", "WRIT_LOG_FORMAT", "WRIT_LOG_LEVEL", "WRIT_OTLP_ENDPOINT",
    "WRIT_SERVER", "WRIT_CA", "WRIT_CERTS", "WRIT_TOKEN", "WRIT_MINTER_CREDENTIAL",
    "WRIT_OPERATOR_CREDENTIAL",
)


def spiffe(kind: str, name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{kind}/{name}"


def free_port() -> int:
    """A free loopback port: bind port 0, read it, release it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def writ_bin() -> Path:
    """The `writ` binary from WRIT_BIN: required, never guessed."""
    value = os.environ.get("WRIT_BIN")
    if not value:
        raise SystemExit("WRIT_BIN is not set: point it at the writ binary (examples/travel/run does)")
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SystemExit(f"WRIT_BIN={value} is not an executable file")
    return path


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _WRIT_ENV}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Identity:
    """A party's X.509-SVID: its SPIFFE ID and certificate files."""

    spiffe_id: str
    cert: Path
    key: Path


class WritServer:
    """`writ serve` as a child process with the example's policy, on free ports."""

    def __init__(self, binary: Path, workdir: Path, policy: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.port = free_port()
        self.http_port = free_port()
        self.log_path = workdir / "writ-serve.log"
        self._proc: subprocess.Popen[bytes] | None = None
        config = (
            f'listen = "127.0.0.1:{self.port}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'trust_domain = "{TRUST_DOMAIN}"\n'
            # The consent page's links name the OAuth listener, so the link printed works.
            f'issuer = "https://localhost:{self.http_port}"\n'
            f'policy = "{policy}"\n'
            "[http]\n"
            f'listen = "127.0.0.1:{self.http_port}"\n'
            "[observability]\n"
            'listen = "127.0.0.1:0"\n'
            'log_format = "text"\n'
        )
        self.config = workdir / "writ.toml"
        self.config.write_text(config)

    @property
    def target(self) -> str:
        """The gRPC address clients dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def minter_credential(self) -> str:
        return (self.data_dir / "minter.credential").read_text().strip()

    @property
    def operator_credential_file(self) -> Path:
        return self.data_dir / "operator.credential"

    @property
    def operator_credential(self) -> str:
        return self.operator_credential_file.read_text().strip()

    def start(self) -> None:
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            env=_clean_env(RUST_LOG="info"),
        )
        # Bounded wait for the log line that says the store is open and the port serves.
        for _ in range(200):
            if self._proc.poll() is not None:
                raise RuntimeError(f"writ serve exited early; log:\n{self.log()}")
            if "writ listening" in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"writ serve did not start within 10 s; log:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def issue(self, kind: str, *names: str) -> dict[str, Identity]:
        """`writ certs issue NAMES --kind KIND`: one certificate per party."""
        out = self.cli("certs", "issue", "--kind", kind, "--data-dir", str(self.data_dir),
                       "--json", *names)
        issued: dict[str, Any] = json.loads(out)
        ids: dict[str, Identity] = {}
        for name in names:
            ids[name] = Identity(spiffe(kind, name), self.data_dir / "certs" / f"{name}.pem",
                                 self.data_dir / "certs" / f"{name}-key.pem")
        assert issued, "writ certs issue printed nothing"
        return ids

    def chain(self, txn: str) -> str:
        """`writ chain TXN` as an operator would run it: the real CLI, the operator credential."""
        return self.cli("chain", txn, "--server", self.url, "--ca", str(self.ca),
                        "--credential-file", str(self.operator_credential_file))

    def cli(self, *args: str) -> str:
        done = subprocess.run([str(self.binary), *args], env=_clean_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"writ {args[0]} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


@contextlib.contextmanager
def writ_server(keep: bool = False) -> Any:
    """A started server in a fresh temporary directory, stopped and removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="writ-travel-"))
    server = WritServer(writ_bin(), workdir, HERE / "policy.toml")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, port: int) -> AsyncIterator[str]:
    """Serves an ASGI app with uvicorn on 127.0.0.1:port in this event loop; yields its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"uvicorn did not start on port {port} within 10 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
