"""writ.mcp with the real ``mcp`` SDK: a FastMCP server (booking, behind WritTokenVerifier
over streamable HTTP) and an MCP client session (the planner) in this process, the
payments API behind the ASGI middleware, and a real writ serve."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from conftest import BOOKING, PAYMENTS, Server, free_port, mint_root, serve_asgi
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.fastmcp import FastMCP
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import writ
import writ.mcp
from writ._proto import writ_pb2 as pb
from writ.http import Incoming, TxnTokenHook, TxnTokenMiddleware

ISSUER = "https://localhost:7434"


def payments_api(client: writ.Client, log: list[tuple[str, int]]) -> Any:
    """The payments API: every request's Txn-Token verified as payments, then the action
    checked against it."""

    def route(scope: str) -> Route:
        async def handler(request: Request) -> JSONResponse:
            body = await request.json()
            assert writ.require().action == writ.Action(scope, amount=body["amount"], category=body["category"])
            log.append((scope, body["amount"]))
            return JSONResponse({"done": scope, "amount": body["amount"]})

        return Route("/" + scope.split(":")[1], handler, methods=["POST"])

    def action(request: Incoming) -> writ.Action:
        body = request.json()
        scope = "payments:" + request.path.strip("/")
        return writ.Action(scope, amount=body["amount"], category=body["category"])

    app = Starlette(routes=[route("payments:charge"), route("payments:refund")])
    # Every request's action is checked before the app runs, so a consent's redeemed
    # token (action checks only) is accepted once its action is allowed.
    return TxnTokenMiddleware(app, client=client, action=action)


# What the charge tool saw: its context, and payments' answer to its second call.
contexts: list[writ.Context] = []
second: list[tuple[int, Any]] = []


def booking_mcp(client: writ.Client, url: str, pay_url: str, ran: list[str]) -> FastMCP:
    """The booking agent's MCP server, written as a user would with writ.mcp."""
    mcp = FastMCP(
        "booking",
        token_verifier=writ.mcp.WritTokenVerifier(client, resource=url, audience=BOOKING),
        auth=writ.mcp.auth_settings(url, issuer=ISSUER),
    )
    refunds = writ.Downstream(audience=writ.workload(PAYMENTS), scopes=["payments:refund"], ttl=30)
    charges = writ.Downstream(audience=writ.workload(PAYMENTS), scopes=["payments:charge"], ttl=30, match=pay_url)
    hook = TxnTokenHook([charges])

    @mcp.tool()  # FastMCP's decorator above requires: the checked function is registered
    @writ.mcp.requires("trips:book", category="category")
    async def book_trip(destination: str, category: str) -> str:
        ran.append("book_trip")
        ctx = writ.current()
        assert ctx is not None
        return f"booked {destination} for {ctx.info.subject}"

    @writ.mcp.tool(mcp, "payments:refund", amount="amount", category="category")
    async def refund(amount: int, category: str) -> str:
        ran.append("refund")
        token = await writ.mcp.downstream(refunds)  # the one line
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{pay_url}/refund", json={"amount": amount, "category": category}, headers={"Txn-Token": token}
            )
        return r.text

    @writ.mcp.tool(
        mcp,
        "payments:charge",
        amount="amount",
        category="category",
        consent_resource=PAYMENTS,
        consent_reason=lambda a: f"charge {a['amount']} EUR for the Lisbon trip",
        consent_timeout=20,
    )
    async def charge(amount: int, category: str, dry_run: bool = False) -> str:
        ran.append("charge")
        contexts.append(writ.require())
        if dry_run:
            return "not charged"
        async with httpx.AsyncClient(event_hooks={"request": [hook]}) as http:
            r = await http.post(f"{pay_url}/charge", json={"amount": amount, "category": category})
            # The consent's token was handed out once: a second call gets a fresh child,
            # which still needs consent at payments.
            again = await http.post(f"{pay_url}/charge", json={"amount": amount, "category": category})
        if r.request.headers["Txn-Token"] == again.request.headers["Txn-Token"]:
            raise RuntimeError("the redeemed token went out twice")
        second.append((again.status_code, again.json()))
        return r.text

    return mcp


@asynccontextmanager
async def stack(booking: writ.Client, payments: writ.Client) -> AsyncIterator[tuple[str, list[str], list[Any]]]:
    ran: list[str] = []
    paid: list[tuple[str, int]] = []
    async with serve_asgi(payments_api(payments, paid)) as pay_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        app = writ.mcp.streamable_http_app(booking_mcp(booking, url, pay_url, ran))
        async with serve_asgi(app, port=port, lifespan=True):
            yield url, ran, paid


@asynccontextmanager
async def session(url: str, headers: dict[str, str], elicit: Any = None) -> AsyncIterator[ClientSession]:
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300)) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write, elicitation_callback=elicit) as s,
    ):
        await s.initialize()
        yield s


def text(r: types.CallToolResult) -> str:
    return "".join(c.text for c in r.content if isinstance(c, types.TextContent))


async def planner_headers(minter: writ.Client, planner: writ.Client, **scopes: Any) -> tuple[writ.Minted, dict[str, str]]:
    """The planner (an MCP client holding the root token) derives booking's token with
    writ.mcp.authorization, as a user's agent would."""
    root = await mint_root(minter)
    booking_mcp_party = writ.Downstream(
        audience=writ.agent(BOOKING),
        scopes=scopes.get("scopes", ["trips:book", "payments:charge", "payments:refund"]),
        targets=[PAYMENTS],
        claims={"amount": writ.max_(500)},
        ttl=120,
    )
    with writ.use(writ.Context(root.token, root.info, planner)):
        return root, await writ.mcp.authorization(booking_mcp_party)


async def test_tools_allowed_and_refused_on_every_call(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client, operator: writ.Client
) -> None:
    async with stack(booking, payments) as (url, ran, paid):
        root, headers = await planner_headers(minter, planner)
        assert headers["Authorization"].startswith("Bearer writ_")
        assert root.token not in headers["Authorization"]
        async with session(url, headers) as s:
            ok = await s.call_tool("book_trip", {"destination": "Lisbon", "category": "travel"})
            assert not ok.isError and text(ok) == "booked Lisbon for alice"
            # A claim refuses it: the body never runs, the error names why.
            bad = await s.call_tool("book_trip", {"destination": "Vegas", "category": "Gambling"})
            assert bad.isError and "ACTION_DENIED" in text(bad) and "category" in text(bad)
            # Over booking's limit (max 500): refused before the body.
            over = await s.call_tool("refund", {"amount": 600, "category": "travel"})
            assert over.isError and "ACTION_DENIED" in text(over) and "amount" in text(over)
            # Within it: the tool calls payments with a fresh child, which payments accepts.
            done = await s.call_tool("refund", {"amount": 120, "category": "travel"})
            assert not done.isError, text(done)
            assert '"done":"payments:refund"' in text(done)
        assert ran == ["book_trip", "refund"] and paid == [("payments:refund", 120)]
        assert all(root.token not in text(r) for r in (ok, bad, over, done))
        # Payments saw a child of booking's token, not booking's token.
        tree = await operator.get_transaction(root.info.txn)
        by_id = {n.info.token_id: n.info for n in tree.tokens}
        pay = [i for i in by_id.values() if i.audience.id == PAYMENTS]
        assert len(pay) == 1 and by_id[pay[0].parent_token_id].audience.id == BOOKING

        # A token without the tool's scope: every call is checked, so this one is refused.
        _, narrow = await planner_headers(minter, planner, scopes=["payments:refund"])
        async with session(url, narrow) as s:
            r = await s.call_tool("book_trip", {"destination": "Lisbon", "category": "travel"})
            assert r.isError and "ACTION_DENIED" in text(r) and "scope" in text(r)
        assert ran == ["book_trip", "refund"]


async def test_missing_forged_foreign_and_revoked_bearer_tokens_are_refused(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async with stack(booking, payments) as (url, ran, _):
        root, headers = await planner_headers(minter, planner)
        token = headers["Authorization"].removeprefix("Bearer ")
        forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
        async with httpx.AsyncClient() as http:
            good = await http.post(url, json=init, headers={**accept, **headers})
            assert good.status_code == 200, good.text
            for auth in (None, f"Bearer {forged}", "Bearer writ_garbage", f"Bearer {root.token}", f"Basic {token}"):
                h = dict(accept) if auth is None else {**accept, "Authorization": auth}
                r = await http.post(url, json=init, headers=h)
                assert r.status_code == 401, (auth, r.text)
                assert token not in r.text and root.token not in r.text
            await booking.revoke(token=token, reason="test")
            r = await http.post(url, json=init, headers={**accept, **headers})
            assert r.status_code == 401
        # And an MCP client with no token cannot even initialize.
        with pytest.raises(Exception):
            async with session(url, {}):
                pass
    assert ran == []


async def test_consent_through_url_elicitation_end_to_end(
    minter: writ.Client,
    planner: writ.Client,
    booking: writ.Client,
    payments: writ.Client,
    wallet: writ.Client,
    operator: writ.Client,
) -> None:
    elicited: list[types.ElicitRequestURLParams] = []

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        # The MCP client shows the link to the user; here the wallet app (an approver,
        # with its own certificate) records alice's approval through the back-channel.
        assert isinstance(params, types.ElicitRequestURLParams)
        elicited.append(params)
        await wallet.decide_consent(params.elicitationId, approve=True, subject="alice")
        return types.ElicitResult(action="accept")

    async with stack(booking, payments) as (url, ran, paid):
        root, headers = await planner_headers(minter, planner)
        async with session(url, headers, elicit=approve) as s:
            r = await s.call_tool("charge", {"amount": 420, "category": "travel"})
            assert not r.isError, text(r)
            assert '"done":"payments:charge"' in text(r)
            # Consented, but the body never calls payments: the redeemed token is discarded
            # when it ends, so a task outliving it gets a fresh child, not that token.
            dry = await s.call_tool("charge", {"amount": 100, "category": "travel", "dry_run": True})
            assert text(dry) == "not charged", text(dry)
        with writ.use(contexts[-1]):
            late = await writ.child_for(writ.Downstream(audience=writ.workload(PAYMENTS), scopes=["payments:charge"]))
        v = await payments.validate(late)
        assert v.active and v.info is not None and v.info.consent_request_id == ""
        assert ran == ["charge", "charge"] and paid == [("payments:charge", 420)]
        assert second[-1][0] == 403 and second[-1][1]["consent_required"] is True, second
        assert len(elicited) == 2
        consent = elicited[0]
        assert consent.url.startswith("https://") and "/consent/" in consent.url
        assert consent.elicitationId.startswith("cns_") and "420" in consent.message
        info = await operator.get_consent(consent.elicitationId)
        assert info.status == pb.CONSENT_STATUS_REDEEMED
        assert info.resource.id == PAYMENTS and info.requester == BOOKING
        trail = [pb.EventKind.Name(e.kind) for e in await operator.list_events(root.info.txn)]
        for step in ("EVENT_KIND_CONSENT_REQUESTED", "EVENT_KIND_CONSENT_APPROVED", "EVENT_KIND_CONSENT_REDEEMED"):
            assert step in trail, trail


async def test_consent_denied_or_impossible_never_runs_the_tool(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client, wallet: writ.Client
) -> None:
    async def deny(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestURLParams)
        await wallet.decide_consent(params.elicitationId, approve=False, subject="alice")
        return types.ElicitResult(action="accept")

    async def decline(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async with stack(booking, payments) as (url, ran, paid):
        _, headers = await planner_headers(minter, planner)
        async with session(url, headers, elicit=deny) as s:
            r = await s.call_tool("charge", {"amount": 100, "category": "travel"})
            assert r.isError and "CONSENT_DENIED" in text(r)
        _, headers = await planner_headers(minter, planner)
        async with session(url, headers, elicit=decline) as s:
            r = await s.call_tool("charge", {"amount": 100, "category": "travel"})
            assert r.isError and "CONSENT_REQUIRED" in text(r) and "decline" in text(r)
        _, headers = await planner_headers(minter, planner)
        async with session(url, headers) as s:  # a client without elicitation
            r = await s.call_tool("charge", {"amount": 100, "category": "travel"})
            assert r.isError and "CONSENT_REQUIRED" in text(r)
    assert ran == [] and paid == []


def test_requires_checks_its_declaration() -> None:
    with pytest.raises(TypeError, match="no argument"):

        @writ.mcp.requires("trips:book", category="kind")
        async def tool(category: str) -> str:
            return category

    with pytest.raises(TypeError, match="async"):

        @writ.mcp.requires("trips:book")
        def sync_tool() -> str:
            return ""


async def test_outside_an_mcp_request_there_is_no_context(server: Server) -> None:
    @writ.mcp.requires("trips:book")
    async def tool() -> str:
        return "ran"

    with pytest.raises(writ.NoContext):
        await tool()


def test_verified_never_falls_back_to_the_auth_context_var() -> None:
    """The SDK's auth contextvar, inside a session's tasks, holds the token of whoever
    created the session, not of the request being handled: never used."""
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

    access = writ.mcp.WritAccessToken(token="writ_creator", client_id="creator", scopes=["trips:book"])
    access._writ = writ.Context("writ_creator", pb.TokenInfo(token_id="tid_creator"))
    reset = auth_context_var.set(AuthenticatedUser(access))
    try:
        with pytest.raises(writ.NoContext):
            writ.mcp.verified()
    finally:
        auth_context_var.reset(reset)


async def test_the_verifier_binds_tokens_to_its_audience_and_answers_503_when_writ_is_down(
    minter: writ.Client, planner: writ.Client, booking: writ.Client
) -> None:
    with pytest.raises(TypeError):
        writ.mcp.WritTokenVerifier(booking, resource="http://127.0.0.1/mcp")  # type: ignore[call-arg]
    _, headers = await planner_headers(minter, planner)
    token = headers["Authorization"].removeprefix("Bearer ")
    right = writ.mcp.WritTokenVerifier(booking, audience=BOOKING, resource="http://127.0.0.1/mcp")
    wrong = writ.mcp.WritTokenVerifier(booking, audience=PAYMENTS, resource="http://127.0.0.1/mcp")
    for v in (right, wrong):
        writ.mcp.guard(FastMCP("x", token_verifier=v, auth=writ.mcp.auth_settings("http://127.0.0.1/mcp", issuer=ISSUER)))
    ok = await right.verify_token(token)
    assert ok is not None and ok.claims is not None and ok.claims["aud"] == BOOKING
    assert await wrong.verify_token(token) is None

    # Writ unreachable: not a 401 (the token may be fine), a 503.
    async with await writ.connect(f"127.0.0.1:{free_port()}", timeout=2, max_attempts=1) as down:
        port = free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        mcp = FastMCP(
            "down",
            token_verifier=writ.mcp.WritTokenVerifier(down, audience=BOOKING, resource=url),
            auth=writ.mcp.auth_settings(url, issuer=ISSUER),
        )
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        accept = {"Accept": "application/json, text/event-stream"}
        async with serve_asgi(writ.mcp.streamable_http_app(mcp), port=port, lifespan=True), httpx.AsyncClient() as http:
            r = await http.post(url, json=init, headers={**accept, **headers})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "temporarily_unavailable" and "writ_" not in r.text


async def test_a_tool_registered_without_its_check_is_never_served(
    minter: writ.Client, planner: writ.Client, booking: writ.Client
) -> None:
    """``@requires`` above ``@mcp.tool()`` registers the unchecked function (FastMCP returns
    it unchanged): the server refuses to start; a verifier never guarded, or a tool
    registered later without a check, refuses every request."""
    ran: list[str] = []

    def server(url: str) -> FastMCP:
        verifier = writ.mcp.WritTokenVerifier(booking, audience=BOOKING, resource=url)
        return FastMCP("booking", token_verifier=verifier, auth=writ.mcp.auth_settings(url, issuer=ISSUER))

    url = f"http://127.0.0.1:{free_port()}/mcp"
    mcp = server(url)

    @writ.mcp.requires("payments:refund", amount="amount")  # the wrong order
    @mcp.tool()
    async def refund(amount: int) -> str:
        ran.append("refund")
        return "refunded"

    @writ.mcp.tool(mcp, "trips:book")
    async def book() -> str:
        return "booked"

    assert writ.mcp.unchecked_tools(mcp) == ["refund"]
    with pytest.raises(writ.mcp.UncheckedTools, match="refund") as e:
        writ.mcp.streamable_http_app(mcp)
    assert e.value.tools == ["refund"]
    writ.mcp.streamable_http_app(mcp, unchecked=["refund"])  # named: served as it is

    async def ping() -> str:
        ran.append("ping")
        return "pong"

    _, headers = await planner_headers(minter, planner)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    # Never guarded (the SDK's app used directly): every request is refused.
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    plain = server(url)
    writ.mcp.tool(plain, "trips:book")(ping)
    async with serve_asgi(plain.streamable_http_app(), port=port, lifespan=True), httpx.AsyncClient() as http:
        r = await http.post(url, json=init, headers={**accept, **headers})
        assert r.status_code == 500
    # Guarded, then a tool added without its check: every request is refused.
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    late = server(url)
    app = writ.mcp.streamable_http_app(late)
    async with serve_asgi(app, port=port, lifespan=True), httpx.AsyncClient() as http:
        assert (await http.post(url, json=init, headers={**accept, **headers})).status_code == 200
        late.add_tool(ping)
        r = await http.post(url, json=init, headers={**accept, **headers})
        assert r.status_code == 500
    assert ran == []
