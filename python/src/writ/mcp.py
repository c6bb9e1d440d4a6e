"""Writ in an MCP server built with the official ``mcp`` SDK (FastMCP, 1.x).

MCP forbids passing a client's token through to upstream APIs; this is where Writ's
downscoping belongs. The pieces:

- :class:`WritTokenVerifier`, the SDK's ``TokenVerifier``: the bearer token an MCP client
  presents is a Writ token whose audience is this server's party (``audience``); it is
  introspected at Writ (Validate as this server) on every HTTP request, and answered as
  the SDK's ``AccessToken`` for this server's URL (the RFC 8707 resource that party maps
  to). Refused: ``None`` (401); Writ unreachable: :class:`WritUnavailable` (503).
- :func:`tool` (or :func:`requires` under FastMCP's own decorator), a per-tool declaration
  of the scope and attributes the tool needs, checked at Writ (Validate with the action)
  on every call before the body runs. A refusal is a tool error naming the reason. A
  high-privilege scope answering ``consent_required`` asks the user (``RequestConsent``,
  then a URL-mode elicitation carrying Writ's consent link to the MCP client), waits for
  the decision (retrying ``RedeemConsent`` while it is pending, bounded), and runs the
  body with the redeemed single-use token handed, once, to the consent's resource.
- :func:`guard` / :func:`streamable_http_app`: nothing is served while a tool is
  registered without that check.
- :func:`downstream`, inside a tool: one line for a narrowed child of the verified token
  for an upstream call (or, once, the redeemed token, for the consent's resource). The
  httpx hook of :mod:`writ.http` picks up the same context.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, Union, cast

import grpc
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.fastmcp import FastMCP
from mcp.server.lowlevel.server import request_ctx
from mcp.types import ToolAnnotations
from pydantic import AnyHttpUrl, Field, PrivateAttr
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from writ._proto import writ_pb2 as pb
from writ.client import Client
from writ.context import Context, Downstream, Redeemed, child_for, raise_unless_allowed, use
from writ.errors import ConsentPending, ConsentRequired, NoContext, WritError
from writ.types import Action, AttrValue, Minted

__all__ = [
    "UncheckedTools",
    "WritAccessToken",
    "WritTokenVerifier",
    "WritUnavailable",
    "auth_settings",
    "authorization",
    "downstream",
    "guard",
    "requires",
    "streamable_http_app",
    "tool",
    "unchecked_tools",
    "verified",
]

log = logging.getLogger("writ.mcp")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_CHECKED = "__writ_requires__"  # set on every function requires() checks: its scope
AttributeSource = Union[str, Callable[[Mapping[str, Any]], AttrValue]]


class WritAccessToken(AccessToken):
    """The SDK's ``AccessToken`` for a verified Writ token; carries the verified context.
    The token is never in its repr nor in ``model_dump()``/``model_dump_json()``; the SDK
    requires it as a plain pydantic field, so ``access.token`` (and pickling) still give
    it."""

    token: str = Field(repr=False, exclude=True)  # never in model_dump() / model_dump_json()
    _writ: Context | None = PrivateAttr(default=None)

    @property
    def writ(self) -> Context:
        if self._writ is None:
            raise NoContext()
        return self._writ


class WritUnavailable(Exception):
    """Raised by :meth:`WritTokenVerifier.verify_token` when Writ could not answer (or
    refused this server itself): nothing was verified, and the bearer token may well be
    fine, so the answer is not a 401. :func:`streamable_http_app` answers it 503; served
    otherwise, the SDK answers 500."""


class WritTokenVerifier:
    """The MCP SDK's ``TokenVerifier`` backed by Writ.

    ``client``: this MCP server's Writ client, whose identity (its certificate's SPIFFE ID)
    is the party tokens must be issued to. ``audience``: that party's id, required: a
    token is accepted only if Writ answers it active *and* names ``audience`` as its
    audience (Writ itself already answers any other party's token ``wrong_audience``;
    this check also catches a client connected with the wrong identity). That is the
    real binding: ``resource``, this server's URL, is what the SDK's RFC 8707 check
    compares (``AuthSettings(resource_server_url=resource, validate_token_resource=True)``,
    as :func:`auth_settings` does), and every token for ``audience`` maps to it.

    Writ unreachable, or refusing this server: :class:`WritUnavailable` (503 behind
    :func:`streamable_http_app`), never a pass and never a 401. Until :func:`guard` ran
    for the server (:func:`streamable_http_app` runs it), and whenever a tool without
    Writ's check is registered: :class:`UncheckedTools` (500), for every request."""

    def __init__(self, client: Client, *, audience: str, resource: str) -> None:
        if not audience:
            raise ValueError("writ.mcp: WritTokenVerifier needs this server's party id as audience")
        self.client = client
        self.audience = audience
        self.resource = resource
        self._guarded: tuple[FastMCP[Any], frozenset[str]] | None = None

    def _check_tools(self) -> None:
        if self._guarded is None:
            raise UncheckedTools(
                "writ.mcp: this server's tools were never checked: serve it with writ.mcp.streamable_http_app(mcp) "
                "(or call writ.mcp.guard(mcp) first)",
                [],
            )
        mcp, allowed = self._guarded
        missing = [n for n in unchecked_tools(mcp) if n not in allowed]
        if missing:
            raise UncheckedTools(f"writ.mcp: tools registered without a Writ check: {', '.join(missing)}", missing)

    async def verify_token(self, token: str) -> AccessToken | None:
        self._check_tools()  # a misconfigured server serves nothing (500)
        try:
            verdict = await self.client.validate(token)
        except WritError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:  # the token itself is unusable
                return None
            log.warning("Writ could not validate a bearer token: %s", e)
            raise WritUnavailable(str(e)) from None
        info = verdict.info
        if not verdict.active or info is None:
            log.info("bearer token refused: %s", verdict.inactive_reason)
            return None
        if info.audience.id != self.audience:
            log.warning("bearer token refused: issued to %s, not %s", info.audience.id, self.audience)
            return None
        access = WritAccessToken(
            token=token,
            client_id=info.act.id,  # the current actor: who presents the token
            scopes=list(info.scopes),
            expires_at=info.expires_at_unix_ms // 1000,
            resource=self.resource,  # the URL the audience maps to (see the class)
            subject=info.subject,
            claims={"txn": info.txn, "token_id": info.token_id, "aud": info.audience.id},
        )
        access._writ = Context(token=token, info=info, client=self.client)
        return access


def auth_settings(resource: str, *, issuer: str, required_scopes: list[str] | None = None) -> AuthSettings:
    """FastMCP's ``AuthSettings`` for a server whose tokens Writ issues: ``resource`` is this
    server's URL (tokens are bound to it), ``issuer`` Writ's OAuth issuer (its
    ``http.issuer``, e.g. ``https://localhost:7434``)."""
    return AuthSettings(
        issuer_url=AnyHttpUrl(issuer),
        resource_server_url=AnyHttpUrl(resource),
        validate_token_resource=True,
        required_scopes=required_scopes,
    )


class _UnavailableAs503:
    """ASGI: a :class:`WritUnavailable` raised before any response started is a 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except WritUnavailable:
            if started or scope["type"] != "http":
                raise
            body = json.dumps({"error": "temporarily_unavailable", "error_description": "Writ could not be reached"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})


def streamable_http_app(mcp: FastMCP[Any], *, unchecked: Iterable[str] = ()) -> Starlette:
    """``mcp.streamable_http_app()``, once :func:`guard` found every tool checked (but those
    named in ``unchecked``), answering 503 (not 401) while Writ cannot be reached."""
    guard(mcp, unchecked=unchecked)
    app = mcp.streamable_http_app()
    app.add_middleware(_UnavailableAs503)
    return app


def _request_access() -> WritAccessToken | None:
    """The verified bearer token of the MCP request being handled: the HTTP request that
    carried the tool call, and nothing else. (The SDK's auth contextvar,
    ``get_access_token()``, is not used: inside a session's tasks it holds the token of
    whoever created the session, not of this request.)"""
    try:
        rc = request_ctx.get()
    except LookupError:
        rc = None
    request = getattr(rc, "request", None) if rc is not None else None
    user = request.scope.get("user") if request is not None and hasattr(request, "scope") else None
    access = getattr(user, "access_token", None)
    return access if isinstance(access, WritAccessToken) else None


def verified() -> Context:
    """The verified context of the current tool call, or :class:`~writ.errors.NoContext`."""
    access = _request_access()
    if access is None:
        raise NoContext("no Writ-verified bearer token on this MCP request (is WritTokenVerifier configured?)")
    return access.writ


async def downstream(target: Downstream) -> str:
    """Inside a tool: a fresh child of the current token for ``target`` (or, the first time
    only, the token the user's consent was redeemed for, when ``target`` is that consent's
    resource). Never the token the tool was called with."""
    return await child_for(target)


async def authorization(target: Downstream, *, client: Client | None = None) -> dict[str, str]:
    """For an MCP *client* (an agent calling an MCP server): headers carrying a fresh child
    of the current token for the MCP server ``target`` names, as MCP's bearer token:
    ``streamablehttp_client(url, headers=await writ.mcp.authorization(booking))``."""
    return {"Authorization": f"Bearer {await child_for(target, client=client)}"}


async def _consent(
    ctx: Context, action: Action, resource: str, reason: str, timeout: float
) -> Minted:
    """Asks the user for ``action`` at ``resource`` through a URL-mode elicitation, and
    answers the redeemed single-use token once they approved."""
    client = ctx.client
    assert client is not None
    req = await client.request_consent(ctx.token, action, resource=resource, reason=reason)
    rc = request_ctx.get()
    if req.info.status != pb.CONSENT_STATUS_APPROVED:
        params = rc.session.client_params
        elicitation = params.capabilities.elicitation if params is not None else None
        if elicitation is None or elicitation.url is None:
            raise ConsentRequired(
                "the user must approve this action, and this MCP client cannot open the consent link "
                "(no URL-mode elicitation)",
                req.id,
            )
        result = await rc.session.elicit_url(
            message=f"Writ asks for your consent: {req.info.description}",
            url=req.url,
            elicitation_id=req.id,
            related_request_id=rc.request_id,
        )
        if result.action != "accept":
            raise ConsentRequired(f"the consent link was not opened ({result.action})", req.id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.1
    while True:
        try:
            redeemed = await client.redeem_consent(req.id, ctx.token)
            break
        except ConsentPending:
            if loop.time() >= deadline:
                raise ConsentRequired(f"no decision within {timeout:g} s", req.id) from None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)
    try:
        await rc.session.send_elicit_complete(req.id, related_request_id=rc.request_id)
    except Exception:  # informative only
        log.debug("could not notify the client that consent %s completed", req.id)
    return redeemed


def requires(
    scope: str,
    /,
    *,
    consent_resource: str | None = None,
    consent_reason: str | Callable[[Mapping[str, Any]], str] | None = None,
    consent_timeout: float = 300.0,
    attributes: Mapping[str, AttributeSource] | None = None,
    **more_attributes: AttributeSource,
) -> Callable[[F], F]:
    """Declares what a tool needs: ``scope``, and each action attribute taken from a tool
    argument (``amount="amount"``) or computed from all of them (a callable); attributes
    whose names clash with a parameter go in ``attributes``. Checked at Writ on every
    call; the body runs only if allowed, with the verified context current.

    Prefer :func:`tool`, which registers the checked function itself. With FastMCP's own
    decorator, ``@mcp.tool()`` must be *above* ``@requires(...)``: FastMCP registers the
    function it is given and returns it unchanged, so ``@requires`` above it would wrap a
    copy nobody calls. :func:`guard` (run by :func:`streamable_http_app`) refuses to serve
    a tool registered without this check.

    ``consent_resource``: for a high-privilege scope, the party the action will be
    performed at (the upstream API the tool calls, one of the token's targets). When the
    check answers ``consent_required`` the user is asked through a URL-mode elicitation,
    and the body runs with the redeemed token as that party's (see :func:`downstream`).
    Without it, or if the user does not approve within ``consent_timeout`` seconds, the
    tool fails with :class:`~writ.errors.ConsentRequired`.
    """

    attributes = {**(attributes or {}), **more_attributes}

    def decorate(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"writ.mcp.requires: {fn.__name__} must be an async function")
        signature = inspect.signature(fn)
        for name, source in attributes.items():
            if isinstance(source, str) and source not in signature.parameters:
                raise TypeError(f"writ.mcp.requires: {fn.__name__} has no argument {source!r} (for {name!r})")

        @functools.wraps(fn)
        async def checked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            action = Action(
                scope,
                {name: arguments[src] if isinstance(src, str) else src(arguments) for name, src in attributes.items()},
            )
            ctx = verified()
            assert ctx.client is not None
            verdict = await ctx.client.validate(ctx.token, action=action)
            consented: Redeemed | None = None
            try:
                raise_unless_allowed(verdict, action_sent=True)
            except ConsentRequired:
                if consent_resource is None:
                    raise
                reason = (
                    consent_reason(arguments)
                    if callable(consent_reason)
                    else consent_reason or f"{fn.__name__}: {scope}"
                )
                redeemed = await _consent(ctx, action, consent_resource, reason, consent_timeout)
                consented = Redeemed(consent_resource, redeemed.token)
            try:
                with use(ctx._for_call(consented=consented, action=action)):
                    return await fn(*args, **kwargs)
            finally:
                if consented is not None:  # tasks outliving the body never get it
                    consented.discard()

        setattr(checked, _CHECKED, scope)
        return cast(F, checked)

    return decorate


def tool(
    mcp: FastMCP[Any],
    scope: str,
    /,
    *,
    name: str | None = None,
    title: str | None = None,
    description: str | None = None,
    annotations: ToolAnnotations | None = None,
    structured_output: bool | None = None,
    consent_resource: str | None = None,
    consent_reason: str | Callable[[Mapping[str, Any]], str] | None = None,
    consent_timeout: float = 300.0,
    attributes: Mapping[str, AttributeSource] | None = None,
    **more_attributes: AttributeSource,
) -> Callable[[F], F]:
    """Registers the decorated function as a tool of ``mcp`` (``name``, ``title``,
    ``description``, ``annotations``, ``structured_output`` as FastMCP's ``tool()``
    takes them), checked as :func:`requires` declares (``scope``, the attributes, consent)
    on every call: the one decorator, which cannot be put in the wrong order."""

    def decorate(fn: F) -> F:
        checked = requires(
            scope,
            consent_resource=consent_resource,
            consent_reason=consent_reason,
            consent_timeout=consent_timeout,
            attributes=attributes,
            **more_attributes,
        )(fn)
        mcp.add_tool(
            checked,
            name=name,
            title=title,
            description=description,
            annotations=annotations,
            structured_output=structured_output,
        )
        return checked

    return decorate


class UncheckedTools(RuntimeError):
    """Tools registered without Writ's per-call check (``tools``), or a server whose tools
    were never looked at (``tools`` empty): nothing is served."""

    def __init__(self, message: str, tools: list[str]) -> None:
        super().__init__(message)
        self.tools = tools


def unchecked_tools(mcp: FastMCP[Any]) -> list[str]:
    """The names of ``mcp``'s tools registered without :func:`requires`/:func:`tool`."""
    manager = getattr(mcp, "_tool_manager", None)
    if manager is None or not hasattr(manager, "list_tools"):
        raise UncheckedTools("writ.mcp: cannot list this server's tools (an mcp SDK this version does not know)", [])
    return sorted(t.name for t in manager.list_tools() if not getattr(t.fn, _CHECKED, None))


def guard(mcp: FastMCP[Any], *, unchecked: Iterable[str] = ()) -> None:
    """Refuses to go on (:class:`UncheckedTools`) if a tool of ``mcp`` is registered without
    Writ's per-call check, except those named in ``unchecked`` (tools meant to need no
    action, say a ``ping``). It also arms ``mcp``'s :class:`WritTokenVerifier`, which
    refuses every request until this ran and, after, whenever a tool registered later
    lacks the check. :func:`streamable_http_app` calls it; call it yourself before
    ``mcp.run()`` or ``mcp.sse_app()``."""
    verifier = getattr(mcp, "_token_verifier", None)
    if not isinstance(verifier, WritTokenVerifier):
        raise TypeError("writ.mcp.guard: this FastMCP's token_verifier is not a writ.mcp.WritTokenVerifier")
    allowed = frozenset(unchecked)
    missing = [n for n in unchecked_tools(mcp) if n not in allowed]
    if missing:
        raise UncheckedTools(
            f"writ.mcp: tools registered without a Writ check: {', '.join(missing)} (use @writ.mcp.tool(mcp, scope, ...), "
            "or put @mcp.tool() above @writ.mcp.requires(...))",
            missing,
        )
    verifier._guarded = (mcp, allowed)
