"""Unit tests of the library's own decisions, with fabricated answers (no server)."""

from __future__ import annotations

from typing import Any, cast

import pytest

import writ
from writ._proto import writ_pb2 as pb
from writ.context import Redeemed, raise_unless_allowed


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
