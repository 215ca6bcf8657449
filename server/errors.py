"""The one mapping from facesearch errors to gRPC status codes, with google.rpc details.

Every failure leaves the server as a status code, a human message and a
``grpc-status-details-bin`` trailer holding a ``google.rpc.Status`` with one
``google.rpc.ErrorInfo`` (domain ``facesearch.v1``, the stable ``reason``, metadata).

:data:`STATUS` is the only place a transport-neutral :class:`~facesearch.reasons.ErrorCode` (of an
error class, or of a :class:`~facesearch.reasons.Reason`) becomes a ``grpc.StatusCode``: the
status of the same name, for every code.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from facesearch.errors import ErrorCode, FaceSearchError, Reason
from server.admission import Cancelled, DeadlineExceeded

DOMAIN = "facesearch.v1"
DETAILS_KEY = "grpc-status-details-bin"

STATUS: dict[ErrorCode, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in ErrorCode}


def status_of(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """``(status code, reason)`` of an exception raised while serving a call.

    A facesearch error's class decides the status; the server's own conditions and unknown
    exceptions are sent with their reason's code.
    """
    if isinstance(err, FaceSearchError):
        return STATUS[err.code], err.reason
    if isinstance(err, DeadlineExceeded):  # a subclass may name its own reason (StreamIdle: STREAM_IDLE)
        return reason_status(getattr(err, "reason", Reason.DEADLINE_EXCEEDED))
    if isinstance(err, Cancelled):
        return reason_status(Reason.SHUTTING_DOWN)
    return reason_status(Reason.INTERNAL)


def reason_status(reason: Reason) -> tuple[grpc.StatusCode, Reason]:
    """``(status code, reason)`` for a reason sent without an exception class (its own code)."""
    return STATUS[reason.code], reason


def public_message(err: BaseException) -> str:
    """What the client is told: our own errors' messages; never internals of unknown ones."""
    if isinstance(err, FaceSearchError | DeadlineExceeded | Cancelled):
        return str(err)
    return "internal error (the server log has the details)"


def details_trailer(
    code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str] | None = None
) -> tuple[tuple[str, bytes], ...]:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[packed])
    return ((DETAILS_KEY, status.SerializeToString()),)
