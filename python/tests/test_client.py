"""The client against the real server: a chain, the errors (reason and dimension survive),
inactive answers, revocation, consent, and idempotent retries after a lost response."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from conftest import ASSERTER, BOOKING, PAYMENTS, PLANNER, Server, mint_root, to_booking

import writ
from writ._proto import writ_pb2 as pb


async def test_a_three_hop_chain_narrows_at_each_hop(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client
) -> None:
    root = await mint_root(minter)
    assert root.token.startswith("writ_")
    assert root.info.audience.id == PLANNER and root.info.depth == 0
    b = await to_booking(planner, root)
    assert b.info.parent_token_id == root.info.token_id and b.info.depth == 1
    v = await booking.validate(b.token, action=writ.Action("trips:book", category="travel"))
    assert v.active and v.allowed and v.info is not None and v.info.subject == "alice"
    p = await booking.downscope(
        b.token,
        audience=writ.workload(PAYMENTS),
        scopes=["payments:refund"],
        claims={"amount": writ.max_(450), "category": writ.deny("gambling", "health", case_insensitive=True)},
        ttl=60,
    )
    assert p.info.act.id == BOOKING and p.info.act.act.id == PLANNER
    ok = await payments.validate(p.token, action=writ.Action("payments:refund", amount=420, category="travel"))
    assert ok.allowed
    denied = await payments.validate(p.token, action=writ.Action("payments:refund", amount=420, category="Health"))
    assert denied.active and not denied.allowed
    assert denied.decision is not None and denied.decision.denied_by == "category"
    too_much = await payments.validate(p.token, action=writ.Action("payments:refund", amount=451, category="x"))
    assert not too_much.allowed and too_much.decision is not None and too_much.decision.denied_by == "amount"


async def test_refusals_keep_reason_and_dimension(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, mallory: writ.Client, server: Server
) -> None:
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    # Widening a claim: refused, naming the dimension.
    with pytest.raises(writ.NarrowingRefused) as e:
        await booking.downscope(
            b.token, audience=writ.workload(PAYMENTS), scopes=["payments:refund"], claims={"amount": writ.max_(900)}
        )
    assert e.value.reason == "NARROWING_REFUSED" and e.value.dimension == "claims"
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    # A scope the parent does not hold.
    with pytest.raises(writ.NarrowingRefused) as e:
        await booking.downscope(b.token, audience=writ.workload(PAYMENTS), scopes=["trips:read"])
    assert e.value.dimension == "scopes"
    # Someone else presenting booking's token derives nothing.
    with pytest.raises(writ.NarrowingRefused) as e:
        await mallory.downscope(b.token, audience=writ.workload(PAYMENTS), scopes=["payments:refund"])
    assert e.value.dimension == "holder"
    assert b.token not in str(e.value) and b.token not in repr(e.value)
    # A forged parent.
    forged = b.token[:-4] + ("AAAA" if not b.token.endswith("AAAA") else "BBBB")
    with pytest.raises(writ.TokenRejected) as e2:
        await booking.downscope(forged, audience=writ.workload(PAYMENTS), scopes=["payments:refund"])
    assert e2.value.reason == "PARENT_TOKEN_INVALID"
    assert forged not in str(e2.value) and forged not in repr(e2.value)
    # An invalid field.
    with pytest.raises(writ.InvalidField) as e3:
        await booking.request_consent(b.token, writ.Action("trips:read"), resource=PAYMENTS, reason="r")
    assert e3.value.reason == "INVALID_FIELD" and e3.value.field == "action.scope"
    assert e3.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # A field refused while the request is decoded says the same.
    with pytest.raises(writ.InvalidField) as e5:
        await minter.mint(subject="", audience=writ.agent(PLANNER), scopes=["trips:book"])
    assert e5.value.reason == "INVALID_FIELD" and e5.value.field == "subject"
    # A bad credential.
    async with await writ.connect(server.target, tls=writ.Tls(ca=server.ca), credential="wmc_wrong") as bad:
        with pytest.raises(writ.Unauthenticated) as e4:
            await mint_root(bad)
    assert e4.value.reason == "BAD_CREDENTIAL" and e4.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_inactive_is_an_answer_and_revocation_is_final(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client, operator: writ.Client
) -> None:
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    wrong = await payments.validate(b.token)
    assert not wrong.active and wrong.inactive_reason == "wrong_audience" and wrong.info is None
    assert (await booking.validate("writ_nonsense")).inactive_reason == "malformed"
    # The holder revokes its own token; the parent lives on.
    revoked = await booking.revoke(token=b.token, reason="done")
    assert revoked == [b.info.token_id]
    assert (await booking.validate(b.token)).inactive_reason == "revoked"
    assert (await planner.validate(root.token)).active
    # An operator revokes the whole transaction by id.
    assert root.info.token_id in await operator.revoke(txn=root.info.txn, reason="user cancelled")
    assert (await planner.validate(root.token)).inactive_reason == "revoked"
    with pytest.raises(writ.TokenRejected) as e:
        await planner.downscope(root.token, audience=writ.agent(BOOKING), scopes=["trips:book"])
    assert e.value.reason == "PARENT_TOKEN_REVOKED"
    with pytest.raises(ValueError):
        await operator.revoke(token_id="a", txn="b", reason="x")


async def test_consent_back_channel_end_to_end(
    minter: writ.Client, planner: writ.Client, booking: writ.Client, payments: writ.Client, wallet: writ.Client
) -> None:
    root = await mint_root(minter)
    b = await to_booking(planner, root)
    charge = writ.Action("payments:charge", amount=420, category="travel")
    v = await booking.validate(b.token, action=charge)
    assert v.active and not v.allowed and v.consent_required
    req = await booking.request_consent(b.token, charge, resource=PAYMENTS, reason="the Lisbon flight")
    assert req.id.startswith("cns_") and req.url.startswith("https://") and not req.existing
    assert req.url not in repr(req)
    again = await booking.request_consent(b.token, charge, resource=PAYMENTS, reason="the Lisbon flight")
    assert again.id == req.id and again.existing
    with pytest.raises(writ.ConsentPending) as pending:
        await booking.redeem_consent(req.id, b.token)
    assert pending.value.consent_request_id == req.id
    # Only the request's subject counts.
    with pytest.raises(writ.ConsentError) as wrong:
        await wallet.decide_consent(req.id, approve=True, subject="bob")
    assert wrong.value.reason == "CONSENT_WRONG_SUBJECT"
    decided = await wallet.decide_consent(req.id, approve=True, subject="alice")
    assert decided.channel == "back_channel"
    redeemed = await booking.redeem_consent(req.id, b.token)
    assert redeemed.info.audience.id == PAYMENTS and redeemed.info.max_uses == 1
    assert (await payments.validate(redeemed.token, action=charge)).allowed
    assert (await payments.validate(redeemed.token, action=charge)).inactive_reason == "exhausted"
    with pytest.raises(writ.ConsentError) as twice:
        await booking.redeem_consent(req.id, b.token)
    assert twice.value.reason == "CONSENT_REDEEMED" and twice.value.code == grpc.StatusCode.FAILED_PRECONDITION


class LoseFirstResponse(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Sends the first call of each named method, lets the server answer it, then drops
    the answer and raises UNAVAILABLE: a response lost on the way back."""

    def __init__(self, *methods: str) -> None:
        self.methods = set(methods)
        self.lost: dict[str, Any] = {}
        self.calls: dict[str, int] = {}

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls[method] = self.calls.get(method, 0) + 1
        call = await continuation(details, request)
        if method in self.methods and method not in self.lost:
            try:
                self.lost[method] = await call  # the server did it
            except grpc.aio.AioRpcError as refused:  # or refused it: that answer is lost too
                self.lost[method] = refused
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="response lost (test)"
            )
        return call


async def test_a_retry_after_a_lost_response_returns_the_same_token_and_spends_nothing_twice(
    server: Server, operator: writ.Client
) -> None:
    lossy = LoseFirstResponse("/writ.v1.TokenService/Mint", "/writ.v1.TokenService/Downscope")
    async with (
        await writ.connect(
            server.target, tls=writ.Tls(ca=server.ca), credential=server.credential("minter"), interceptors=[lossy]
        ) as minter,
        await writ.connect(server.target, tls=server.tls("planner"), interceptors=[lossy]) as planner,
    ):
        root = await mint_root(minter, max_uses=10)
        assert lossy.calls["/writ.v1.TokenService/Mint"] == 2
        assert lossy.lost["/writ.v1.TokenService/Mint"].token == root.token
        child = await to_booking(planner, root, max_uses=3)
        assert lossy.calls["/writ.v1.TokenService/Downscope"] == 2
        assert lossy.lost["/writ.v1.TokenService/Downscope"].token == child.token
    tree = await operator.get_transaction(root.info.txn)
    assert [n.info.token_id for n in tree.tokens] == [root.info.token_id, child.info.token_id]
    root_node = tree.tokens[0]
    assert root_node.children == 1 and root_node.uses == 3


async def test_unsafe_calls_are_never_retried(server: Server) -> None:
    lossy = LoseFirstResponse("/writ.v1.TokenService/Validate", "/writ.v1.TokenService/RedeemConsent")
    async with await writ.connect(server.target, tls=server.tls("booking"), interceptors=[lossy]) as c:
        # Without an action Validate is retried ...
        assert not (await c.validate("writ_x")).active
        assert lossy.calls["/writ.v1.TokenService/Validate"] == 2
        # ... with one (which may spend a use) it is not, and neither is RedeemConsent.
        with pytest.raises(writ.Unavailable):
            await c.redeem_consent("cns_0", "writ_x")
        assert lossy.calls["/writ.v1.TokenService/RedeemConsent"] == 1
        lossy.lost.clear()
        with pytest.raises(writ.Unavailable):
            await c.validate("writ_x", action=writ.Action("trips:book"))
        assert lossy.calls["/writ.v1.TokenService/Validate"] == 3


async def test_plaintext_is_refused_beyond_loopback_and_secrets_stay_out_of_reprs(minter: writ.Client) -> None:
    with pytest.raises(ValueError, match="plaintext"):
        await writ.connect("192.0.2.1:7433")
    root = await mint_root(minter)
    for shown in (repr(root), str(root), repr(writ.Context(root.token, root.info)), repr(minter)):
        assert root.token not in shown
    with pytest.raises(TypeError):
        writ.Action("x", flag=True).to_proto()  # type: ignore[arg-type]


async def test_a_client_assertion_per_attempt(server: Server, minter: writ.Client, operator: writ.Client) -> None:
    """A party proving itself with JWT client assertions (no certificate): each attempt
    carries a fresh one (an assertion is single use), retries included."""
    root = await mint_root(minter, audience=writ.agent(ASSERTER))
    made: list[str] = []

    async def assertion() -> str:
        made.append(server.assertion())
        return made[-1]

    lossy = LoseFirstResponse("/writ.v1.TokenService/Downscope")
    async with await writ.connect(
        server.target, tls=writ.Tls(ca=server.ca), assertion=assertion, interceptors=[lossy]
    ) as asserter:
        v = await asserter.validate(root.token)
        assert v.active and v.info is not None and v.info.audience.id == ASSERTER
        child = await asserter.downscope(root.token, audience=writ.agent(BOOKING), scopes=["trips:book"], ttl=60)
        assert child.info.act.id == ASSERTER
        assert child.info.actor_auth == pb.AUTH_METHOD_CLIENT_ASSERTION
    assert len(made) == 3 and len(set(made)) == 3  # validate, downscope, its retry
    assert len((await operator.get_transaction(root.info.txn)).tokens) == 2
    # The same assertion twice is a replay: refused.
    once = server.assertion()
    async with await writ.connect(server.target, tls=writ.Tls(ca=server.ca), assertion=lambda: once) as replayer:
        assert (await replayer.validate(root.token)).active
        with pytest.raises(writ.Unauthenticated) as e:
            await replayer.validate(root.token)
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and e.value.reason
