"""The gateway: it authenticated alice (not shown) and starts her transaction by minting
the root token for the planner, with its minter credential. Everything any hop of the
chain may ever do is decided here; each hop after it can only narrow.
"""

from __future__ import annotations

import writ

PLANNER = "spiffe://writ.local/agent/planner"
BOOKING = "spiffe://writ.local/agent/booking"
PAYMENTS = "spiffe://writ.local/workload/payments"

# The payments scopes the amount limit applies to (a trip.book check states no amount).
CHARGES = ("payments.charge", "payments.charge_large")


async def mint_for_alice(minter: writ.Client, *, request: str) -> writ.Minted:
    """Alice's request, as the gateway grants it to her planner agent."""
    return await minter.mint(
        subject="alice",
        audience=writ.agent(PLANNER),
        targets=[BOOKING, PAYMENTS],
        scopes=["trip.search", "trip.book", *CHARGES],
        claims={
            "amount": writ.max_(2000, applies_to=CHARGES),  # euros, per charge
            "category": writ.allow("flight", "hotel"),
        },
        purpose=request,
        rctx={"authn": "webauthn"},
        ttl=600,
    )
