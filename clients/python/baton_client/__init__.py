"""Python client for baton (``baton.v1.Coordinator``): a sync :class:`Client` and an
asyncio :class:`AsyncClient` with the same surface.

    from baton_client import Client

    with Client("127.0.0.1:50051", namespace="acme") as baton:
        run = baton.create_entity("review_run", dedup_key="worker-7:3f2a9c").entity
        with baton.lease(f"review/{run.id}", holder="worker-7", ttl=30) as lease:
            lease.transition(run.id, "start")            # fenced with the lease
        for event in baton.stream_events(run.id):         # resumes by itself, ends at final
            print(event.seq, event.type)

Every mutating call carries a request id (generated unless given) and is retried with
that same id after UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED, because such a call may
have committed; see ``RetryPolicy`` and ``BatonError.maybe_committed``.
"""

from baton_client._errors import (
    ERROR_DOMAIN,
    BatonError,
    Cancelled,
    CursorExpired,
    DatabaseUnavailable,
    DeadlineExceeded,
    EntityExists,
    EntityNotFound,
    FieldNotAllowed,
    Internal,
    InvalidArgument,
    InvalidTransition,
    LeaseLost,
    LeaseNotAcquired,
    MachineChanged,
    MachineNotFound,
    NotFound,
    PermissionDenied,
    Reason,
    RequestIdReused,
    ShuttingDown,
    StateInUse,
    TapeSealed,
    Unauthenticated,
    Unavailable,
    VersionMismatch,
    from_rpc_error,
)
from baton_client._gen import coordinator_pb2 as pb
from baton_client._machines import load_machines, machine_spec_from_dict, parse_duration
from baton_client._options import SERVICE_CONFIG_PATH, parse_target
from baton_client._policy import RetryPolicy
from baton_client._requests import new_request_id
from baton_client.aio import AsyncClient, AsyncEventStream, AsyncLease
from baton_client.client import Client, EventStream, Lease

__all__ = [
    "AsyncClient",
    "AsyncEventStream",
    "AsyncLease",
    "BatonError",
    "Cancelled",
    "Client",
    "CursorExpired",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "ERROR_DOMAIN",
    "EntityExists",
    "EntityNotFound",
    "EventStream",
    "FieldNotAllowed",
    "Internal",
    "InvalidArgument",
    "InvalidTransition",
    "Lease",
    "LeaseLost",
    "LeaseNotAcquired",
    "MachineChanged",
    "MachineNotFound",
    "NotFound",
    "PermissionDenied",
    "Reason",
    "RequestIdReused",
    "RetryPolicy",
    "SERVICE_CONFIG_PATH",
    "ShuttingDown",
    "StateInUse",
    "TapeSealed",
    "Unauthenticated",
    "Unavailable",
    "VersionMismatch",
    "from_rpc_error",
    "load_machines",
    "machine_spec_from_dict",
    "new_request_id",
    "parse_duration",
    "parse_target",
    "pb",
]
