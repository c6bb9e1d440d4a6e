"""The Txn-Token helpers on the wire: the httpx hook never forwards the parent (checked
with a recording server), and the ASGI middleware lets only an active token for this
service reach the app."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from conftest import BOOKING, PAYMENTS, PLANNER, Recorder, Server, mint_root, serve_asgi, to_booking
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import writ
import writ.http
from writ.http import Incoming, TxnTokenHook, TxnTokenMiddleware


def payments_downstream(base_url: str) -> writ.Downstream:
    return writ.Downstream(
        audience=writ.workload(PAYMENTS),
        scopes=["payments:refund"],
        claims={"amount": writ.max_(300)},
        ttl=30,
        match=base_url + "/payments",
    )


async def test_the_hook_sends_a_fresh_child_never_the_parent(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    rec = Recorder()
    async with serve_asgi(rec) as url:
        hook = TxnTokenHook([payments_downstream(url)], client=booking)
        async with httpx.AsyncClient(event_hooks={"request": [hook]}) as http:
            with writ.use(writ.Context(b.token, b.info, booking)):
                # A Txn-Token set by hand (here the parent itself) is replaced, not forwarded.
                await http.post(f"{url}/payments/refund", headers={"Txn-Token": b.token})
                await http.post(f"{url}/payments/refund")
                # Not a declared downstream: no Txn-Token at all, even one set by hand.
                await http.get(f"{url}/elsewhere", headers={"Txn-Token": b.token})
                # Segment prefix: /paymentsX is not under /payments.
                await http.get(f"{url}/paymentsX")
    first, second = rec.txn_tokens(0), rec.txn_tokens(1)
    assert len(first) == 1 and len(second) == 1
    assert first[0] != second[0], "each call gets its own child"
    for raw in rec.requests:
        assert all(b.token.encode() not in v and root.token.encode() not in v for _, v in raw[1])
    assert rec.txn_tokens(2) == [] and rec.txn_tokens(3) == []
    for child in (first[0], second[0]):
        v = await payments.validate(child, action=writ.Action("payments:refund", amount=300, category="x"))
        assert v.allowed and v.info is not None
        assert v.info.parent_token_id == b.info.token_id and v.info.audience.id == PAYMENTS
        assert dict(v.info.claims)["amount"].max == 300


async def test_the_hook_fails_closed(minter: writ.Client, planner: writ.Client, booking: writ.Client) -> None:
    rec = Recorder()
    async with serve_asgi(rec) as url:
        d = payments_downstream(url)
        async with httpx.AsyncClient(event_hooks={"request": [TxnTokenHook([d], client=booking)]}) as http:
            # No current token: nothing is sent.
            with pytest.raises(writ.NoContext):
                await http.post(f"{url}/payments/refund")
            # A downscope Writ refuses (wider than the parent): nothing is sent.
            root = await mint_root(minter)
            b = await to_booking(planner, root)
            wide = writ.Downstream(
                audience=writ.workload(PAYMENTS), scopes=["payments:refund"], claims={"amount": writ.max_(5000)}, match=url
            )
            async with httpx.AsyncClient(event_hooks={"request": [TxnTokenHook([wide], client=booking)]}) as http2:
                with writ.use(writ.Context(b.token, b.info, booking)):
                    with pytest.raises(writ.NarrowingRefused):
                        await http2.post(f"{url}/payments/refund")
            # Revoked parent: refused at Writ, nothing sent.
            await booking.revoke(token=b.token, reason="test")
            with writ.use(writ.Context(b.token, b.info, booking)):
                with pytest.raises(writ.TokenRejected):
                    await http.post(f"{url}/payments/refund")
    assert rec.requests == []


async def test_redirects_get_a_fresh_child_only_where_declared(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    """The hook runs on every hop of a redirect chain: a 302 to an undeclared origin
    carries no Txn-Token (httpx copies every other header to the redirect target), a 302
    to a declared one gets a child derived for that hop. No auth-flow form is offered:
    httpx runs an auth flow once, outside its redirect loop."""
    assert not [n for n, v in vars(writ.http).items() if isinstance(v, type) and issubclass(v, httpx.Auth)]
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    rec, evil = Recorder(), Recorder()
    async with serve_asgi(rec) as url, serve_asgi(evil) as evil_url:
        hook = TxnTokenHook([payments_downstream(url)], client=booking)
        async with httpx.AsyncClient(event_hooks={"request": [hook]}, follow_redirects=True) as http:
            with writ.use(writ.Context(b.token, b.info, booking)):
                away = await http.get(f"{url}/payments/go", params={"to": f"{evil_url}/payments/steal"})
                back = await http.get(f"{url}/payments/go", params={"to": f"{url}/payments/landing"})
    assert away.status_code == 200 and back.status_code == 200
    assert [p for p, _ in evil.requests] == ["/payments/steal"] and evil.txn_tokens(0) == []
    assert [p for p, _ in rec.requests] == ["/payments/go", "/payments/go", "/payments/landing"]
    first, hop1, hop2 = rec.txn_tokens(0), rec.txn_tokens(1), rec.txn_tokens(2)
    assert len(first) == 1 and len(hop1) == 1 and len(hop2) == 1
    assert hop2[0] != hop1[0], "the redirected request gets its own child"
    v = await payments.validate(hop2[0])
    assert v.active and v.info is not None and v.info.parent_token_id == b.info.token_id


def payments_app(client: writ.Client, ran: list[str]) -> Any:
    async def refund(request: Request) -> JSONResponse:
        ctx = writ.current()
        assert ctx is not None and request.state.writ is ctx
        ran.append(ctx.info.token_id)
        body = await request.json()
        try:
            await writ.check(writ.Action("payments:refund", amount=body["amount"], category=body["category"]))
        except writ.ActionDenied as e:
            return JSONResponse({"refused": e.denied_by}, status_code=403)
        return JSONResponse({"refunded": body["amount"], "for": ctx.info.subject})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/refund", refund, methods=["POST"]), Route("/healthz", health)])
    return TxnTokenMiddleware(app, client=client, exempt=["/healthz"])


async def test_the_middleware_refuses_every_bad_token_before_the_app_runs(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    good = await booking.downscope(b.token, audience=writ.workload(PAYMENTS), scopes=["payments:refund"], ttl=60)
    revoked = await booking.downscope(b.token, audience=writ.workload(PAYMENTS), scopes=["payments:refund"], ttl=60)
    await payments.revoke(token=revoked.token, reason="test")  # its holder
    short = await booking.downscope(b.token, audience=writ.workload(PAYMENTS), scopes=["payments:refund"], ttl=1)
    forged = good.token[:-6] + ("AAAAAA" if not good.token.endswith("AAAAAA") else "BBBBBB")
    ran: list[str] = []
    body = {"amount": 100, "category": "travel"}
    async with serve_asgi(payments_app(payments, ran)) as url, httpx.AsyncClient(base_url=url) as http:
        cases: list[tuple[list[tuple[str, str]], str | set[str]]] = [
            ([], "missing_token"),
            ([("Txn-Token", good.token), ("Txn-Token", good.token)], "multiple_tokens"),
            ([("Txn-Token", forged)], {"malformed", "unknown"}),  # the integrity tag fails
            ([("Txn-Token", "writ_garbage")], "malformed"),
            ([("Txn-Token", revoked.token)], "revoked"),
            ([("Txn-Token", b.token)], "wrong_audience"),  # booking's token presented to payments
            ([("Authorization", f"Bearer {good.token}")], "missing_token"),  # never in Authorization
        ]
        await asyncio.sleep(1.5)  # let `short` expire (ttl 1 s)
        cases.append(([("Txn-Token", short.token)], "expired"))
        for headers, reason in cases:
            r = await http.post("/refund", json=body, headers=httpx.Headers(headers))
            assert r.status_code == 401, (reason, r.text)
            expected = reason if isinstance(reason, set) else {reason}
            assert r.json()["error"] == "invalid_token" and r.json()["reason"] in expected, r.text
            assert "writ_" not in r.text and r.headers["cache-control"] == "no-store"
        assert ran == [], "the app never ran for a refused token"
        assert (await http.get("/healthz")).status_code == 200
        # The good token reaches the app, whose own action check still applies.
        ok = await http.post("/refund", json=body, headers={"Txn-Token": good.token})
        assert ok.status_code == 200 and ok.json() == {"refunded": 100, "for": "alice"}
        too_much = await http.post("/refund", json={"amount": 501, "category": "travel"}, headers={"Txn-Token": good.token})
        assert too_much.status_code == 403 and too_much.json() == {"refused": "amount"}
    assert ran == [good.info.token_id, good.info.token_id]


async def test_a_chain_over_http_booking_to_payments(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    """Booking's handler (behind the middleware, as booking) calls payments (behind the
    middleware, as payments) through the hook: each hop verifies its own token."""
    ran: list[str] = []
    async with serve_asgi(payments_app(payments, ran)) as pay_url:
        hook = TxnTokenHook(
            [writ.Downstream(audience=writ.workload(PAYMENTS), scopes=["payments:refund"], ttl=30, match=pay_url)]
        )

        async def book(request: Request) -> JSONResponse:
            async with httpx.AsyncClient(event_hooks={"request": [hook]}) as http:
                r = await http.post(f"{pay_url}/refund", json={"amount": 120, "category": "travel"})
            return JSONResponse({"payments": r.json(), "status": r.status_code})

        booking_app = TxnTokenMiddleware(Starlette(routes=[Route("/book", book, methods=["POST"])]), client=booking)
        async with serve_asgi(booking_app) as book_url, httpx.AsyncClient() as http:
            root = await mint_root(minter)
            b = await to_booking(planner, root)
            r = await http.post(f"{book_url}/book", headers={"Txn-Token": b.token})
            assert r.status_code == 200, r.text
            assert r.json() == {"payments": {"refunded": 120, "for": "alice"}, "status": 200}
    assert len(ran) == 1
    assert PLANNER != BOOKING  # (parties as the conftest names them)


async def test_propagation_follows_tasks_and_stays_inside_the_block(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, server: Server
) -> None:
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    ctx = writ.Context(b.token, b.info, booking)
    d = writ.Downstream(audience=writ.workload(PAYMENTS), scopes=["payments:refund"], ttl=30)
    seen: list[str | None] = []

    async def leaf() -> str:
        await asyncio.sleep(0)
        c = writ.current()
        seen.append(c.info.token_id if c else None)
        return await writ.child_for(d)

    assert writ.current() is None
    outside = asyncio.create_task(leaf())  # created before the block: no context
    with pytest.raises(writ.NoContext):
        await outside
    with writ.use(ctx):
        children = await asyncio.gather(*(asyncio.create_task(leaf()) for _ in range(3)))
        async with asyncio.TaskGroup() as tg:
            t = tg.create_task(leaf())
    assert writ.current() is None
    assert seen == [None] + [b.info.token_id] * 4
    assert len(set(children + [t.result()])) == 4 and b.token not in children


def refund_action(request: Incoming) -> writ.Action:
    """The action a refund request asks for, from its JSON body."""
    body = request.json()
    return writ.Action("payments:refund", amount=body["amount"], category=body["category"])


async def test_the_middleware_checks_the_requests_action_before_the_app_runs(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    """With ``action=``, a token that answers only action checks reaches the app only
    after Writ allowed the request's action; a denied or uncomputable action never
    reaches it."""
    root = await mint_root(minter)
    b = await to_booking(planner, root)

    def only(**kw: object) -> Any:
        args: dict[str, Any] = dict(audience=writ.workload(PAYMENTS), scopes=["payments:refund"], require_action_check=True)
        args.update(kw)
        return booking.downscope(b.token, **args)

    once = await only(max_uses=1)
    ran: list[tuple[str, str | None, Any]] = []
    body = {"amount": 50, "category": "travel"}
    # Without `action`, such a token is inactive to introspection: refused.
    async with serve_asgi(payments_app(payments, [])) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/refund", json=body, headers={"Txn-Token": once.token})
        assert r.status_code == 401 and r.json()["reason"] == "action_required"

    async def refund(request: Request) -> JSONResponse:
        ctx = writ.require()
        ran.append((ctx.info.token_id, ctx.action.scope if ctx.action else None, await request.json()))
        return JSONResponse({"for": ctx.info.subject})

    app = TxnTokenMiddleware(
        Starlette(routes=[Route("/refund", refund, methods=["POST"])]), client=payments, action=refund_action, max_body=64
    )
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as http:
        # Denied by a claim (booking's child allows at most 500): 403, the app never runs.
        over = await http.post("/refund", json={"amount": 501, "category": "travel"}, headers={"Txn-Token": once.token})
        assert over.status_code == 403 and over.json()["error"] == "insufficient_scope", over.text
        assert over.json()["denied_by"] == "amount" and over.json()["consent_required"] is False
        # No action can be computed from the request: 400; a body over max_body: 413.
        bad = await http.post("/refund", content=b"not json", headers={"Txn-Token": once.token})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
        big = await http.post("/refund", json={"amount": 1, "category": "x" * 100}, headers={"Txn-Token": once.token})
        assert big.status_code == 413
        assert ran == []
        # Allowed: the app runs once, with the action recorded and the body replayed.
        ok = await http.post("/refund", json=body, headers={"Txn-Token": once.token})
        assert ok.status_code == 200 and ok.json() == {"for": "alice"}, ok.text
        assert ran == [(once.info.token_id, "payments:refund", body)]
        # Its one use is spent: the same token is now refused before the app.
        again = await http.post("/refund", json=body, headers={"Txn-Token": once.token})
        assert again.status_code == 401 and again.json()["reason"] == "exhausted"
        # A high-privilege scope answers consent_required: 403, naming it.
        charge = await booking.downscope(b.token, audience=writ.workload(PAYMENTS), scopes=["payments:charge"])
        app.action = lambda r: writ.Action("payments:charge", amount=50, category="travel")
        latent = await http.post("/refund", json=body, headers={"Txn-Token": charge.token})
        assert latent.status_code == 403 and latent.json()["consent_required"] is True, latent.text
        # Ordinary tokens still need to be there.
        assert (await http.post("/refund", json=body)).status_code == 401
    assert len(ran) == 1


async def test_asgi_in_the_callers_task_each_request_is_checked_against_its_own_token(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    """httpx.ASGITransport runs the app in the caller's task (and context): two requests
    in a row, each with its own token, are each checked against that token (by the
    middleware's action, and by writ.check inside the app), and the caller's context is
    what it was before."""
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    tokens = [
        await booking.downscope(
            b.token, audience=writ.workload(PAYMENTS), scopes=["payments:refund"], require_action_check=True
        )
        for _ in range(2)
    ]

    async def refund(request: Request) -> JSONResponse:
        ctx = writ.require()
        await writ.check(writ.Action("payments:refund", amount=50, category="travel"))
        return JSONResponse({"checked": ctx.info.token_id, "still": writ.require() is ctx})

    app = TxnTokenMiddleware(
        Starlette(routes=[Route("/refund", refund, methods=["POST"])]), client=payments, action=refund_action
    )
    mine = writ.Context(b.token, b.info, booking)
    with writ.use(mine):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://payments") as http:
            for t in tokens:
                r = await http.post("/refund", json={"amount": 50, "category": "travel"}, headers={"Txn-Token": t.token})
                assert r.status_code == 200, r.text
                assert r.json() == {"checked": t.info.token_id, "still": True}
                assert writ.current() is mine
    assert writ.current() is None


async def test_the_app_never_sees_the_txn_token_header(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    """The middleware removes Txn-Token from the request before the app (and the action
    callable) run: the app has the verified context, not a header it could copy on."""
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    good = await booking.downscope(b.token, audience=writ.workload(PAYMENTS), scopes=["payments:refund"], ttl=60)
    rec = Recorder()
    seen: list[str | None] = []

    def action(request: Incoming) -> None:
        seen.append(request.header("txn-token"))

    async with serve_asgi(TxnTokenMiddleware(rec, client=payments, action=action)) as url, httpx.AsyncClient() as http:
        r = await http.get(f"{url}/x", headers={"Txn-Token": good.token, "X-Other": "kept"})
        assert r.status_code == 200, r.text
    assert rec.txn_tokens(0) == [] and seen == [None]
    assert (b"x-other", b"kept") in rec.requests[0][1]
