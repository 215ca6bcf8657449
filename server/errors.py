"""The one mapping from facesearch errors to gRPC status codes, with google.rpc details.

Every failure leaves the server as a status code, a human message and a
``grpc-status-details-bin`` trailer holding a ``google.rpc.Status`` with one
``google.rpc.ErrorInfo`` (domain ``facesearch.v1``, the stable ``reason``, metadata).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from facesearch.errors import ErrorCode, FaceSearchError
from server.admission import Cancelled, DeadlineExceeded

DOMAIN = "facesearch.v1"
DETAILS_KEY = "grpc-status-details-bin"

STATUS = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_of(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """``(status code, reason)`` of an exception raised while serving a call."""
    if isinstance(err, FaceSearchError):
        return STATUS.get(err.code, grpc.StatusCode.INTERNAL), err.reason
    if isinstance(err, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"
    if isinstance(err, Cancelled):
        return grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"
    return grpc.StatusCode.INTERNAL, "INTERNAL"


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
