"""The async client: one typed method per Writ RPC, on a grpc.aio channel.

How the caller proves who it is is fixed at connect time: a client certificate (mTLS,
``Tls(cert=…, key=…)``), a bearer credential (minters, operators), or a callable that
returns a fresh JWT client assertion for each call (assertions are single use). Calls
are retried only where a retry cannot do anything twice (see ``_SAFE``): Mint and
Downscope always carry an idempotency key, reused by their retries, so a retry after a
lost response returns the same token and spends nothing twice.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import random
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, Union

import grpc
import grpc.aio
from google.protobuf.message import Message

from writ._proto import writ_pb2 as pb
from writ.errors import from_rpc_error
from writ.types import Action, ConsentRequest, Minted, Verdict

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Assertion = Callable[[], Union[str, Awaitable[str]]]
PathLike = Union[str, Path]

_TOKEN_SERVICE = "/writ.v1.TokenService/"
_CHAIN_SERVICE = "/writ.v1.ChainService/"


@dataclass(frozen=True)
class Tls:
    """TLS to Writ: the CA bundle that signed the server's certificate (``None``: the
    system's roots) and, for mTLS, this party's certificate chain and key (PEM files)."""

    ca: PathLike | None = None
    cert: PathLike | None = None
    key: PathLike | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("writ: Tls needs both cert and key, or neither")
        def read(p: PathLike | None) -> bytes | None:
            return Path(p).read_bytes() if p is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca), private_key=read(self.key), certificate_chain=read(self.cert)
        )


_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _loopback_host_port(s: str, *, names: bool = True) -> bool:
    """``host[:port]`` or ``[v6][:port]`` naming this machine: a loopback IP literal, or
    (``names``) ``localhost``. Anything else, or anything not exactly that shape: no."""
    m = _HOST_PORT.fullmatch(s)
    if m is None:
        return False
    literal = m["v6"] or m["host"]
    if m["host"] and names and literal.lower() == "localhost":
        return True
    try:
        ip = ipaddress.IPv6Address(literal) if m["v6"] else ipaddress.IPv4Address(literal)
    except ValueError:
        return False
    return ip.is_loopback


def _is_loopback(target: str) -> bool:
    """Whether a gRPC ``target`` stays on this machine (plaintext is allowed there):
    ``host:port`` / ``[v6]:port`` naming loopback or ``localhost``; ``dns:`` with such a
    host after the authority (the authority names the DNS server, not the host);
    ``ipv4:``/``ipv6:`` lists of loopback literals only; ``unix:``/``unix-abstract:``
    sockets. Every other form or scheme: no (pass ``tls=`` or ``allow_insecure``)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme, v6 in (("ipv4:", False), ("ipv6:", True)):
        if target.startswith(scheme):
            addresses = target[len(scheme) :].split(",")
            return all(
                _loopback_host_port(a, names=False) and a.startswith("[") == v6 for a in addresses
            )
    if target.startswith("dns:"):
        rest = target[len("dns:") :]
        if rest.startswith("//"):
            slash = rest.find("/", 2)
            if slash < 0:
                return False
            rest = rest[slash + 1 :]
        return _loopback_host_port(rest)
    m = _SCHEME.match(target)
    if m is not None and not target[m.end() :].isdigit():
        return False  # another resolver's scheme (passthrough:, xds:, …), not host:port
    return _loopback_host_port(target)


def new_idempotency_key() -> str:
    """A fresh random idempotency key (32 hex characters)."""
    return secrets.token_hex(16)


class Client:
    """A connection to Writ as one identity. Use :func:`connect` to make one; close it with
    :meth:`close` or ``async with``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        credential: str | None = None,
        assertion: Assertion | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        backoff: float = 0.1,
    ) -> None:
        if credential is not None and assertion is not None:
            raise ValueError("writ: one proof of identity: credential or assertion, not both")
        self._channel = channel
        self._credential = credential
        self._assertion = assertion
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self._backoff = backoff

    def __repr__(self) -> str:
        how = "credential" if self._credential else "assertion" if self._assertion else "tls"
        return f"<writ.Client identity={how}>"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- plumbing -------------------------------------------------------------------

    async def _metadata(self) -> list[tuple[str, str]]:
        if self._credential is not None:
            return [("authorization", f"Bearer {self._credential}")]
        if self._assertion is not None:
            jwt = self._assertion()
            if inspect.isawaitable(jwt):
                jwt = await jwt
            return [("writ-client-assertion", str(jwt))]
        return []

    async def _call(
        self,
        method: str,
        request: Req,
        response_type: type[Resp],
        *,
        retry: bool,
        timeout: float | None = None,
    ) -> Resp:
        rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp] = self._channel.unary_unary(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        attempt = 0
        while True:
            attempt += 1
            metadata = await self._metadata()  # a fresh assertion per attempt
            try:
                response: Resp = await rpc(request, metadata=metadata, timeout=timeout or self.timeout)
                return response
            except grpc.aio.AioRpcError as e:
                code = e.code()
                again = retry and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not again or attempt >= self.max_attempts:
                    raise from_rpc_error(e) from None
            # Full jitter, exponential, capped at 2 s.
            await asyncio.sleep(random.uniform(0, min(2.0, self._backoff * 2 ** (attempt - 1))))

    # -- TokenService -----------------------------------------------------------------

    async def mint(
        self,
        *,
        subject: str,
        audience: pb.Party,
        scopes: Iterable[str],
        targets: Iterable[str] = (),
        claims: Mapping[str, pb.Constraint] | None = None,
        ttl: int | None = None,
        purpose: str = "",
        tctx: Mapping[str, str] | None = None,
        rctx: Mapping[str, str] | None = None,
        max_uses: int = 0,
        require_action_check: bool = False,
        idempotency_key: str | None = None,
    ) -> Minted:
        """Starts a transaction (a minter's credential). Retried safely: one idempotency key
        for every attempt."""
        req = pb.MintRequest(
            subject=subject,
            audience=audience,
            targets=list(targets),
            scopes=list(scopes),
            claims=dict(claims or {}),
            purpose=purpose,
            tctx=dict(tctx or {}),
            rctx=dict(rctx or {}),
            ttl_seconds=ttl or 0,
            max_uses=max_uses,
            require_action_check=require_action_check,
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        r = await self._call(_TOKEN_SERVICE + "Mint", req, pb.MintResponse, retry=True)
        return Minted(r.token, r.info)

    async def downscope(
        self,
        parent_token: str,
        *,
        audience: pb.Party,
        scopes: Iterable[str],
        targets: Iterable[str] = (),
        claims: Mapping[str, pb.Constraint] | None = None,
        ttl: int | None = None,
        purpose: str = "",
        max_uses: int = 0,
        require_action_check: bool = False,
        drop_rctx: Iterable[str] = (),
        idempotency_key: str | None = None,
    ) -> Minted:
        """Derives a narrower child of ``parent_token`` (held by this client's identity) for
        ``audience``. Retried safely: one idempotency key for every attempt."""
        req = pb.DownscopeRequest(
            parent_token=parent_token,
            audience=audience,
            targets=list(targets),
            scopes=list(scopes),
            claims=dict(claims or {}),
            ttl_seconds=ttl or 0,
            purpose=purpose,
            max_uses=max_uses,
            require_action_check=require_action_check,
            drop_rctx=list(drop_rctx),
            idempotency_key=idempotency_key or new_idempotency_key(),
        )
        r = await self._call(_TOKEN_SERVICE + "Downscope", req, pb.DownscopeResponse, retry=True)
        return Minted(r.token, r.info)

    async def validate(
        self,
        token: str,
        *,
        action: Action | None = None,
        decision_only: bool = False,
        txn_token_jwt: bool = False,
    ) -> Verdict:
        """Introspects ``token`` as this client's identity (its audience), optionally
        checking one action. Inactive is an answer (``Verdict.active`` false), not an error.
        Retried only without an action (an action check may spend a use)."""
        req = pb.ValidateRequest(
            token=token,
            action=action.to_proto() if action is not None else None,
            decision_only=decision_only,
            txn_token_jwt=txn_token_jwt,
        )
        r = await self._call(_TOKEN_SERVICE + "Validate", req, pb.ValidateResponse, retry=action is None)
        return Verdict.from_proto(r, action_asked=action is not None)

    async def revoke(
        self,
        *,
        reason: str,
        token: str | None = None,
        token_id: str | None = None,
        txn: str | None = None,
    ) -> list[str]:
        """Revokes a token and its descendants: by ``token`` (its holder), or by ``token_id``
        or ``txn`` (operators). Answers the token ids newly revoked."""
        given = [x for x in (token, token_id, txn) if x is not None]
        if len(given) != 1:
            raise ValueError("writ: revoke needs exactly one of token, token_id, txn")
        req = pb.RevokeRequest(reason=reason, token=token, token_id=token_id, txn=txn)
        r = await self._call(_TOKEN_SERVICE + "Revoke", req, pb.RevokeResponse, retry=True)
        return list(r.revoked_token_ids)

    async def request_consent(
        self, token: str, action: Action, *, resource: str, reason: str
    ) -> ConsentRequest:
        """Asks the user's consent to one high-privilege action at ``resource`` (a party the
        token may reach). ``url`` is for the user only."""
        req = pb.RequestConsentRequest(token=token, action=action.to_proto(), resource=resource, reason=reason)
        r = await self._call(_TOKEN_SERVICE + "RequestConsent", req, pb.RequestConsentResponse, retry=True)
        return ConsentRequest(id=r.request.id, url=r.consent_url, existing=r.existing, info=r.request)

    async def decide_consent(self, id: str, *, approve: bool, subject: str) -> pb.ConsentRequestInfo:
        """Records the user's decision (an approver app or an operator). Never retried."""
        req = pb.DecideConsentRequest(id=id, approve=approve, subject=subject)
        r = await self._call(_TOKEN_SERVICE + "DecideConsent", req, pb.DecideConsentResponse, retry=False)
        return r.request

    async def redeem_consent(self, id: str, token: str, *, ttl: int | None = None) -> Minted:
        """Redeems an approved request for the single-use token of exactly that action.
        Never retried (a second redemption is refused)."""
        req = pb.RedeemConsentRequest(id=id, token=token, ttl_seconds=ttl or 0)
        r = await self._call(_TOKEN_SERVICE + "RedeemConsent", req, pb.RedeemConsentResponse, retry=False)
        return Minted(r.token, r.info)

    # -- ChainService (operators) -----------------------------------------------------

    async def get_transaction(self, txn: str) -> pb.Transaction:
        """The whole tree of one transaction (every page, in order)."""
        out = pb.Transaction()
        cursor = ""
        while True:
            req = pb.GetTransactionRequest(txn=txn, cursor=cursor)
            page = await self._call(_CHAIN_SERVICE + "GetTransaction", req, pb.Transaction, retry=True)
            out.txn, out.subject = page.txn, page.subject
            out.tokens.extend(page.tokens)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    async def get_token(self, token_id: str) -> pb.GetTokenResponse:
        """One token with its ancestry."""
        req = pb.GetTokenRequest(token_id=token_id)
        return await self._call(_CHAIN_SERVICE + "GetToken", req, pb.GetTokenResponse, retry=True)

    async def get_consent(self, id: str) -> pb.ConsentRequestInfo:
        """One consent request."""
        req = pb.GetConsentRequest(id=id)
        return await self._call(_CHAIN_SERVICE + "GetConsent", req, pb.ConsentRequestInfo, retry=True)

    async def list_events(self, txn: str) -> list[pb.AuditEvent]:
        """The audit trail of one transaction, oldest first (every page)."""
        events: list[pb.AuditEvent] = []
        after = ""
        while True:
            req = pb.ListEventsRequest(txn=txn, after=after, page_size=1000)
            page = await self._call(_CHAIN_SERVICE + "ListEvents", req, pb.ListEventsResponse, retry=True)
            events.extend(page.events)
            if len(page.events) < 1000 or not page.next_cursor:
                return events
            after = page.next_cursor


async def connect(
    target: str,
    *,
    tls: Tls | None = None,
    credential: str | None = None,
    assertion: Assertion | None = None,
    allow_insecure: bool = False,
    timeout: float = 10.0,
    max_attempts: int = 4,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> Client:
    """A client for the Writ server at ``target`` (``host:port``).

    ``tls``: TLS (and, with ``cert``/``key``, mTLS as that party); without it the channel is
    plaintext, refused beyond this machine (loopback, ``localhost``, a unix socket; parsed
    strictly, see ``_is_loopback``) unless ``allow_insecure``. ``credential``: a minter's
    or operator's bearer credential. ``assertion``: a callable answering a fresh JWT client
    assertion per call. ``timeout`` bounds each attempt; safe calls make at most
    ``max_attempts``.
    """
    opts = list(options)
    if tls is not None:
        if tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.aio.secure_channel(target, tls.credentials(), options=opts, interceptors=interceptors)
    else:
        if not (allow_insecure or _is_loopback(target)):
            raise ValueError(f"writ: plaintext to {target} is refused (not loopback); pass tls= or allow_insecure=True")
        channel = grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
    return Client(channel, credential=credential, assertion=assertion, timeout=timeout, max_attempts=max_attempts)
