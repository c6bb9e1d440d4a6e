"""The ``Txn-Token`` HTTP header on both sides of a hop.

Outbound (httpx): :class:`TxnTokenHook`, a request event hook, gives each request to a
declared downstream exactly one ``Txn-Token`` header holding a child of the *current*
token, downscoped for that call alone; any ``Txn-Token`` already on a request is removed
first, whatever its destination, so the parent (or anything else) is never forwarded.
httpx runs request hooks on every hop of a redirect chain (and copies every header but
``Authorization`` and ``Cookie`` to the next hop), so each hop is stripped and re-derived
on its own. There is deliberately no ``httpx.Auth`` form: httpx runs an auth flow once,
outside its redirect loop, and a redirect would carry its child to wherever it points.
No current token, or a refused Downscope: the request is never sent.

Inbound (ASGI): :class:`TxnTokenMiddleware` reads exactly one ``Txn-Token`` header,
validates it as this service (the Writ client's identity must be the token's audience)
and answers 401 before the app runs unless it is active; the app then finds the
verified :class:`~writ.context.Context` in :func:`writ.current` and in
``scope["state"]["writ"]`` (Starlette: ``request.state.writ``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx

from writ.client import Client
from writ.context import Context, Downstream, child_for, pending, use
from writ.errors import WritError

HEADER = "Txn-Token"
_HEADER_LOWER = HEADER.lower().encode()
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
log = logging.getLogger("writ.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _segment_prefix(path: str, base: str) -> bool:
    base = base.rstrip("/")
    return not base or path == base or path.startswith(base + "/")


def _matches(url: httpx.URL, pattern: str) -> bool:
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    if "://" in pattern:
        b = urlsplit(pattern)
        b_port = b.port or _DEFAULT_PORTS.get(b.scheme)
        return (
            b.scheme == url.scheme
            and (b.hostname or "") == url.host
            and b_port == port
            and _segment_prefix(url.path, b.path)
        )
    host, _, p = pattern.rpartition(":") if pattern.count(":") == 1 else (pattern, "", "")
    return host.lower() == url.host and (not p or int(p) == port)


class _Outbound:
    def __init__(self, client: Client | None, downstreams: Iterable[Downstream]) -> None:
        self.client = client
        self.downstreams = tuple(downstreams)
        for d in self.downstreams:
            if not d.match:
                raise ValueError(f"writ: Downstream for {d.audience.id} has no `match` (a base URL or a host)")

    def downstream_for(self, url: httpx.URL) -> Downstream | None:
        for d in self.downstreams:
            if any(_matches(url, m) for m in d.match):
                return d
        return None

    async def attach(self, request: httpx.Request) -> None:
        # Never forward a Txn-Token this hook did not derive for this very request.
        if HEADER in request.headers:
            del request.headers[HEADER]
        d = self.downstream_for(request.url)
        if d is None:
            return
        request.headers[HEADER] = await child_for(d, client=self.client)


class TxnTokenHook(_Outbound):
    """An httpx request event hook: ``httpx.AsyncClient(event_hooks={"request": [hook]})``.

    ``downstreams``: the parties this client calls, each with the URLs it ``match``es.
    ``client``: the Writ client of this service (default: the one that verified the
    current context)."""

    def __init__(self, downstreams: Iterable[Downstream], *, client: Client | None = None) -> None:
        super().__init__(client, downstreams)

    async def __call__(self, request: httpx.Request) -> None:
        await self.attach(request)


def txn_token_hook(downstreams: Iterable[Downstream], *, client: Client | None = None) -> TxnTokenHook:
    """A :class:`TxnTokenHook` (the event hook form)."""
    return TxnTokenHook(downstreams, client=client)


class TxnTokenMiddleware:
    """ASGI middleware: only requests carrying exactly one active ``Txn-Token`` for this
    service reach ``app``. ``client`` is this service's Writ client (its identity is the
    audience tokens must be for). ``exempt``: exact paths served without a token (health
    checks). Refusals are 401 JSON ``{"error": "invalid_token", "reason": …}`` (503
    ``writ_unavailable`` when Writ cannot be reached or rate-limits this service); the
    token is never echoed.

    ``admit_action_only``: a token that answers only action checks (``require_action_check``,
    as every token redeemed from a consent does) is inactive (``action_required``) to
    introspection, so by default it is refused. With this set, such a token is admitted
    *pending*: no context is current until the app's :func:`writ.check` allows its action
    (and makes it current). Set it only for apps whose every route checks an action first."""

    def __init__(
        self, app: ASGIApp, *, client: Client, exempt: Iterable[str] = (), admit_action_only: bool = False
    ) -> None:
        self.app = app
        self.client = client
        self.exempt = frozenset(exempt)
        self.admit_action_only = admit_action_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers", ()) if k.lower() == _HEADER_LOWER]
        if not values:
            return await self._refuse(scope, send, 401, "missing_token")
        if len(values) > 1:
            return await self._refuse(scope, send, 401, "multiple_tokens")
        token = values[0].decode("latin-1").strip()
        try:
            verdict = await self.client.validate(token)
        except WritError as e:
            if e.code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                log.warning("Writ unavailable while validating a Txn-Token: %s", e)
                return await self._refuse(scope, send, 503, "writ_unavailable")
            return await self._refuse(scope, send, 401, (e.reason or e.code.name).lower())
        if not verdict.active and verdict.inactive_reason == "action_required" and self.admit_action_only:
            with pending(token, self.client):
                await self.app(scope, receive, send)
            return
        if not verdict.active or verdict.info is None:
            return await self._refuse(scope, send, 401, verdict.inactive_reason or "inactive")
        ctx = Context(token=token, info=verdict.info, client=self.client)
        scope.setdefault("state", {})["writ"] = ctx
        with use(ctx):
            await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, reason: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        error = "invalid_token" if status == 401 else "temporarily_unavailable"
        body = json.dumps({"error": error, "reason": reason}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 401:
            headers.append((b"www-authenticate", f'{HEADER} error="invalid_token"'.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
