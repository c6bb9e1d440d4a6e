"""Unit tests of the library's own decisions, with fabricated answers (no server)."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import httpx
import pytest

import writ
from writ._proto import writ_pb2 as pb
from writ.client import _is_loopback
from writ.context import Redeemed, raise_unless_allowed
from writ.http import AmbiguousURL, TxnTokenHook


class FakeClient:
    """Answers every Validate with one fabricated verdict."""

    def __init__(self, verdict: writ.Verdict) -> None:
        self.verdict = verdict
        self.asked: list[Any] = []

    async def validate(self, token: str, *, action: writ.Action | None = None, **_: Any) -> writ.Verdict:
        self.asked.append(action)
        return self.verdict


INFO = pb.TokenInfo(token_id="tid_fabricated", subject="alice")


async def test_an_action_check_without_a_decision_is_denied() -> None:
    """Active, but no decision for the action that was sent: fail closed."""
    undecided = writ.Verdict(active=True, info=INFO, decision=None)
    with pytest.raises(writ.ActionDenied):
        raise_unless_allowed(undecided, action_sent=True)
    assert raise_unless_allowed(undecided, action_sent=False) is undecided  # introspection only
    fake = FakeClient(undecided)
    with writ.use(writ.Context("writ_fabricated", INFO, cast(writ.Client, fake))):
        with pytest.raises(writ.ActionDenied):
            await writ.check(writ.Action("payments:refund", amount=1))
    assert len(fake.asked) == 1
    # The wire answer read the same way: an action asked, no decision, not allowed.
    r = pb.ValidateResponse(active=True, info=INFO)
    assert not writ.Verdict.from_proto(r, action_asked=True).allowed
    assert writ.Verdict.from_proto(r).allowed
    allowed = pb.ValidateResponse(active=True, info=INFO, decision=pb.ActionDecision(allowed=True))
    assert writ.Verdict.from_proto(allowed, action_asked=True).allowed


class FakeDownscoper:
    """Answers every Downscope with a new fabricated child."""

    def __init__(self) -> None:
        self.children = 0

    async def downscope(self, parent: str, **_: Any) -> writ.Minted:
        self.children += 1
        return writ.Minted(f"writ_child{self.children}", pb.TokenInfo(token_id=f"tid_child{self.children}"))


PAYMENTS = "spiffe://writ.local/workload/payments"


async def test_a_consents_redeemed_token_is_handed_out_once_and_only_to_its_resource() -> None:
    fake = FakeDownscoper()
    held = Redeemed(PAYMENTS, "writ_redeemed")
    ctx = writ.Context("writ_parent", INFO, cast(writ.Client, fake), consented=held)
    charge = writ.Downstream(audience=writ.workload(PAYMENTS), scopes=["payments:charge"])
    other = writ.Downstream(audience=writ.agent("spiffe://writ.local/agent/hotel"), scopes=["trips:book"])
    with writ.use(ctx):
        assert await writ.child_for(other) == "writ_child1"  # another party: a fresh child
        assert await writ.child_for(charge) == "writ_redeemed"  # the consent's resource: once
        assert await writ.child_for(charge) == "writ_child2"  # then fresh children
    assert "writ_redeemed" not in repr(held) and "writ_" not in repr(ctx)
    # Discarded (as when the tool body ends), it is never handed out.
    late = Redeemed(PAYMENTS, "writ_redeemed2")
    late.discard()
    with writ.use(writ.Context("writ_parent", INFO, cast(writ.Client, fake), consented=late)):
        assert await writ.child_for(charge) == "writ_child3"


CHARGES = writ.Downstream(audience=writ.workload(PAYMENTS), scopes=["payments:charge"])


def hook_for(*patterns: str) -> TxnTokenHook:
    return TxnTokenHook([dataclasses.replace(CHARGES, match=patterns)], client=cast(writ.Client, FakeDownscoper()))


async def attached(hook: TxnTokenHook, url: str) -> bool:
    request = httpx.Request("GET", url, headers={"Txn-Token": "writ_forwarded"})
    with writ.use(writ.Context("writ_parent", INFO)):
        await hook(request)
    values = request.headers.get_list("Txn-Token")
    assert "writ_forwarded" not in values
    return bool(values)


@pytest.mark.parametrize(
    ("pattern", "url", "expected"),
    [
        # A base URL: that scheme, host, port, and path prefix by whole segments (raw).
        ("https://gw/v1", "https://gw/v1", True),
        ("https://gw/v1", "https://gw/v1/charges?x=%2F", True),
        ("https://gw/v1", "https://GW:443/v1/x", True),
        ("https://gw/v1", "https://gw/v1x", False),
        ("https://gw/v1", "https://gw/v2/x", False),
        ("https://gw/v1", "http://gw/v1/x", False),
        ("https://gw/v1", "https://gw:8443/v1/x", False),
        ("https://gw/v1/", "https://gw/v1/x", True),
        ("https://gw/users/@me", "https://gw/users/@me/x", True),
        # A bare host means https on its default port (or the port given), any path.
        ("gw", "https://gw/anything", True),
        ("gw", "http://gw/anything", False),
        ("gw", "https://gw:8443/x", False),
        ("gw:8443", "https://gw:8443/x", True),
        ("gw:8443", "http://gw:8443/x", False),
        ("http://gw:8080", "http://gw:8080/x", True),
        # IPv6 literals, however spelled.
        ("[::1]:8080", "https://[::1]:8080/x", True),
        ("[::1]:8080", "https://[0:0::1]:8080/x", True),
        ("[::1]:8080", "http://[::1]:8080/x", False),
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1/x", True),
    ],
)
async def test_downstream_matching(pattern: str, url: str, expected: bool) -> None:
    assert await attached(hook_for(pattern), url) is expected


@pytest.mark.parametrize(
    "url",
    [
        "https://gw/v1%2F..%2Fadmin",
        "https://gw/v1/%2e%2e/admin",
        "https://gw/v1/%2E./admin",
        "https://gw/v1/..;/admin",
        "https://gw/v1/x%5C..%5Cadmin",
        "https://gw/v1/%252e%252e/admin",
    ],
)
async def test_an_ambiguous_path_under_a_path_prefix_is_refused(url: str) -> None:
    """Encoded separators or dots (which a server may decode into another path) under a
    path-prefixed downstream: the hook raises, the request is never sent."""
    with pytest.raises(AmbiguousURL):
        await attached(hook_for("https://gw/v1"), url)
    assert await attached(hook_for("gw"), url)  # a bare host covers every path anyway


@pytest.mark.parametrize(
    "pattern", ["https://gw/v1?x=1", "https://gw/v1#f", "gw/v1", "ftp://gw", "https://gw/v1/../admin", "https://u@gw/", "u:p@gw", ""]
)
def test_a_bad_match_pattern_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        hook_for(pattern)


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:7433",
        "127.0.0.2:7433",
        "localhost:7433",
        "LOCALHOST:7433",
        "localhost",
        "[::1]:7433",
        "[0:0::1]:7433",
        "dns:///localhost:7433",
        "dns:localhost:7433",
        "dns:///[::1]:7433",
        "ipv4:127.0.0.1:7433,127.0.0.2:7434",
        "ipv6:[::1]:7433",
        "unix:/run/writ.sock",
        "unix:///run/writ.sock",
        "unix-abstract:writ",
    ],
)
def test_plaintext_targets_on_this_machine(target: str) -> None:
    assert _is_loopback(target)


@pytest.mark.parametrize(
    "target",
    [
        "dns://[::1]:53/writ.example.com:7433",  # the authority is the DNS server, not the host
        "dns://127.0.0.1/writ.example.com:7433",
        "dns://localhost:53/10.0.0.1:7433",
        "writ.example.com:7433",
        "10.0.0.1:7433",
        "[2001:db8::1]:7433",
        "::1",
        "localhost.example.com:7433",
        "127.0.0.1.nip.io:7433",
        "127.0.0.1:7433/x",
        "localhost:7433:1",
        "127.1:7433",
        "dns:///%6cocalhost:7433",
        "ipv4:127.0.0.1:7433,10.0.0.1:7433",
        "ipv4:localhost:7433",
        "ipv6:[2001:db8::1]:7433",
        "passthrough:///127.0.0.1:7433",
        "xds:///writ",
        "",
    ],
)
def test_plaintext_targets_elsewhere(target: str) -> None:
    assert not _is_loopback(target)


def test_values_holding_a_secret_never_give_it_away_by_accident() -> None:
    """A token (or consent link, or signed JWT) is read by its attribute only: never in a
    repr or str, nor through dataclasses.asdict, vars(), pickle or model_dump."""
    import pickle

    import writ.mcp

    secret = "writ_SECRETsecretSECRETsecret"
    minted = writ.Minted(secret, INFO)
    ctx = writ.Context(secret, INFO, action=writ.Action("payments:refund", amount=1))
    verdict = writ.Verdict(active=True, info=INFO, txn_token_jwt=secret)
    consent = writ.ConsentRequest(id="cns_1", url=f"https://writ/consent/{secret}", existing=False, info=pb.ConsentRequestInfo())
    access = writ.mcp.WritAccessToken(token=secret, client_id="planner", scopes=[])
    assert (minted.token, ctx.token, verdict.txn_token_jwt, access.token) == (secret,) * 4 and secret in consent.url
    for value in (minted, ctx, verdict, consent):
        assert secret not in repr(value) and secret not in str(value)
        assert not dataclasses.is_dataclass(value)
        with pytest.raises(TypeError):
            dataclasses.asdict(value)  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            vars(value)
        with pytest.raises(TypeError):
            pickle.dumps(value)
        with pytest.raises(AttributeError):
            value.info = INFO  # type: ignore[misc]
    assert secret not in repr(access) and secret not in str(access.model_dump()) and secret not in access.model_dump_json()
    assert ctx.action == writ.Action("payments:refund", amount=1) and verdict.allowed and minted == writ.Minted(secret, INFO)
