"""Alice books a trip through three hops, each narrower than the last, and Writ keeps every
hop to what alice meant: the whole story in one run.

    examples/travel/run                 # tell the story
    examples/travel/run --interactive   # alice approves the large payment herself, on the page
    examples/travel/run-test            # the same story, every outcome asserted (CI)

This module is the stage manager: it starts Writ and the services (stack.py), gives each
party its own Writ client (its own certificate), then plays the scenes in order and prints
what happened. The parties' code is in gateway.py, planner.py, booking.py, payments.py,
wallet.py and compromised.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

import booking
import compromised
import gateway
import payments
import planner
import stack
import wallet
import writ

# ---------------------------------------------------------------------------------------
# Telling the story


class _SessionClosedNoise(logging.Filter):
    """The MCP SDK (1.x) logs a traceback when a client ends its session while the
    server's notification stream is open (anyio.ClosedResourceError): benign, and not
    part of the story. Everything else it logs is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage() == "Error in standalone SSE writer"
                    and isinstance(exc, anyio.ClosedResourceError))


def quiet_logs() -> None:
    """Warnings and errors only (before FastMCP configures logging, so its INFO lines and
    httpx's request lines stay out of the story)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mcp.server.streamable_http").addFilter(_SessionClosedNoise())


@dataclass
class Narrator:
    """Prints the story, and records every outcome it expects (check mode prints them)."""

    check: bool
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    scene_no: int = 0

    def scene(self, title: str) -> None:
        self.scene_no += 1
        print(f"\n{self.scene_no}. {title}", flush=True)

    def say(self, line: str) -> None:
        print(f"   {line}", flush=True)

    def expect(self, what: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            if self.check:
                print(f"   ok: {what}", flush=True)
        else:
            self.failed.append(what)
            print(f"   UNEXPECTED: {what}{': ' + detail if detail else ''}", flush=True)
        return ok


def constraint(name: str, c: writ.Constraint) -> str:
    """One claim the way a person reads it."""
    kind = c.WhichOneof("kind")
    if kind == "max":
        text = f"{name} <= {c.max}"
    elif kind == "min":
        text = f"{name} >= {c.min}"
    elif kind in ("allow", "deny"):
        s = c.allow if kind == "allow" else c.deny
        text = f"{name} {'in' if kind == 'allow' else 'not in'} {{{', '.join(s.values)}}}"
    elif kind == "exact":
        v = c.exact
        text = f"{name} = {getattr(v, v.WhichOneof('kind') or 'str')}"
    elif kind == "range":
        text = f"{c.range.min} <= {name} <= {c.range.max}"
    else:
        text = f"{name}: {kind}"
    return text


def grant(info: writ.TokenInfo) -> str:
    """A token's grant in one line: scopes, claims, uses."""
    claims = ", ".join(constraint(k, info.claims[k]) for k in sorted(info.claims))
    uses = f"; {info.max_uses} use" + ("s" if info.max_uses != 1 else "") if info.max_uses else ""
    return f"scopes {', '.join(sorted(info.scopes))}; {claims or 'no claims'}{uses}"


def short(spiffe_id: str) -> str:
    return spiffe_id.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------
# The stage: every party with its own identity


@dataclass
class Cast:
    server: stack.WritServer
    minter: writ.Client       # the gateway's minter credential
    planner: writ.Client      # each agent and API: its own certificate
    booking: writ.Client
    payments: writ.Client
    wallet: writ.Client       # alice's wallet app (approver role)
    operator: writ.Client     # the operator credential
    payments_url: str = ""
    booking_mcp_url: str = ""


@contextlib.asynccontextmanager
async def cast_on(server: stack.WritServer) -> AsyncIterator[Cast]:
    ids = {**server.issue("agent", "planner", "booking"), **server.issue("workload", "payments", "wallet")}

    def tls(name: str) -> writ.Tls:
        return writ.Tls(ca=server.ca, cert=ids[name].cert, key=ids[name].key)

    async with contextlib.AsyncExitStack() as stack_:
        async def client(**kw: Any) -> writ.Client:
            return await stack_.enter_async_context(await writ.connect(server.target, **kw))

        yield Cast(
            server=server,
            minter=await client(tls=writ.Tls(ca=server.ca), credential=server.minter_credential),
            planner=await client(tls=tls("planner")),
            booking=await client(tls=tls("booking")),
            payments=await client(tls=tls("payments")),
            wallet=await client(tls=tls("wallet")),
            operator=await client(tls=writ.Tls(ca=server.ca), credential=server.operator_credential),
        )


# ---------------------------------------------------------------------------------------
# The scenes


async def story(cast: Cast, n: Narrator, *, interactive: bool) -> None:
    async def hop(token_id: str) -> writ.TokenInfo:
        """A token's record as the operator sees it (GetToken): to show what narrowed."""
        return (await cast.operator.get_token(token_id)).token.info

    # -- 1. The gateway mints alice's transaction for the planner.
    n.scene("alice asks the travel planner to book her trip to Lisbon")
    root = await gateway.mint_for_alice(cast.minter, request="book a trip to Lisbon, 12-15 March")
    txn = root.info.txn
    n.say(f"gateway -> planner: {root.info.token_id} minted for {root.info.subject} ({txn}), 10 minutes")
    n.say(f"  {grant(root.info)}; may reach booking and payments")
    n.expect("the root token is alice's, for the planner",
             root.info.subject == "alice" and root.info.audience.id == gateway.PLANNER and root.info.depth == 0)

    # -- 2. The planner narrows a child for booking and opens its MCP session with it.
    n.scene("the planner hands the booking over to the booking MCP server, with less")
    child = await planner.booking_token(cast.planner, root.token)
    dropped = sorted(set(root.info.scopes) - set(child.info.scopes))
    n.say(f"planner -> booking: {child.info.token_id}, the MCP session's bearer token, 5 minutes")
    n.say(f"  {grant(child.info)}; drops {', '.join(dropped)}; may reach payments only")
    n.expect("booking's token is narrower: no trip.search, amount <= 1200",
             "trip.search" not in child.info.scopes and child.info.claims["amount"].max == 1200
             and child.info.audience.id == gateway.BOOKING)

    links: list[planner.ConsentLink] = []

    async def show_alice(link: planner.ConsentLink) -> bool:
        links.append(link)
        n.say(f"booking -> planner (URL-mode elicitation): {link.message}")
        n.say(f"planner -> alice: please approve at {link.url}")
        if interactive:
            n.say(f"  (open it in a browser; its certificate is signed by the development CA {cast.server.ca};")
            n.say("   approve there: the booking server waits for your decision)")
            return True
        # alice taps "approve" in her wallet app, which tells Writ through the back-channel.
        decided = await wallet.approve_for_alice(cast.wallet, link.elicitation_id)
        n.say(f"alice approves in her wallet app: {decided.id} approved for {decided.subject} "
              f"by {short(decided.decided_by)} ({decided.channel})")
        return True

    async with planner.booking_session(cast.booking_mcp_url, child, show_alice) as session:
        # -- 3. An ordinary booking: booking -> payments, narrowed again.
        n.scene("the planner books a hotel: 3 nights, 420 EUR")
        result = await session.call_tool("book_hotel", {"hotel": "Lisboa Plaza", "nights": 3, "amount": 420})
        paid = planner.tool_json(result)
        if n.expect("the hotel charge is allowed", not result.isError and paid.get("charged") == 420,
                    planner.tool_text(result)):
            sent = await hop(paid["token_id"])
            n.say(f"booking -> payments: {sent.token_id}, a fresh child for this one request (Txn-Token)")
            n.say(f"  {grant(sent)}; 60 s")
            n.say(f"payments checked payments.charge, amount 420, category hotel: allowed; charged for {paid['for']}")
            n.expect("payments got a child narrowed to hotel charges, never booking's token",
                     sent.parent_token_id == child.info.token_id and list(sent.scopes) == ["payments.charge"]
                     and list(sent.claims["category"].allow.values) == ["hotel"])

        # -- 4. A charge beyond what the planner allowed booking: the tool never runs.
        n.scene("the planner asks booking for a 1300 EUR hotel (booking may charge 1200)")
        result = await session.call_tool("book_hotel", {"hotel": "Palacio Chiado", "nights": 3, "amount": 1300})
        text = planner.tool_text(result)
        n.say(f"booking's tool declares payments.charge with amount and category; Writ says: {text}")
        n.expect("the tool is refused before it runs (ACTION_DENIED by the amount claim)",
                 result.isError and "ACTION_DENIED" in text and "1200" in text, text)

        # -- 5. The booking server is compromised.
        n.scene("an attacker takes over the booking server (its key, alice's token) and tries for more")
        raised = await compromised.raise_the_limit(cast.booking, child.token)
        scoped = await compromised.add_a_scope(cast.booking, child.token)
        for attempt in (raised, scoped):
            n.say(f"{attempt.attempt}: refused by Writ, {attempt.reason}, dimension {attempt.dimension}")
        n.expect("amount <= 5000 refused: NARROWING_REFUSED, claims",
                 raised.refused and (raised.reason, raised.dimension) == ("NARROWING_REFUSED", "claims"),
                 f"{raised}")
        n.expect("trip.search refused: NARROWING_REFUSED, scopes",
                 scoped.refused and (scoped.reason, scoped.dimension) == ("NARROWING_REFUSED", "scopes"),
                 f"{scoped}")
        forwarded = await compromised.forward_own_token(cast.payments_url, child.token)
        n.say(f"{forwarded.attempt}: refused by payments, {forwarded.reason} ({forwarded.dimension})")
        n.expect("a forwarded token is refused by payments: wrong_audience",
                 forwarded.refused and forwarded.dimension == "wrong_audience", f"{forwarded}")

        # -- 6. A large payment: alice must approve that exact charge.
        n.scene("the planner books the flight: 950 EUR, a large charge (payments.charge_large)")
        n.say("booking's tool checks payments.charge_large at Writ: CONSENT_REQUIRED, so it asks alice")
        result = await session.call_tool("book_flight", {"flight": "TP 1351 LIS, 12 March", "amount": 950})
        paid = planner.tool_json(result)
        if interactive and links:
            decided = await cast.operator.get_consent(links[0].elicitation_id)
            n.say(f"Writ recorded alice's decision: {decided.id} approved ({decided.channel})")
        n.expect("the consent link reached the planner (URL-mode elicitation)",
                 len(links) == 1 and "/consent/" in links[0].url, f"{links}")
        if n.expect("the flight is charged with the single-use consent token",
                    not result.isError and paid.get("charged") == 950, planner.tool_text(result)):
            sent = await hop(paid["token_id"])
            n.say(f"booking redeems the approval: {sent.token_id} for exactly this charge at payments")
            n.say(f"  {grant(sent)}; consent {sent.consent_request_id}")
            n.say(f"payments checked payments.charge_large, amount 950, category flight: allowed; "
                  f"charged for {paid['for']}")
            n.say(f"the same request replayed verbatim (its Txn-Token captured): {paid.get('replay')}")
            n.expect("the consent token allows exactly that charge, once",
                     sent.max_uses == 1 and sent.claims["amount"].exact.int == 950)
            n.expect("a second use of that token is refused (exhausted)",
                     "refused" in str(paid.get("replay")) and "exhausted" in str(paid.get("replay")),
                     str(paid.get("replay")))

    # -- 7. The operator revokes the booking branch.
    n.scene("an operator revokes the booking branch: booking's token, by its id")
    revoked = await cast.operator.revoke(token_id=child.info.token_id, reason="booking server compromised")
    n.say(f"revoked {len(revoked)} token(s): booking's and every token derived from it")
    n.expect("booking's token and its descendants are revoked",
             child.info.token_id in revoked and len(revoked) >= 3, f"{revoked}")
    refusal = await booking_refused(cast, child)
    n.say(f"later, the planner connects to booking again with that token: {refusal}")
    n.expect("the next call through the revoked branch is refused", "401" in refusal, refusal)
    still = await cast.planner.validate(root.token)
    n.say(f"the planner's own token is {'still active' if still.active else 'inactive'}: "
          "revoking a branch leaves its ancestors alone")
    n.expect("the planner's own token is untouched", still.active)

    # -- 8. The whole tree, as the operator's CLI shows it.
    n.scene(f"the operator looks at the whole transaction: writ chain {txn}")
    tree = cast.server.chain(txn)
    for line in tree.rstrip().splitlines():
        n.say(line)
    check_tree(n, tree, root, child)


async def booking_refused(cast: Cast, child: writ.Minted) -> str:
    """What the booking server answers a session opened with the revoked token. (A new
    session: the MCP SDK's client does not surface a 401 on a session already open.)"""
    try:
        with anyio.fail_after(30):
            async with planner.booking_session(cast.booking_mcp_url, child, _never) as session:
                await session.call_tool("book_hotel", {"hotel": "Lisboa Plaza", "nights": 1, "amount": 100})
    except Exception as e:  # what the MCP client raised
        return f"refused, {planner.describe_failure(e)}"
    return "accepted"


async def _never(link: planner.ConsentLink) -> bool:
    return False


def check_tree(n: Narrator, tree: str, root: writ.Minted, child: writ.Minted) -> None:
    lines = tree.splitlines()

    def line_of(token_id: str) -> str:
        return next((ln for ln in lines if token_id in ln), "")

    n.expect("the chain shows the root, active", " active " in line_of(root.info.token_id), tree)
    n.expect("the chain shows booking's token, revoked", " revoked " in line_of(child.info.token_id), tree)
    hops = ("local-minter -> spiffe://writ.local/agent/planner",
            "spiffe://writ.local/agent/planner -> spiffe://writ.local/agent/booking",
            "spiffe://writ.local/agent/booking -> spiffe://writ.local/workload/payments")
    n.expect("the chain shows every hop (gateway, planner, booking, payments)", all(h in tree for h in hops), tree)
    below = [ln for ln in lines if "agent/booking -> spiffe://writ.local/workload/payments" in ln]
    n.expect("the chain shows both payments tokens under booking's, revoked with it",
             len(below) == 2 and all(" revoked " in ln for ln in below), tree)
    n.expect("the chain shows the consent token: exactly 950, one use",
             any("exact 950" in ln and "max_uses unlimited -> 1" in ln for ln in below), tree)


# ---------------------------------------------------------------------------------------


async def run(check: bool, interactive: bool) -> int:
    n = Narrator(check=check)
    with stack.writ_server() as server:
        print(f"Writ serving on {server.target} (policy examples/travel/policy.toml, data in a temp dir)")
        async with cast_on(server) as cast:
            async with stack.serve_asgi(payments.create_app(cast.payments), stack.free_port()) as pay_url:
                cast.payments_url = pay_url
                port = stack.free_port()
                app = booking.create_app(
                    cast.booking, url=f"http://127.0.0.1:{port}", payments_url=pay_url,
                    writ_issuer=f"https://localhost:{server.http_port}",
                )
                async with stack.serve_asgi(app, port) as booking_url:
                    cast.booking_mcp_url = f"{booking_url}/mcp"
                    print(f"payments API on {pay_url}, booking MCP server on {cast.booking_mcp_url}")
                    await story(cast, n, interactive=interactive)
    print()
    print(f"{n.passed} passed, {len(n.failed)} failed" if check else
          ("the story went as told" if not n.failed else f"{len(n.failed)} outcome(s) were not as told"))
    return 1 if n.failed else 0


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--check", action="store_true", help="assert every outcome (what run-test does)")
    p.add_argument("--interactive", action="store_true",
                   help="wait for a person to approve the large payment on the consent page")
    args = p.parse_args(list(argv) if argv is not None else None)
    quiet_logs()
    return asyncio.run(run(args.check, args.interactive))


if __name__ == "__main__":
    sys.exit(main())
