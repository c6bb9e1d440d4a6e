"""The test session's Writ: a real ``writ serve`` (from ``WRIT_BIN``) on free loopback
ports over a temporary data directory, with the test policy, and proven identities:
client certificates from ``writ certs issue`` for the agents and workloads, the
generated credentials for the minter and the operator."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import pytest_asyncio

import writ

TD = "spiffe://writ.local"
PLANNER = f"{TD}/agent/planner"
BOOKING = f"{TD}/agent/booking"
HOTEL = f"{TD}/agent/hotel"
MALLORY = f"{TD}/agent/mallory"
PAYMENTS = f"{TD}/workload/payments"
WALLET = f"{TD}/workload/wallet"
ASSERTER = f"{TD}/agent/asserter"  # proves itself with JWT client assertions, no certificate
ASSERTION_AUDIENCE = f"{TD}/writ"

AGENTS = ["planner", "booking", "hotel", "mallory"]
WORKLOADS = ["payments", "wallet"]
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    target: str
    data_dir: Path
    log: Path
    asserter_key: Any  # the Ed25519 private key registered for ASSERTER

    def assertion(self) -> str:
        """A fresh RFC 7523 client assertion for ASSERTER (single use: a new jti each time)."""
        import jwt

        now = int(time.time())
        claims = {"iss": ASSERTER, "sub": ASSERTER, "aud": ASSERTION_AUDIENCE, "iat": now, "exp": now + 60}
        claims["jti"] = os.urandom(16).hex()
        return jwt.encode(claims, self.asserter_key, algorithm="EdDSA", headers={"kid": "asserter-1"})

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def tls(self, name: str) -> writ.Tls:
        certs = self.data_dir / "certs"
        return writ.Tls(ca=self.ca, cert=certs / f"{name}.pem", key=certs / f"{name}-key.pem")

    def credential(self, role: str) -> str:
        return (self.data_dir / f"{role}.credential").read_text().strip()

    def writ(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_writ_bin(), *args], capture_output=True, text=True, timeout=60)


def _writ_bin() -> str:
    path = os.environ.get("WRIT_BIN")
    if not path:
        pytest.exit("WRIT_BIN is not set: point it at a built `writ` binary (e.g. target/debug/writ)", returncode=2)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.exit(f"WRIT_BIN={path} is not an executable file", returncode=2)
    return path


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    binary = _writ_bin()
    tmp = Path(tempfile.mkdtemp(prefix="writ-py-"))
    data = tmp / "data"
    log = tmp / "serve.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRIT_")}
    env.update(
        WRIT_HTTP_LISTEN="127.0.0.1:0",
        WRIT_OPS_LISTEN="127.0.0.1:0",
        WRIT_LOG_FORMAT="text",
        RUST_LOG="info",
    )
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)]
    # The test policy, plus a party that proves itself with a key generated for this session.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    policy = tmp / "policy.toml"
    policy.write_text(
        (HERE / "policy.toml").read_text()
        + f"""
[parties."{ASSERTER}"]
kind = "agent"
client_type = "confidential"
roles = ["agent"]
scopes = ["trips:book", "trips:read", "payments:refund", "payments:charge"]
keys = [{{ kid = "asserter-1", public_key = \"\"\"
{public.decode().strip()}
\"\"\" }}]
"""
    )
    args += ["--policy", str(policy)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "writ listening" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(f"writ serve exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"writ serve did not listen within 30 s:\n{log.read_text()}")
            time.sleep(0.05)
        srv = Server(target=f"127.0.0.1:{port}", data_dir=data, log=log, asserter_key=key)
        for kind, names in (("agent", AGENTS), ("workload", WORKLOADS)):
            r = srv.writ("certs", "issue", "--kind", kind, "--data-dir", str(data), *names)
            assert r.returncode == 0, r.stderr
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.environ.get("WRIT_PY_KEEP_TMP") is None:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def minter(server: Server) -> AsyncIterator[writ.Client]:
    async with await writ.connect(server.target, tls=writ.Tls(ca=server.ca), credential=server.credential("minter")) as c:
        yield c


@pytest_asyncio.fixture(scope="session")
async def operator(server: Server) -> AsyncIterator[writ.Client]:
    async with await writ.connect(server.target, tls=writ.Tls(ca=server.ca), credential=server.credential("operator")) as c:
        yield c


async def _as(server: Server, name: str) -> writ.Client:
    return await writ.connect(server.target, tls=server.tls(name))


@pytest_asyncio.fixture(scope="session")
async def planner(server: Server) -> AsyncIterator[writ.Client]:
    async with await _as(server, "planner") as c:
        yield c


@pytest_asyncio.fixture(scope="session")
async def booking(server: Server) -> AsyncIterator[writ.Client]:
    async with await _as(server, "booking") as c:
        yield c


@pytest_asyncio.fixture(scope="session")
async def payments(server: Server) -> AsyncIterator[writ.Client]:
    async with await _as(server, "payments") as c:
        yield c


@pytest_asyncio.fixture(scope="session")
async def mallory(server: Server) -> AsyncIterator[writ.Client]:
    async with await _as(server, "mallory") as c:
        yield c


@pytest_asyncio.fixture(scope="session")
async def wallet(server: Server) -> AsyncIterator[writ.Client]:
    async with await _as(server, "wallet") as c:
        yield c


async def mint_root(minter: writ.Client, **overrides: object) -> writ.Minted:
    """A root token for the planner that may reach booking and payments."""
    args: dict[str, object] = dict(
        subject="alice",
        audience=writ.agent(PLANNER),
        targets=[BOOKING, PAYMENTS, HOTEL],
        scopes=["trips:book", "payments:charge", "payments:refund"],
        claims={
            "amount": writ.max_(1000, applies_to=["payments:charge", "payments:refund"]),
            "category": writ.deny("gambling", case_insensitive=True),
        },
        ttl=300,
        purpose="book a trip to Lisbon",
    )
    args.update(overrides)
    return await minter.mint(**args)  # type: ignore[arg-type]


async def to_booking(planner: writ.Client, root: writ.Minted, **overrides: object) -> writ.Minted:
    args: dict[str, object] = dict(
        audience=writ.agent(BOOKING),
        targets=[PAYMENTS],
        scopes=["trips:book", "payments:charge", "payments:refund"],
        claims={"amount": writ.max_(500)},
        ttl=120,
    )
    args.update(overrides)
    return await planner.downscope(root.token, **args)  # type: ignore[arg-type]


@asynccontextmanager
async def serve_asgi(app: Any, *, port: int = 0, lifespan: bool = False) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a loopback port (default: any free one), in a task of
    this loop; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on" if lifespan else "off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Recorder:
    """An ASGI app that records every request's raw headers and answers 200, or, for a
    path ending in ``/go``, a 302 to the URL in its query (``?to=…``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[tuple[bytes, bytes]]]] = []

    def txn_tokens(self, i: int = -1) -> list[str]:
        return [v.decode() for k, v in self.requests[i][1] if k.lower() == b"txn-token"]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.requests.append((scope["path"], list(scope["headers"])))
        if scope["path"].endswith("/go"):
            to = parse_qs(scope["query_string"].decode())["to"][0]
            headers = [(b"location", to.encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 302, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
