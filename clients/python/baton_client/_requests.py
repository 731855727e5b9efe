"""Request building shared by the sync and asyncio clients, so both have one surface.

Each builder returns a :class:`Call`: the method, the request message, and whether the
call mutates (then it carries a request id and is retried with that same id).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Generic, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

from google.protobuf.message import Message

from baton_client._gen import coordinator_pb2 as pb
from baton_client._machines import DurationLike, duration, machine_spec_from_dict

SERVICE = "baton.v1.Coordinator"

Resp = TypeVar("Resp", bound=Message)

EventLike = Union[pb.EventInput, str, Tuple[Any, ...], Mapping[str, Any]]
FenceLike = Union[pb.Fence, Tuple[str, int]]
SpecLike = Union[pb.MachineSpec, Mapping[str, Any]]


@dataclass(frozen=True)
class Call(Generic[Resp]):
    method: str
    request: Message
    response_type: Type[Resp]
    request_id: Optional[str]  # set on mutating calls

    @property
    def path(self) -> str:
        return f"/{SERVICE}/{self.method}"

    @property
    def mutating(self) -> bool:
        return self.request_id is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def _rid(request_id: Optional[str]) -> str:
    if request_id is None:
        return new_request_id()
    if not isinstance(request_id, str) or not 1 <= len(request_id.encode()) <= 128:
        raise ValueError("baton: request_id must be a string of 1..128 bytes")
    return request_id


def _fence(fence: Optional[FenceLike]) -> Optional[pb.Fence]:
    if fence is None or isinstance(fence, pb.Fence):
        return fence
    key, token = fence
    return pb.Fence(key=key, token=token)


def payload(value: Any) -> Tuple[bytes, str]:
    """Payload bytes and a default content type: bytes as is, str as UTF-8 text, any
    other value as JSON."""
    if value is None:
        return b"", ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), ""
    if isinstance(value, str):
        return value.encode("utf-8"), "text/plain; charset=utf-8"
    return json.dumps(value, separators=(",", ":")).encode("utf-8"), "application/json"


def event_input(ev: EventLike) -> pb.EventInput:
    """An EventInput from a message, a type string, (type, payload[, content_type]) or a
    mapping with ``type``, ``payload``, ``content_type``."""
    if isinstance(ev, pb.EventInput):
        return ev
    if isinstance(ev, str):
        return pb.EventInput(type=ev)
    if isinstance(ev, tuple):
        if not 1 <= len(ev) <= 3:
            raise ValueError(f"baton: an event tuple is (type, payload[, content_type]), not {ev!r}")
        etype, value, ctype = (list(ev) + [None, None])[:3]
    elif isinstance(ev, Mapping):
        if "type" not in ev:
            raise ValueError(f"baton: an event mapping needs a 'type': {ev!r}")
        etype, value, ctype = ev["type"], ev.get("payload"), ev.get("content_type")
    else:
        raise TypeError(f"baton: cannot make an event of {type(ev).__name__}")
    data, default_ctype = payload(value)
    return pb.EventInput(type=etype, payload=data, content_type=ctype or default_ctype)


_IF_SEALED: Dict[Optional[str], int] = {
    None: pb.IF_SEALED_UNSPECIFIED,
    "reject": pb.IF_SEALED_REJECT,
    "drop": pb.IF_SEALED_DROP,
}


def _seconds(value: DurationLike, what: str) -> DurationLike:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) and not hasattr(value, "total_seconds"):
        raise TypeError(f"baton: {what} must be seconds or a duration, not {type(value).__name__}")
    return value


def acquire(ns: str, key: str, holder: str, ttl: DurationLike, wait: DurationLike, request_id: Optional[str]) -> "Call[pb.AcquireLeaseResponse]":
    req = pb.AcquireLeaseRequest(
        namespace=ns, key=key, holder=holder, ttl=duration(_seconds(ttl, "ttl")), request_id=_rid(request_id)
    )
    if wait:
        req.wait.CopyFrom(duration(_seconds(wait, "wait")))
    return Call("AcquireLease", req, pb.AcquireLeaseResponse, req.request_id)


def renew(ns: str, key: str, token: int, ttl: DurationLike, request_id: Optional[str]) -> "Call[pb.RenewLeaseResponse]":
    req = pb.RenewLeaseRequest(namespace=ns, key=key, token=token, ttl=duration(_seconds(ttl, "ttl")), request_id=_rid(request_id))
    return Call("RenewLease", req, pb.RenewLeaseResponse, req.request_id)


def release(ns: str, key: str, token: int, request_id: Optional[str]) -> "Call[pb.ReleaseLeaseResponse]":
    req = pb.ReleaseLeaseRequest(namespace=ns, key=key, token=token, request_id=_rid(request_id))
    return Call("ReleaseLease", req, pb.ReleaseLeaseResponse, req.request_id)


def get_lease(ns: str, key: str) -> "Call[pb.GetLeaseResponse]":
    return Call("GetLease", pb.GetLeaseRequest(namespace=ns, key=key), pb.GetLeaseResponse, None)


def define_machine(ns: str, spec: SpecLike) -> "Call[pb.DefineMachineResponse]":
    if not isinstance(spec, pb.MachineSpec):
        spec = machine_spec_from_dict(spec)
    # Idempotent by design (the same spec again is `changed: false`): no request id.
    return Call("DefineMachine", pb.DefineMachineRequest(namespace=ns, spec=spec), pb.DefineMachineResponse, None)


def get_machine(ns: str, kind: str) -> "Call[pb.GetMachineResponse]":
    return Call("GetMachine", pb.GetMachineRequest(namespace=ns, kind=kind), pb.GetMachineResponse, None)


def create_entity(
    ns: str,
    kind: str,
    id: str,
    dedup_key: str,
    fields: Optional[Mapping[str, str]],
    fence: Optional[FenceLike],
    request_id: Optional[str],
) -> "Call[pb.CreateEntityResponse]":
    req = pb.CreateEntityRequest(
        namespace=ns, kind=kind, id=id, dedup_key=dedup_key, fields=dict(fields or {}), request_id=_rid(request_id)
    )
    f = _fence(fence)
    if f is not None:
        req.fence.CopyFrom(f)
    return Call("CreateEntity", req, pb.CreateEntityResponse, req.request_id)


def get_entity(ns: str, entity_id: str) -> "Call[pb.GetEntityResponse]":
    return Call("GetEntity", pb.GetEntityRequest(namespace=ns, id=entity_id), pb.GetEntityResponse, None)


def list_entities(
    ns: str,
    kind: str,
    states: Sequence[str],
    has_fields: Sequence[str],
    missing_fields: Sequence[str],
    page_size: int,
    page_token: str,
) -> "Call[pb.ListEntitiesResponse]":
    req = pb.ListEntitiesRequest(
        namespace=ns,
        kind=kind,
        states=list(states),
        has_fields=list(has_fields),
        missing_fields=list(missing_fields),
        page_size=page_size,
        page_token=page_token,
    )
    return Call("ListEntities", req, pb.ListEntitiesResponse, None)


def transition(
    ns: str,
    entity_id: str,
    name: str,
    expect_version: Optional[int],
    fence: Optional[FenceLike],
    set_fields: Optional[Mapping[str, str]],
    clear_fields: Sequence[str],
    events: Sequence[EventLike],
    final_payload: Any,
    final_content_type: str,
    request_id: Optional[str],
) -> "Call[pb.TransitionResponse]":
    final_data, final_ctype = payload(final_payload)
    req = pb.TransitionRequest(
        namespace=ns,
        entity_id=entity_id,
        transition=name,
        set_fields=dict(set_fields or {}),
        clear_fields=list(clear_fields),
        events=[event_input(e) for e in events],
        final_payload=final_data,
        final_content_type=final_content_type or (final_ctype if final_data else ""),
        request_id=_rid(request_id),
    )
    if expect_version is not None:
        req.expect_version = expect_version
    f = _fence(fence)
    if f is not None:
        req.fence.CopyFrom(f)
    return Call("Transition", req, pb.TransitionResponse, req.request_id)


def append_events(
    ns: str,
    entity_id: str,
    events: Sequence[EventLike],
    fence: Optional[FenceLike],
    if_sealed: Optional[str],
    request_id: Optional[str],
) -> "Call[pb.AppendEventsResponse]":
    if if_sealed not in _IF_SEALED:
        raise ValueError(f'baton: if_sealed must be "reject" or "drop", not {if_sealed!r}')
    if isinstance(events, (str, bytes, pb.EventInput)):
        raise TypeError("baton: events must be a list of events, e.g. [(\"progress\", b\"50%\")]")
    req = pb.AppendEventsRequest(
        namespace=ns,
        entity_id=entity_id,
        events=[event_input(e) for e in events],
        if_sealed=_IF_SEALED[if_sealed],  # type: ignore[arg-type]
        request_id=_rid(request_id),
    )
    f = _fence(fence)
    if f is not None:
        req.fence.CopyFrom(f)
    return Call("AppendEvents", req, pb.AppendEventsResponse, req.request_id)


def stream_request(ns: str, entity_id: str, after_seq: int) -> pb.StreamEventsRequest:
    return pb.StreamEventsRequest(namespace=ns, entity_id=entity_id, after_seq=after_seq)


STREAM_PATH = f"/{SERVICE}/StreamEvents"
