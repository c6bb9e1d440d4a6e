"""The booking service: an MCP server (FastMCP, streamable HTTP) whose tools book hotels
and flights and pay for them at the payments API.

- Every MCP request's bearer token is introspected at Writ as this server
  (``WritTokenVerifier``): a token not issued to booking, revoked or expired is a 401
  (Writ unreachable: a 503).
- Every tool is registered with the scope and claims it needs (``writ.mcp.tool``),
  checked at Writ on each call before the body runs; the server refuses to start if a
  tool was registered without that check.
- The call to payments never carries the token booking received: the httpx hook derives a
  fresh child for payments on each request (``payments.charge``, hotels only, one minute).
- A charge above 500 EUR needs ``payments.charge_large``, which alice must approve: the
  decorator asks Writ for her consent, sends the consent link to the planner as a
  URL-mode elicitation, waits for her decision and hands payments (once: the next call
  gets a fresh child) the single-use token redeemed for exactly that charge.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from mcp.server.fastmcp import FastMCP
from starlette.applications import Starlette

import writ
from gateway import BOOKING, PAYMENTS
from writ.http import TxnTokenHook
from writ.mcp import WritTokenVerifier, auth_settings, streamable_http_app, tool


def create_app(client: writ.Client, *, url: str, payments_url: str, writ_issuer: str) -> Starlette:
    """The booking server's ASGI app. ``client`` proves booking's identity to Writ;
    ``url`` is where it is served (its MCP endpoint, ``url/mcp``, is the resource its
    tokens are bound to); ``writ_issuer`` is Writ's OAuth issuer."""
    resource = f"{url}/mcp"
    # Ordinary charges: a child for payments that can only charge hotels, for one minute.
    payments_hook = TxnTokenHook(
        [
            writ.Downstream(
                audience=writ.workload(PAYMENTS),
                scopes=["payments.charge"],
                claims={"category": writ.allow("hotel")},
                ttl=60,
                match=payments_url,
            )
        ],
        client=client,
    )
    http = httpx.AsyncClient(base_url=payments_url, event_hooks={"request": [payments_hook]})

    mcp: FastMCP[Any] = FastMCP(
        "booking",
        token_verifier=WritTokenVerifier(client, audience=BOOKING, resource=resource),
        auth=auth_settings(resource, issuer=writ_issuer, required_scopes=["trip.book"]),
    )

    async def pay(amount: int, category: str, reference: str) -> httpx.Response:
        r = await http.post("/charges", json={"amount": amount, "category": category, "reference": reference})
        if r.status_code != 200:
            raise RuntimeError(f"payments refused the charge: HTTP {r.status_code} {r.json()}")
        return r

    @tool(mcp, "payments.charge", amount="amount", category=lambda _: "hotel")
    async def book_hotel(hotel: str, nights: int, amount: int) -> dict[str, Any]:
        """Book a hotel and pay for it (amount in EUR)."""
        paid: dict[str, Any] = (await pay(amount, "hotel", f"{hotel}, {nights} nights")).json()
        return paid

    @tool(
        mcp,
        "payments.charge_large",
        amount="amount",
        category=lambda _: "flight",
        consent_resource=PAYMENTS,
        consent_reason=lambda a: f"the flight {a['flight']} for {a['amount']} EUR",
    )
    async def book_flight(flight: str, amount: int) -> dict[str, Any]:
        """Book a flight and pay for it (amount in EUR): a large charge, alice approves it."""
        r = await pay(amount, "flight", flight)  # carries the consent's single-use token
        paid: dict[str, Any] = r.json()
        paid["replay"] = await replay(r.request)
        return paid

    async def replay(request: httpx.Request) -> str:
        """What an attacker who captured the charge request (or a careless retry that resends
        it byte for byte) gets: the very same Txn-Token header value, sent again with a plain
        HTTP client. The library never sends a consent's token twice; payments refuses it
        anyway: its one use is spent."""
        async with httpx.AsyncClient() as plain:
            again = await plain.send(
                plain.build_request(
                    request.method, request.url, content=request.content,
                    headers={"content-type": "application/json", "Txn-Token": request.headers["Txn-Token"]},
                )
            )
        return "accepted" if again.status_code == 200 else f"refused: HTTP {again.status_code} {again.json()}"

    # The SDK's app, once every tool is known to be checked; 503 while Writ is unreachable.
    app = streamable_http_app(mcp)
    # The app's lifespan runs the MCP session manager; close the payments client after it.
    serve_sessions = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[Any]:
        async with serve_sessions(a) as state:
            try:
                yield state
            finally:
                await http.aclose()

    app.router.lifespan_context = lifespan
    return app
