"""The verified token of the current chain of async calls, in a ``contextvars`` variable.

A hop that received and validated a token (the ASGI middleware, the MCP verifier or
decorator, or the program itself with :func:`use`) makes it current; everything awaited
from there, tasks created from there included (asyncio copies the context into each
task), sees it with :func:`current`, and derives each downstream call's child from it
(:func:`child_for`, the httpx hook). Nothing here ever sends the current token itself
anywhere but back to Writ.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from writ._proto import writ_pb2 as pb
from writ.errors import ActionDenied, ConsentRequired, NoContext, TokenInactive
from writ.types import Action, Sealed, Verdict

if TYPE_CHECKING:
    from writ.client import Client


class Redeemed:
    """A token redeemed from the user's consent: single use, for exactly one action at one
    party (``audience``, the consent's resource). Handed out once, by :func:`child_for`
    for a downstream whose audience is that party; after that, or once discarded (the MCP
    decorator discards it when the tool body ends), never again."""

    __slots__ = ("audience", "_token")

    def __init__(self, audience: str, token: str) -> None:
        self.audience = audience
        self._token: str | None = token

    def take(self, audience: str) -> str | None:
        """The token, once, if ``audience`` is its party; else ``None``."""
        if audience != self.audience or self._token is None:
            return None
        token, self._token = self._token, None
        return token

    def discard(self) -> None:
        self._token = None

    def __repr__(self) -> str:
        state = "unused" if self._token is not None else "spent"
        return f"<writ.Redeemed for {self.audience} ({state})>"


class Context(Sealed):
    """A token this hop verified (its secret ``token`` and ``info``, what Validate said of
    it), and the ``client`` that verified it (whose identity is the token's audience, the
    one that may derive children from it). ``consented``: a token redeemed from the user's
    consent (the MCP decorator sets it): the first call to that consent's resource carries
    it instead of a fresh child, and no other call ever does. ``action``: the action this
    hop checked and Writ allowed before the handler ran (the middleware's ``action=``,
    ``writ.mcp.requires``), if any. Immutable; the token never in its repr."""

    __slots__ = ("_token", "info", "client", "consented", "action")
    _token: str
    info: pb.TokenInfo
    client: Client | None
    consented: Redeemed | None
    action: Action | None

    def __init__(
        self,
        token: str,
        info: pb.TokenInfo,
        client: Client | None = None,
        *,
        consented: Redeemed | None = None,
        action: Action | None = None,
    ) -> None:
        self._set(_token=token, info=info, client=client, consented=consented, action=action)

    @property
    def token(self) -> str:
        return self._token

    def _for_call(self, *, consented: Redeemed | None, action: Action | None) -> Context:
        """This context for one tool call: its consent's redeemed token, its allowed action."""
        return Context(self._token, self.info, self.client, consented=consented, action=action)

    def __repr__(self) -> str:
        return f"writ.Context(token_id={self.info.token_id!r}, txn={self.info.txn!r}, subject={self.info.subject!r})"


_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar("writ_current", default=None)


def current() -> Context | None:
    """The verified context of this chain of calls, if any."""
    return _current.get()


def require() -> Context:
    """The verified context, or :class:`~writ.errors.NoContext` (fail closed)."""
    ctx = _current.get()
    if ctx is None:
        raise NoContext()
    return ctx


@contextmanager
def use(ctx: Context) -> Iterator[Context]:
    """Makes ``ctx`` current for the block (and every task created inside it)."""
    reset = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(reset)


@dataclass(frozen=True)
class Downstream:
    """What a call to one downstream party gets: a child of the current token bound to
    ``audience``, with these scopes, claims, targets and lifetime (all narrower than the
    current token's, or Writ refuses). ``match``: for the httpx hook, the request URLs it
    applies to: a base URL (``https://payments.internal/v1``, ``http://127.0.0.1:8080``:
    that scheme, host, port and raw path prefix by whole segments) or a host
    (``payments.internal``, ``payments.internal:8443``, ``[::1]:8443``: https only, on
    that port or 443), or several. Plain http needs the explicit ``http://``."""

    audience: pb.Party
    scopes: Sequence[str]
    claims: Mapping[str, pb.Constraint] = field(default_factory=dict)
    ttl: int = 60
    targets: Sequence[str] = ()
    max_uses: int = 0
    require_action_check: bool = False
    drop_rctx: Sequence[str] = ()
    purpose: str = ""
    match: str | Sequence[str] = ()

    def __post_init__(self) -> None:
        # Frozen and hashable-ish: every sequence as a tuple, match always a tuple.
        for name in ("scopes", "targets", "drop_rctx"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        m = self.match
        object.__setattr__(self, "match", (m,) if isinstance(m, str) else tuple(m))
        object.__setattr__(self, "claims", dict(self.claims))


async def child_for(downstream: Downstream, *, client: Client | None = None) -> str:
    """A fresh child of the current token for ``downstream`` (or, once, the token redeemed
    from the user's consent, when ``downstream`` is that consent's party). Never the
    current token itself; with no current token, :class:`~writ.errors.NoContext`."""
    ctx = require()
    if ctx.consented is not None:
        redeemed = ctx.consented.take(downstream.audience.id)
        if redeemed is not None:
            return redeemed
    c = client or ctx.client
    if c is None:
        raise NoContext("the current context names no Writ client to downscope with")
    child = await c.downscope(
        ctx.token,
        audience=downstream.audience,
        scopes=downstream.scopes,
        claims=downstream.claims,
        ttl=downstream.ttl,
        targets=downstream.targets,
        max_uses=downstream.max_uses,
        require_action_check=downstream.require_action_check,
        drop_rctx=downstream.drop_rctx,
        purpose=downstream.purpose,
    )
    return child.token


async def check(action: Action, *, client: Client | None = None) -> Verdict:
    """Checks ``action`` against the current token (a Validate with the action, which
    spends a use of a use-limited token). Answers the allowed verdict, or raises:
    :class:`TokenInactive`, :class:`ConsentRequired`, :class:`ActionDenied`. Changes no
    context."""
    ctx = require()
    c = client or ctx.client
    if c is None:
        raise NoContext("the current context names no Writ client to validate with")
    return raise_unless_allowed(await c.validate(ctx.token, action=action), action_sent=True)


def raise_unless_allowed(v: Verdict, *, action_sent: bool) -> Verdict:
    """``v`` if active and, when an action was sent, allowed by an explicit decision; else
    the error it stands for. A missing decision for an action sent is a denial (fail
    closed), never a pass."""
    if not v.active:
        raise TokenInactive(v.inactive_reason or "unspecified")
    if not action_sent:
        return v
    d = v.decision
    if d is None:
        raise ActionDenied("no_decision", "Writ answered no decision for the action")
    if not d.allowed:
        if d.consent_required:
            raise ConsentRequired(d.reason or "the user must consent first", d.consent_request_id)
        raise ActionDenied(d.denied_by, d.reason)
    return v
