"""Typed errors: one class per baton ErrorInfo reason, decoded from the status trailer."""

from __future__ import annotations

import enum
import json
from typing import Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

ERROR_DOMAIN = "baton"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

Trailers = Optional[Sequence[Tuple[str, Union[str, bytes]]]]


class Reason(str, enum.Enum):
    """The stable ``reason`` of a baton ``google.rpc.ErrorInfo`` (domain "baton")."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FIELD_NOT_ALLOWED = "FIELD_NOT_ALLOWED"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    LEASE_LOST = "LEASE_LOST"
    TAPE_SEALED = "TAPE_SEALED"
    STATE_IN_USE = "STATE_IN_USE"
    MACHINE_CHANGED = "MACHINE_CHANGED"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    ENTITY_NOT_FOUND = "ENTITY_NOT_FOUND"
    MACHINE_NOT_FOUND = "MACHINE_NOT_FOUND"
    ENTITY_EXISTS = "ENTITY_EXISTS"
    CURSOR_EXPIRED = "CURSOR_EXPIRED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INTERNAL = "INTERNAL"


class BatonError(Exception):
    """A failed baton call.

    ``code`` is the gRPC status code. ``reason`` and ``metadata`` come from the
    ``google.rpc.ErrorInfo`` of domain "baton" in the ``grpc-status-details-bin`` trailer;
    they are ``None`` and ``{}`` when the call ended without one (a transport failure, a
    proxy, a deadline). ``is_baton`` tells the two apart.

    ``maybe_committed`` is True when a *mutating* call ended UNAVAILABLE,
    DEADLINE_EXCEEDED or CANCELLED after every retry: it may have committed. Call it again
    with the same ``request_id`` (kept here) to learn its outcome.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str = "",
        *,
        reason: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        domain: Optional[str] = None,
        request_id: Optional[str] = None,
        maybe_committed: bool = False,
        attempts: int = 1,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Dict[str, str] = dict(metadata or {})
        self.domain = domain
        self.request_id = request_id
        self.maybe_committed = maybe_committed
        self.attempts = attempts
        super().__init__(self._text())

    @property
    def is_baton(self) -> bool:
        """True when the server answered with a baton ErrorInfo (a definite answer)."""
        return self.domain == ERROR_DOMAIN and self.reason is not None

    def _text(self) -> str:
        text = self.code.name
        if self.reason:
            text += f" {self.reason}"
        if self.message:
            text += f": {self.message}"
        if self.metadata:
            text += " " + json.dumps(self.metadata, sort_keys=True)
        if self.maybe_committed:
            text += (
                f" (may have committed after {self.attempts} attempt(s): call again with "
                f"request_id={self.request_id!r} to learn the outcome)"
            )
        return text

    def __str__(self) -> str:
        return self._text()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"metadata={self.metadata!r}, message={self.message!r})"
        )


class InvalidArgument(BatonError):
    """INVALID_ARGUMENT: fix the request (``metadata['field']`` names the field)."""


class FieldNotAllowed(InvalidArgument):
    """A field the target state forbids."""


class RequestIdReused(InvalidArgument):
    """A request id reused for a different call."""


class InvalidTransition(BatonError):
    """Not allowed from the current state (``current_state``, ``version`` in metadata)."""

    @property
    def current_state(self) -> Optional[str]:
        return self.metadata.get("current_state")


class LeaseLost(BatonError):
    """The fence is not the key's current unexpired lease.

    Raised by the server (``local`` False), or by a :class:`Lease` refusing a write
    after it saw the lease lost by its own clock (``local`` True, nothing was sent).
    """

    local: bool = False


class TapeSealed(BatonError):
    """The tape holds ``final``: nothing more is stored (``final_seq`` in metadata)."""


class StateInUse(BatonError):
    """A machine redefinition drops a state that entities are in."""


class MachineChanged(BatonError):
    """The machine was redefined while the call ran; nothing was written: retry."""


class VersionMismatch(BatonError):
    """``expect_version`` differs from the entity's version."""


class NotFound(BatonError):
    """No such entity or machine in the namespace."""


class EntityNotFound(NotFound):
    pass


class MachineNotFound(NotFound):
    pass


class EntityExists(BatonError):
    """CreateEntity with an id that is taken."""


class CursorExpired(BatonError):
    """``after_seq`` older than the retained tape (``earliest_seq`` in metadata)."""


class Unauthenticated(BatonError):
    """UNAUTHENTICATED: no token, or one the server does not know or that expired (and no
    client certificate it knows). Fix the credentials; retrying will not help."""


class PermissionDenied(BatonError):
    """PERMISSION_DENIED: the caller's grant does not cover this call: ``namespace`` is
    outside it, or ``needs_role`` is a role above the caller's."""

    @property
    def namespace(self) -> Optional[str]:
        return self.metadata.get("namespace")

    @property
    def needs_role(self) -> Optional[str]:
        return self.metadata.get("needs_role")


class Unavailable(BatonError):
    """UNAVAILABLE: transport trouble, a draining replica or an unreachable database."""


class DatabaseUnavailable(Unavailable):
    pass


class ShuttingDown(Unavailable):
    pass


class DeadlineExceeded(BatonError):
    """The deadline passed. For a mutating call: it may have committed."""


class Cancelled(BatonError):
    """CANCELLED by the transport. For a mutating call: it may have committed."""


class Internal(BatonError):
    """A server bug (INTERNAL with a baton ErrorInfo), or an INTERNAL transport error."""


_BY_REASON: Dict[str, Type[BatonError]] = {
    Reason.INVALID_ARGUMENT: InvalidArgument,
    Reason.FIELD_NOT_ALLOWED: FieldNotAllowed,
    Reason.REQUEST_ID_REUSED: RequestIdReused,
    Reason.INVALID_TRANSITION: InvalidTransition,
    Reason.LEASE_LOST: LeaseLost,
    Reason.TAPE_SEALED: TapeSealed,
    Reason.STATE_IN_USE: StateInUse,
    Reason.MACHINE_CHANGED: MachineChanged,
    Reason.VERSION_MISMATCH: VersionMismatch,
    Reason.ENTITY_NOT_FOUND: EntityNotFound,
    Reason.MACHINE_NOT_FOUND: MachineNotFound,
    Reason.ENTITY_EXISTS: EntityExists,
    Reason.CURSOR_EXPIRED: CursorExpired,
    Reason.UNAUTHENTICATED: Unauthenticated,
    Reason.PERMISSION_DENIED: PermissionDenied,
    Reason.DATABASE_UNAVAILABLE: DatabaseUnavailable,
    Reason.SHUTTING_DOWN: ShuttingDown,
    Reason.INTERNAL: Internal,
}

_BY_CODE: Dict[grpc.StatusCode, Type[BatonError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
}


def decode_error_info(trailers: Trailers) -> Tuple[Optional[str], Dict[str, str], Optional[str]]:
    """(reason, metadata, domain) of the ErrorInfo in the status-details trailer.

    Prefers domain "baton"; ``(None, {}, None)`` when there is none or it is undecodable.
    """
    raw: Optional[bytes] = None
    for key, value in trailers or ():
        if key == _STATUS_DETAILS_KEY:
            raw = value if isinstance(value, bytes) else value.encode()
            break
    if not raw:
        return None, {}, None
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a malformed trailer leaves the plain status
        return None, {}, None
    found: Optional[error_details_pb2.ErrorInfo] = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                found = info
                break
            if found is None:
                found = info
    if found is None:
        return None, {}, None
    return found.reason or None, dict(found.metadata), found.domain or None


def error_class(code: grpc.StatusCode, reason: Optional[str], domain: Optional[str]) -> Type[BatonError]:
    if domain == ERROR_DOMAIN and reason in _BY_REASON:
        return _BY_REASON[reason]
    return _BY_CODE.get(code, BatonError)


def make_error(
    code: grpc.StatusCode,
    message: str,
    trailers: Trailers,
    *,
    request_id: Optional[str] = None,
) -> BatonError:
    reason, metadata, domain = decode_error_info(trailers)
    cls = error_class(code, reason, domain)
    return cls(code, message, reason=reason, metadata=metadata, domain=domain, request_id=request_id)


def from_rpc_error(err: grpc.RpcError, *, request_id: Optional[str] = None) -> BatonError:
    """A typed :class:`BatonError` from a failed sync or asyncio gRPC call."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else ""
    trailers = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    return make_error(code or grpc.StatusCode.UNKNOWN, details or "", _pairs(trailers), request_id=request_id)


def _pairs(trailers: object) -> Trailers:
    """Trailers as (key, value) pairs: sync gives a tuple, grpc.aio a Metadata object."""
    if trailers is None:
        return None
    out = []
    for item in trailers:  # type: ignore[attr-defined]
        key, value = item
        out.append((str(key), value))
    return out


def local_lease_lost(key: str, token: int, why: str) -> LeaseLost:
    """The error a lost :class:`Lease` raises instead of sending a fenced write."""
    err = LeaseLost(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"lease {key!r} token {token} lost by the local clock ({why}); nothing was sent",
        reason=Reason.LEASE_LOST.value,
        metadata={"key": key, "token": str(token)},
        domain=None,
    )
    err.local = True
    return err


class LeaseNotAcquired(Exception):
    """``lease(...)`` could not acquire the key: another holder has it.

    ``current`` is the other holder's ``Lease`` message, when the server sent it.
    """

    def __init__(self, key: str, holder: str, current_holder: Optional[str], current_token: Optional[int]) -> None:
        self.key = key
        self.holder = holder
        self.current_holder = current_holder
        self.current_token = current_token
        detail = (
            f"held by {current_holder!r} (token {current_token})" if current_holder else "held by another holder"
        )
        super().__init__(f"lease {key!r} not acquired by {holder!r}: {detail}")
