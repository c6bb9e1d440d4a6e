"""The values of Writ's API in Python: parties, claim constraints, actions, and what calls
answer (Minted, Verdict, ConsentRequest).

Token and consent information are the generated protobuf messages themselves
(``TokenInfo``, ``ConsentRequestInfo``, ``Transaction``: typed through the generated
stubs, every field documented in proto/writ/v1/writ.proto); the small frozen classes here
carry a token secret or a consent link beside them and keep both out of their repr.
"""

from __future__ import annotations

import datetime as _dt
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from writ._proto import writ_pb2 as pb

Party = pb.Party
Constraint = pb.Constraint
TokenInfo = pb.TokenInfo
ConsentRequestInfo = pb.ConsentRequestInfo
Transaction = pb.Transaction
TokenNode = pb.TokenNode


class Sealed:
    """The base of values that hold a secret (a token, a consent link, a signed JWT):
    immutable, the secret in a private slot read through a property, so it is never in a
    repr, and ``dataclasses.asdict``, ``vars()``, ``pickle`` and ``copy`` cannot spill it
    (they raise, or answer the same object)."""

    __slots__ = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __copy__(self) -> Sealed:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Sealed:
        return self

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError(f"{type(self).__name__} holds a secret: not picklable")


@dataclass(frozen=True)
class Time:
    """A point in time (Unix seconds) as an attribute or exact value: what a ``window``
    checks, never a plain integer."""

    unix: int

    @classmethod
    def of(cls, t: _dt.datetime | int) -> Time:
        return cls(int(t.timestamp()) if isinstance(t, _dt.datetime) else int(t))


Scalar = Union[int, str, Time, _dt.datetime]
AttrValue = Union[Scalar, Sequence[Scalar]]


def _party(id: str, kind: pb.ActorKind, public: bool) -> pb.Party:
    ct = pb.CLIENT_TYPE_PUBLIC if public else pb.CLIENT_TYPE_CONFIDENTIAL
    return pb.Party(id=id, kind=kind, client_type=ct)


def agent(id: str, *, public: bool = False) -> pb.Party:
    """An AI agent party (its SPIFFE ID), confidential unless ``public``."""
    return _party(id, pb.ACTOR_KIND_AGENT, public)


def workload(id: str, *, public: bool = False) -> pb.Party:
    """A workload party (an API, a service), confidential unless ``public``."""
    return _party(id, pb.ACTOR_KIND_WORKLOAD, public)


def user(id: str, *, public: bool = False) -> pb.Party:
    """A user party."""
    return _party(id, pb.ACTOR_KIND_USER, public)


def scalar_value(v: Scalar) -> pb.Value:
    # bool is an int: refuse it rather than send 0/1.
    if isinstance(v, bool):
        raise TypeError("writ: a bool is not a claim value (use an int or a str)")
    if isinstance(v, int):
        return pb.Value(int=v)
    if isinstance(v, str):
        return pb.Value(str=v)
    if isinstance(v, Time):
        return pb.Value(time=v.unix)
    if isinstance(v, _dt.datetime):
        return pb.Value(time=int(v.timestamp()))
    raise TypeError(f"writ: unsupported value type {type(v).__name__}")


def value(v: AttrValue) -> pb.Value:
    """The wire value of an attribute: int, str, time (``Time`` or datetime) or a list of them."""
    if isinstance(v, (list, tuple)):
        return pb.Value(list=pb.ValueList(values=[scalar_value(x) for x in v]))
    return scalar_value(v)  # type: ignore[arg-type]


def _c(applies_to: Iterable[str], **kind: object) -> pb.Constraint:
    return pb.Constraint(applies_to=list(applies_to), **kind)  # type: ignore[arg-type]


def max_(n: int, *, applies_to: Iterable[str] = ()) -> pb.Constraint:
    """An integer ≤ ``n``."""
    return _c(applies_to, max=n)


def min_(n: int, *, applies_to: Iterable[str] = ()) -> pb.Constraint:
    """An integer ≥ ``n``."""
    return _c(applies_to, min=n)


def range_(lo: int, hi: int, *, applies_to: Iterable[str] = ()) -> pb.Constraint:
    """An integer in ``[lo, hi]``."""
    return _c(applies_to, range=pb.Range(min=lo, max=hi))


def window(
    not_before: _dt.datetime | int, not_after: _dt.datetime | int, *, applies_to: Iterable[str] = ()
) -> pb.Constraint:
    """A time in ``[not_before, not_after]`` (datetimes or Unix seconds)."""
    w = pb.Window(not_before=Time.of(not_before).unix, not_after=Time.of(not_after).unix)
    return _c(applies_to, window=w)


def allow(*values: str, case_insensitive: bool = False, applies_to: Iterable[str] = ()) -> pb.Constraint:
    """A string in the set."""
    return _c(applies_to, allow=pb.StringSet(values=list(values), case_insensitive=case_insensitive))


def deny(*values: str, case_insensitive: bool = False, applies_to: Iterable[str] = ()) -> pb.Constraint:
    """A string not in the set."""
    return _c(applies_to, deny=pb.StringSet(values=list(values), case_insensitive=case_insensitive))


def prefix(path: str, *, applies_to: Iterable[str] = ()) -> pb.Constraint:
    """A canonical resource path under ``path``, by whole segments."""
    return _c(applies_to, prefix=path)


def exact(v: Scalar, *, applies_to: Iterable[str] = ()) -> pb.Constraint:
    """Exactly one value."""
    return _c(applies_to, exact=scalar_value(v))


class Action:
    """One action to check: a scope and the attributes its claims constrain.

    ``Action("payments:charge", amount=450, category="travel")``; attributes whose names are
    not Python identifiers go in ``attributes``.
    """

    __slots__ = ("scope", "attributes")

    def __init__(
        self, scope: str, /, attributes: Mapping[str, AttrValue] | None = None, **attrs: AttrValue
    ) -> None:
        self.scope = scope
        self.attributes: dict[str, AttrValue] = {**(attributes or {}), **attrs}

    def to_proto(self) -> pb.Action:
        return pb.Action(scope=self.scope, attributes={k: value(v) for k, v in self.attributes.items()})

    def __repr__(self) -> str:
        return f"Action({self.scope!r}, {self.attributes!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Action) and (self.scope, self.attributes) == (other.scope, other.attributes)

    __hash__ = None  # type: ignore[assignment]


class Minted(Sealed):
    """A token just issued (Mint, Downscope, RedeemConsent): its secret ``token``, shown
    once, and what it records (``info``). The secret never appears in the repr."""

    __slots__ = ("_token", "info")
    _token: str
    info: pb.TokenInfo

    def __init__(self, token: str, info: pb.TokenInfo) -> None:
        self._set(_token=token, info=info)

    @property
    def token(self) -> str:
        return self._token

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Minted)
            and self.info == other.info
            and hmac.compare_digest(self._token.encode(), other._token.encode())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Minted(token_id={self.info.token_id!r}, txn={self.info.txn!r}, audience={self.info.audience.id!r})"


@dataclass(frozen=True)
class Decision:
    """The answer to an action check."""

    allowed: bool
    denied_by: str = ""
    reason: str = ""
    consent_required: bool = False
    consent_request_id: str = ""


_INACTIVE = {v: k.removeprefix("INACTIVE_REASON_").lower() for k, v in pb.InactiveReason.items()}


class Verdict(Sealed):
    """What Validate answered. Inactive is an answer, not an error: ``inactive_reason`` is
    ``expired``, ``revoked``, ``unknown``, ``wrong_audience``, ``malformed``, ``exhausted``
    or ``action_required``. ``txn_token_jwt``: the signed JWT form, when asked for (a
    bearer credential too: kept out of the repr). ``action_asked``: an action was sent."""

    __slots__ = ("active", "inactive_reason", "info", "decision", "_jwt", "action_asked")
    active: bool
    inactive_reason: str | None
    info: pb.TokenInfo | None
    decision: Decision | None
    _jwt: str
    action_asked: bool

    def __init__(
        self,
        active: bool,
        inactive_reason: str | None = None,
        info: pb.TokenInfo | None = None,
        decision: Decision | None = None,
        txn_token_jwt: str = "",
        action_asked: bool = False,
    ) -> None:
        self._set(
            active=active,
            inactive_reason=inactive_reason,
            info=info,
            decision=decision,
            _jwt=txn_token_jwt,
            action_asked=action_asked,
        )

    @property
    def txn_token_jwt(self) -> str:
        return self._jwt

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verdict) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        token_id = self.info.token_id if self.info is not None else None
        return (
            f"Verdict(active={self.active!r}, inactive_reason={self.inactive_reason!r}, token_id={token_id!r}, "
            f"decision={self.decision!r}, action_asked={self.action_asked!r})"
        )

    @property
    def allowed(self) -> bool:
        """Active and, when an action was asked, allowed by an explicit decision (an action
        asked and no decision answered is not allowed)."""
        if not self.active:
            return False
        if self.decision is None:
            return not self.action_asked
        return self.decision.allowed

    @property
    def consent_required(self) -> bool:
        return self.decision is not None and self.decision.consent_required

    @classmethod
    def from_proto(cls, r: pb.ValidateResponse, *, action_asked: bool = False) -> Verdict:
        if not r.active:
            return cls(
                active=False,
                inactive_reason=_INACTIVE.get(r.inactive_reason, "unspecified"),
                action_asked=action_asked,
            )
        d = r.decision if r.HasField("decision") else None
        return cls(
            active=True,
            info=r.info if r.HasField("info") else None,
            decision=None
            if d is None
            else Decision(d.allowed, d.denied_by, d.reason, d.consent_required, d.consent_request_id),
            txn_token_jwt=r.txn_token_jwt,
            action_asked=action_asked,
        )


class ConsentRequest(Sealed):
    """A consent request as RequestConsent answered it. ``url`` is the consent page's link,
    a capability for the user only: it is kept out of the repr."""

    __slots__ = ("id", "_url", "existing", "info")
    id: str
    _url: str
    existing: bool
    info: pb.ConsentRequestInfo

    def __init__(self, id: str, url: str, existing: bool, info: pb.ConsentRequestInfo) -> None:
        self._set(id=id, _url=url, existing=existing, info=info)

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"ConsentRequest(id={self.id!r}, existing={self.existing!r}, status={self.info.status!r})"
