"""One exception hierarchy for everything Writ refuses.

Every gRPC status Writ answers carries a ``google.rpc.ErrorInfo`` (domain ``writ``) in
``grpc-status-details-bin``: a stable ``reason`` and, where one applies, the refused
``dimension``, the invalid ``field`` or the ``consentRequestId``. They are decoded here
into :class:`WritError` (and a subclass where callers branch), so programs never parse
messages. Inactive tokens, denied actions and pending consent found by this library
(not refused by the server) are errors of the same hierarchy, so one ``except`` covers
"the handler must not run".

No message or repr ever carries a token secret: messages are the server's (which never
echoes tokens), scrubbed again here of anything shaped like one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "writ"
_STATUS_DETAILS = "grpc-status-details-bin"
_SECRET = re.compile(r"writ_[A-Za-z0-9_\-]{8,}")


def scrub(text: str) -> str:
    """``text`` with anything shaped like a token secret replaced by ``writ_…``."""
    return _SECRET.sub("writ_…", text)


class WritError(Exception):
    """A refusal or failure of a Writ call.

    ``code`` is the gRPC status code; ``reason`` Writ's stable machine-readable reason
    (``NARROWING_REFUSED``, ``TOKEN_REVOKED``, …, or one of this library's:
    ``TOKEN_INACTIVE``, ``ACTION_DENIED``, ``CONSENT_REQUIRED``, ``NO_CONTEXT``);
    ``dimension``, ``field`` and ``consent_request_id`` come from the ErrorInfo's
    metadata; ``retry_after`` (seconds) from a rate limit's RetryInfo.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        dimension: str | None = None,
        field: str | None = None,
        consent_request_id: str | None = None,
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.message = scrub(message)
        self.code = code
        self.reason = reason
        self.dimension = dimension
        self.field = field
        self.consent_request_id = consent_request_id
        self.retry_after = retry_after
        self.metadata: dict[str, str] = dict(metadata or {})
        super().__init__(self.message)

    def __str__(self) -> str:
        head = self.reason or self.code.name
        return f"{head}: {self.message}" if self.message else head

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v!r}"
            for k, v in (
                ("dimension", self.dimension),
                ("field", self.field),
                ("consent_request_id", self.consent_request_id),
                ("retry_after", self.retry_after),
            )
            if v is not None
        )
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}{extra}, message={self.message!r})"


# By status code, for reasons without a class of their own.
class InvalidArgument(WritError):
    """INVALID_ARGUMENT: change the request."""


class InvalidField(InvalidArgument):
    """INVALID_FIELD: ``field`` names the field refused."""


class Unauthenticated(WritError):
    """UNAUTHENTICATED: no identity, a bad credential or assertion, an invalid token."""


class PermissionDenied(WritError):
    """PERMISSION_DENIED: ask for less, or as someone else."""


class FailedPrecondition(WritError):
    """FAILED_PRECONDITION: nothing to do with this token now."""


class NotFound(WritError):
    """NOT_FOUND: no such token, transaction or consent request."""


class ResourceExhausted(WritError):
    """RESOURCE_EXHAUSTED: a count limit (fan-out, transaction size, open consents)."""


class RateLimited(ResourceExhausted):
    """RATE_LIMITED: the caller is over its rate; ``retry_after`` says when to try again."""


class Unavailable(WritError):
    """UNAVAILABLE or DEADLINE_EXCEEDED, after the retries that were safe."""


# By reason: the refusals a caller branches on.
class NarrowingRefused(WritError):
    """NARROWING_REFUSED (Downscope) or MINT_REFUSED: ``dimension`` names what widened."""


class TokenRejected(WritError):
    """The presented token (or parent) is malformed, forged, unknown or revoked:
    TOKEN_INVALID, TOKEN_REVOKED, PARENT_TOKEN_INVALID, PARENT_TOKEN_REVOKED."""


class ConsentError(WritError):
    """A consent operation refused: CONSENT_* (``consent_request_id`` names the request)."""


class ConsentPending(ConsentError):
    """CONSENT_PENDING: the user has not decided yet."""


# Found by this library rather than refused by the server.
class TokenInactive(Unauthenticated):
    """A token Validate answered inactive; ``reason`` is TOKEN_INACTIVE, ``dimension``
    the inactive reason (``wrong_audience``, ``revoked``, ``expired``, …)."""

    def __init__(self, inactive_reason: str) -> None:
        super().__init__(
            f"the token is inactive: {inactive_reason}",
            code=grpc.StatusCode.UNAUTHENTICATED,
            reason="TOKEN_INACTIVE",
            dimension=inactive_reason,
        )
        self.inactive_reason = inactive_reason


class ActionDenied(PermissionDenied):
    """An action check answered denied; ``dimension`` is what denied it (``scope`` or
    the claim's name)."""

    def __init__(self, denied_by: str, reason: str) -> None:
        super().__init__(
            f"denied by {denied_by}: {reason}" if reason else f"denied by {denied_by}",
            code=grpc.StatusCode.PERMISSION_DENIED,
            reason="ACTION_DENIED",
            dimension=denied_by,
        )
        self.denied_by = denied_by


class ConsentRequired(PermissionDenied):
    """The action needs the user's consent first (a high-privilege scope), and it was not
    obtained: ``consent_request_id`` names the open request, if there is one."""

    def __init__(self, message: str, consent_request_id: str | None = None) -> None:
        super().__init__(
            message,
            code=grpc.StatusCode.PERMISSION_DENIED,
            reason="CONSENT_REQUIRED",
            consent_request_id=consent_request_id or None,
        )


class NoContext(Unauthenticated):
    """No verified token in the current context: nothing to derive a child from."""

    def __init__(self, message: str = "no verified Writ token in the current context") -> None:
        super().__init__(message, code=grpc.StatusCode.UNAUTHENTICATED, reason="NO_CONTEXT")


_BY_REASON: dict[str, type[WritError]] = {
    "INVALID_FIELD": InvalidField,
    "RATE_LIMITED": RateLimited,
    "NARROWING_REFUSED": NarrowingRefused,
    "MINT_REFUSED": NarrowingRefused,
    "TOKEN_INVALID": TokenRejected,
    "TOKEN_REVOKED": TokenRejected,
    "PARENT_TOKEN_INVALID": TokenRejected,
    "PARENT_TOKEN_REVOKED": TokenRejected,
    "NOT_FOUND": NotFound,
    "CONSENT_PENDING": ConsentPending,
}

_BY_CODE: dict[grpc.StatusCode, type[WritError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def _details(trailing: Any) -> tuple[str, dict[str, str], float | None]:
    """The ErrorInfo reason and metadata, and the RetryInfo delay, of a status's details."""
    reason, retry = "", None
    meta: dict[str, str] = {}
    raw: bytes | None = None
    for key, value in trailing or ():
        if key == _STATUS_DETAILS and isinstance(value, bytes):
            raw = value
        elif key == "retry-after" and retry is None:
            try:
                retry = float(value)
            except (TypeError, ValueError):
                pass
    if raw is None:
        return reason, meta, retry
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except Exception:  # a malformed trailer: the code and message still stand
        return reason, meta, retry
    for any_ in status.details:
        info = error_details_pb2.ErrorInfo()
        if any_.Unpack(info) and info.domain == ERROR_DOMAIN:
            reason, meta = info.reason, dict(info.metadata)
            continue
        ri = error_details_pb2.RetryInfo()
        if any_.Unpack(ri):
            retry = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
    return reason, meta, retry


def from_rpc_error(e: grpc.aio.AioRpcError | grpc.RpcError) -> WritError:
    """The :class:`WritError` a failed call stands for."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else ""
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    reason, meta, retry = _details(trailing)
    cls = _BY_REASON.get(reason)
    if cls is None and reason.startswith("CONSENT_"):
        cls = ConsentError
    if cls is None:
        cls = _BY_CODE.get(code, WritError)
    return cls(
        details or "",
        code=code,
        reason=reason,
        dimension=meta.get("dimension"),
        field=meta.get("field"),
        consent_request_id=meta.get("consentRequestId"),
        retry_after=retry,
        metadata=meta,
    )
