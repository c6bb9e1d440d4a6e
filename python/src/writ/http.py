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
validates it as this service (the Writ client's identity must be the token's audience),
with the request's action when given one, and refuses the request before the app runs
unless the token is active (and the action allowed); the app then finds the verified
:class:`~writ.context.Context` in :func:`writ.current` and in ``scope["state"]["writ"]``
(Starlette: ``request.state.writ``).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Union
from urllib.parse import parse_qs

import grpc
import httpx

from writ.client import Client
from writ.context import Context, Downstream, child_for, use
from writ.errors import WritError
from writ.types import Action

HEADER = "Txn-Token"
_HEADER_LOWER = HEADER.lower().encode()
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
log = logging.getLogger("writ.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AmbiguousURL(ValueError):
    """A request to a path-prefixed downstream's origin whose path a server could read as
    another path (encoded ``/``, ``\\``, ``.`` or ``%``, or dot segments): the hook
    refuses to send it rather than guess whether it is under the prefix."""


# In a raw path, these decode (once or twice) to a separator or a dot.
_AMBIGUOUS = ("%2f", "%2e", "%5c", "%25", "\\")


def _ambiguous(raw_path: str) -> bool:
    lower = raw_path.lower()
    if any(x in lower for x in _AMBIGUOUS):
        return True
    return any(seg.split(";", 1)[0] in (".", "..") for seg in raw_path.split("/"))


def _host(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii").lower()
    try:
        return str(ipaddress.ip_address(host))  # one spelling per IP literal
    except ValueError:
        return host


class _Pattern:
    """One ``match`` entry: a scheme, host and port, and a raw path prefix ("" = any path)."""

    __slots__ = ("scheme", "host", "port", "path")

    def __init__(self, pattern: str) -> None:
        if not pattern or any(c in pattern for c in "?# \t\r\n"):
            raise ValueError(f"writ: Downstream match {pattern!r} is not a base URL or a host[:port]")
        if "://" in pattern:
            given = pattern.split("://", 1)[1]
            path = given[given.find("/") :] if "/" in given else ""
            if _ambiguous(path):
                raise ValueError(f"writ: Downstream match {pattern!r} has an ambiguous path")
        elif "/" in pattern:
            raise ValueError(f"writ: Downstream match {pattern!r}: a host has no path (write https://host/path)")
        else:
            pattern = "https://" + pattern  # a bare host: https only
        try:
            url = httpx.URL(pattern)
        except httpx.InvalidURL as e:
            raise ValueError(f"writ: Downstream match {pattern!r} is not a URL: {e}") from None
        if url.scheme not in ("http", "https") or not url.raw_host or url.userinfo:
            raise ValueError(f"writ: Downstream match {pattern!r} must be http(s)://host[:port][/path] or host[:port]")
        self.scheme = url.scheme
        self.host = _host(url)
        self.port = url.port or _DEFAULT_PORTS[url.scheme]
        self.path = url.raw_path.decode("ascii").rstrip("/")

    def matches(self, url: httpx.URL) -> bool:
        if url.scheme != self.scheme or _host(url) != self.host:
            return False
        if (url.port or _DEFAULT_PORTS.get(url.scheme)) != self.port:
            return False
        if not self.path:
            return True
        raw = url.raw_path.split(b"?", 1)[0].decode("ascii")
        if _ambiguous(raw):
            raise AmbiguousURL(f"writ: refusing to send {url.scheme}://{url.host}: its path is ambiguous under {self.path}")
        return raw == self.path or raw.startswith(self.path + "/")


class _Outbound:
    def __init__(self, client: Client | None, downstreams: Iterable[Downstream]) -> None:
        self.client = client
        self.downstreams = tuple(downstreams)
        self._patterns: list[tuple[_Pattern, Downstream]] = []
        for d in self.downstreams:
            if not d.match:
                raise ValueError(f"writ: Downstream for {d.audience.id} has no `match` (a base URL or a host)")
            self._patterns += [(_Pattern(m), d) for m in d.match]

    def downstream_for(self, url: httpx.URL) -> Downstream | None:
        """The first downstream whose ``match`` covers ``url``; :class:`AmbiguousURL` if a
        path-prefixed one is at its origin and its path is ambiguous."""
        for pattern, d in self._patterns:
            if pattern.matches(url):
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


class Incoming:
    """What a middleware's ``action`` callable sees of a request before the app runs: its
    ASGI ``scope`` and, for HTTP, its whole ``body`` (read by the middleware, up to
    ``max_body`` bytes, then replayed to the app unchanged)."""

    __slots__ = ("scope", "body")

    def __init__(self, scope: Scope, body: bytes) -> None:
        self.scope = scope
        self.body = body

    def __repr__(self) -> str:
        return f"<writ.http.Incoming {self.method} {self.path}>"

    @property
    def method(self) -> str:
        return str(self.scope.get("method", ""))

    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(bytes(self.scope.get("query_string", b"")).decode("latin-1"))

    def header(self, name: str) -> str | None:
        """One request header (the first, if repeated), or ``None``."""
        key = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for k, v in self.scope.get("headers", ()) if k.lower() == key), None)

    def json(self) -> Any:
        return json.loads(self.body)


ActionFor = Callable[[Incoming], Union[Action, None, Awaitable[Union[Action, None]]]]
"""Computes the action a request asks for (``None``: the token alone is checked)."""


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, ``None`` if the client went away; over ``limit``: _TooLarge."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that answers ``body`` once, then defers to the server's (disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class TxnTokenMiddleware:
    """ASGI middleware: only requests carrying exactly one active ``Txn-Token`` for this
    service (and, with ``action``, allowed to do what they ask) reach ``app``. ``client``
    is this service's Writ client (its identity is the audience tokens must be for).
    ``exempt``: exact paths served without a token (health checks).

    ``action``: computes the action each request asks for from the request
    (:class:`Incoming`: scope and body), sync or async. The middleware then validates the
    token *with* that action, before the app runs: a request whose action is denied is
    answered 403 and never reaches the app. This is how a token that answers only action
    checks (``require_action_check``, as every token redeemed from a consent does: to
    introspection it is inactive, ``action_required``) is accepted: only once its action
    was allowed. The allowed action is ``ctx.action``; a use-limited token has spent a use
    on it (an app that checks again with :func:`writ.check` spends another).

    The app never sees the ``Txn-Token`` header (it is removed from the scope's headers):
    it has the verified context instead. A websocket is validated once, at connect (its
    handshake's header, and ``action`` computed from the handshake): a token revoked or
    expiring later does not close a connection already open.

    Refusals, the token never echoed: 401 ``{"error": "invalid_token", "reason": …}``
    (missing, several, inactive); 403 ``{"error": "insufficient_scope", "denied_by": …,
    "consent_required": …}`` (the action denied); 400 ``invalid_request`` (no action could
    be computed from the request, or Writ refused its attributes); 413 (a body over
    ``max_body``); 503 ``temporarily_unavailable`` (Writ unreachable, or it rate-limits
    this service)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: Client,
        exempt: Iterable[str] = (),
        action: ActionFor | None = None,
        max_body: int = 1 << 20,
    ) -> None:
        self.app = app
        self.client = client
        self.exempt = frozenset(exempt)
        self.action = action
        self.max_body = max_body

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
        # Neither the action callable nor the app sees the header: the app gets the
        # verified context, never a token it could copy onto a call of its own.
        scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != _HEADER_LOWER]
        act: Action | None = None
        if self.action is not None:
            body = b""
            if scope["type"] == "http":
                try:
                    read = await _read_body(receive, self.max_body)
                except _TooLarge:
                    return await self._refuse(scope, send, 413, "body_too_large")
                if read is None:
                    return
                body = read
                receive = _replay(body, receive)
            try:
                computed = self.action(Incoming(scope, body))
                act = await computed if inspect.isawaitable(computed) else computed
                if act is not None:
                    act.to_proto()  # attribute values this library cannot send: the request's fault
            except Exception:
                log.info("no action could be computed for %s %s", scope.get("method"), scope.get("path"), exc_info=True)
                return await self._refuse(scope, send, 400, "invalid_action")
        try:
            verdict = await self.client.validate(token, action=act)
        except WritError as e:
            if e.code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                log.warning("Writ unavailable while validating a Txn-Token: %s", e)
                return await self._refuse(scope, send, 503, "writ_unavailable")
            if act is not None and e.code == grpc.StatusCode.INVALID_ARGUMENT:
                return await self._refuse(scope, send, 400, "invalid_action")
            return await self._refuse(scope, send, 401, (e.reason or e.code.name).lower())
        if not verdict.active or verdict.info is None:
            return await self._refuse(scope, send, 401, verdict.inactive_reason or "inactive")
        if act is not None:
            d = verdict.decision
            if d is None or not d.allowed:  # no decision for an action sent: denied
                extra: dict[str, Any] = {"denied_by": d.denied_by if d else "no_decision"}
                extra["consent_required"] = bool(d and d.consent_required)
                if d is not None and d.consent_request_id:
                    extra["consent_request_id"] = d.consent_request_id
                return await self._refuse(scope, send, 403, d.reason if d else "no decision", extra)
        ctx = Context(token=token, info=verdict.info, client=self.client, action=act)
        scope.setdefault("state", {})["writ"] = ctx
        with use(ctx):
            await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(
        scope: Scope, send: Send, status: int, reason: str, extra: dict[str, Any] | None = None
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013 if status == 503 else 1008, "reason": reason[:120]})
            return
        error = {
            400: "invalid_request",
            401: "invalid_token",
            403: "insufficient_scope",
            413: "invalid_request",
        }.get(status, "temporarily_unavailable")
        body = json.dumps({"error": error, "reason": reason, **(extra or {})}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status in (401, 403):
            headers.append((b"www-authenticate", f'{HEADER} error="{error}"'.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
