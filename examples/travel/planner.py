"""The travel planner: the agent alice talks to, an MCP client of the booking server.

It holds the root token the gateway minted for it, and never sends it anywhere: for its
MCP session with booking it derives a child bound to booking's identity, narrowed to
what booking needs (no trip search, at most 1200 per charge, only payments as a next
hop), and presents that as the session's bearer token. When a tool needs alice's consent,
the booking server sends a URL-mode elicitation carrying Writ's consent link; the
planner shows it to alice (here: prints it, and hands it to whoever plays alice).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.context import RequestContext

import writ
from gateway import BOOKING, CHARGES, PAYMENTS

# What booking may do for alice: book, and pay, up to 1200 a charge.
BOOKING_SCOPES = ("trip.book", *CHARGES)
BOOKING_AMOUNT_LIMIT = 1200


@dataclass(frozen=True)
class ConsentLink:
    """A URL-mode elicitation: what the server says, and the link for alice."""

    message: str
    url: str
    elicitation_id: str


# Shows the link to alice and answers whether she agreed to open it.
OnConsentLink = Callable[[ConsentLink], Awaitable[bool]]


async def booking_token(planner: writ.Client, root_token: str) -> writ.Minted:
    """The planner's child of its root token for the booking server."""
    return await planner.downscope(
        root_token,
        audience=writ.agent(BOOKING),
        targets=[PAYMENTS],
        scopes=BOOKING_SCOPES,
        claims={"amount": writ.max_(BOOKING_AMOUNT_LIMIT)},
        ttl=300,
    )


@contextlib.asynccontextmanager
async def booking_session(
    mcp_url: str, token: writ.Minted, on_consent_link: OnConsentLink
) -> AsyncIterator[ClientSession]:
    """An MCP session with the booking server, authenticated with booking's own token."""

    async def elicit(
        context: RequestContext[ClientSession, Any], params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        if not isinstance(params, types.ElicitRequestURLParams):
            return types.ErrorData(code=types.INVALID_REQUEST, message="the planner answers URL elicitations only")
        agreed = await on_consent_link(ConsentLink(params.message, params.url, params.elicitationId))
        return types.ElicitResult(action="accept" if agreed else "decline")

    headers = {"Authorization": f"Bearer {token.token}"}
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300)) as http:
        async with streamable_http_client(mcp_url, http_client=http) as (read, write, _):
            async with ClientSession(read, write, elicitation_callback=elicit) as session:
                await session.initialize()
                yield session


def tool_text(result: types.CallToolResult) -> str:
    """A tool result's text (what an LLM would read)."""
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def describe_failure(e: BaseException) -> str:
    """What an MCP call failed with, in one line: an HTTP status when the server refused
    the request (the bearer token), else the exception."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    if isinstance(e, httpx.HTTPStatusError):
        return f"HTTP {e.response.status_code} from {e.request.url.path}"
    return f"{type(e).__name__}: {e}"


def tool_json(result: types.CallToolResult) -> dict[str, Any]:
    """A tool's JSON answer ({} when it failed or answered something else)."""
    if result.isError:
        return {}
    try:
        value = json.loads(tool_text(result))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
