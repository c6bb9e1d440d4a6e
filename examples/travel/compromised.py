"""A compromised booking agent: what an attacker who took over the booking server (its
private key and the token the planner gave it) tries next. Writ refuses each attempt and
says which dimension it would have widened; the payments API refuses a token that was
not issued to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

import writ
from gateway import PAYMENTS


@dataclass(frozen=True)
class Refusal:
    """One refused attempt: what was tried and what Writ (or the API) answered."""

    attempt: str
    refused: bool
    reason: str
    dimension: str


async def raise_the_limit(booking: writ.Client, token: str) -> Refusal:
    """Derive a payments token allowing 5000 a charge (booking holds at most 1200)."""
    attempt = "a payments token with amount <= 5000"
    try:
        await booking.downscope(
            token, audience=writ.workload(PAYMENTS), scopes=["payments.charge"],
            claims={"amount": writ.max_(5000)}, ttl=60,
        )
    except writ.WritError as e:
        return Refusal(attempt, True, e.reason, e.dimension or "")
    return Refusal(attempt, False, "", "")


async def add_a_scope(booking: writ.Client, token: str) -> Refusal:
    """Derive a token with trip.search, which the planner did not pass on to booking."""
    attempt = "a payments token with scope trip.search"
    try:
        await booking.downscope(token, audience=writ.workload(PAYMENTS), scopes=["trip.search"], ttl=60)
    except writ.WritError as e:
        return Refusal(attempt, True, e.reason, e.dimension or "")
    return Refusal(attempt, False, "", "")


async def forward_own_token(payments_url: str, token: str) -> Refusal:
    """Skip Writ: send booking's own token straight to the payments API."""
    attempt = "booking's own token sent straight to payments"
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{payments_url}/charges", json={"amount": 1000, "category": "flight"},
            headers={writ.TXN_TOKEN_HEADER: token},
        )
    if r.status_code == 200:
        return Refusal(attempt, False, "", "")
    body = r.json()
    return Refusal(attempt, True, f"HTTP {r.status_code} {body.get('error', '')}", body.get("reason", ""))
