"""Every method of every service the server registers, called on a real server with no token, a wrong
token, and a token of each scope: generated from the service descriptors (FaceSearch, health,
reflection v1 and v1alpha), so a method added to the proto is in the matrix without editing it.

A call the scope allows must get past the edge (OK, or a non-auth error such as INVALID_ARGUMENT
for the empty request); any other call gets UNAUTHENTICATED (MISSING_TOKEN / BAD_TOKEN) or
PERMISSION_DENIED (SCOPE_REQUIRED, the message naming the scope)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from server.auth import token_line
from server.auth_scopes import METHOD_SCOPES
from server.principal import Scope, parse_scopes
from server.reflection import v1_service_descriptor
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, start_server, wait_until

pytestmark = pytest.mark.slow

SERVICES = [
    pb.DESCRIPTOR.services_by_name["FaceSearch"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    v1_service_descriptor(),
]
METHODS: list[MethodDescriptor] = [m for service in SERVICES for m in service.methods]
SCOPE_TOKENS = {scope.value: f"fst_matrix-{scope.value}-secret" for scope in Scope}
LEGACY = "fst_matrix-legacy-plain-token"  # the old format: admin
CREDENTIALS = ["none", "wrong", *SCOPE_TOKENS, "legacy"]
PASSED_EDGE = "passed"  # the call got past authentication and authorization


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@pytest.fixture(scope="module")
def matrix_server(server_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("matrix")
    tokens = tmp / "tokens"
    lines = [token_line(f"{name}-token", parse_scopes(name, where="t"), s) for name, s in SCOPE_TOKENS.items()]
    tokens.write_text("\n".join([*lines, LEGACY, ""]))
    srv = start_server(server_bundle, tmp / "index", tmp / "logs", args=("--auth-tokens", str(tokens)))
    yield srv
    assert srv.stop() == 0


def _metadata(credential: str) -> tuple[tuple[str, str], ...]:
    secret = {"none": None, "wrong": "fst_not-a-token", "legacy": LEGACY}.get(credential, SCOPE_TOKENS.get(credential))
    return (("authorization", f"Bearer {secret}"),) if secret else ()


def _call(channel: grpc.Channel, method: MethodDescriptor, credential: str) -> tuple[grpc.StatusCode, str, str]:
    """Call ``method`` with an empty request; ``(code, reason, message)``: code OK if it answered."""
    path, metadata = _path(method), _metadata(credential)
    try:
        if method.client_streaming and method.server_streaming:
            replies = channel.stream_stream(path)(iter([b""]), metadata=metadata, timeout=30)
            list(replies)
        elif method.client_streaming:
            channel.stream_unary(path)(iter([b""]), metadata=metadata, timeout=30)
        elif method.server_streaming:
            replies = channel.unary_stream(path)(b"", metadata=metadata, timeout=30)
            next(iter(replies))  # Health.Watch streams forever: its first status is the answer
            replies.cancel()
        else:
            channel.unary_unary(path)(b"", metadata=metadata, timeout=30)
    except grpc.RpcError as err:
        return err.code(), _reason(err), err.details() or ""
    return grpc.StatusCode.OK, "", ""


def _reason(err: grpc.RpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            info = error_details_pb2.ErrorInfo()
            status_pb2.Status.FromString(value).details[0].Unpack(info)
            return str(info.reason)
    return ""


def _expected(method: MethodDescriptor, credential: str) -> tuple[grpc.StatusCode | str, str]:
    required = METHOD_SCOPES[_path(method)]
    if required is None:
        return PASSED_EDGE, ""
    if credential == "none":
        return grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN"
    if credential == "wrong":
        return grpc.StatusCode.UNAUTHENTICATED, "BAD_TOKEN"
    held = parse_scopes("admin" if credential == "legacy" else credential, where="test")
    return (PASSED_EDGE, "") if required in held else (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_REQUIRED")


def test_the_matrix_covers_every_registered_method() -> None:
    assert len(METHODS) == len(METHOD_SCOPES) >= 15
    assert {_path(m) for m in METHODS} == set(METHOD_SCOPES)
    assert {"Identify", "Enroll", "DeleteFaces", "Check", "Watch", "ServerReflectionInfo"} <= {m.name for m in METHODS}


@pytest.mark.parametrize("method", METHODS, ids=_path)
def test_auth_and_scope_matrix(matrix_server: ServerProcess, method: MethodDescriptor) -> None:
    failures = []
    with grpc.insecure_channel(matrix_server.target) as channel:
        for credential in CREDENTIALS:
            code, reason, message = _call(channel, method, credential)
            want, want_reason = _expected(method, credential)
            if want == PASSED_EDGE:
                refused = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
                broken = {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
                ok = code not in refused | broken
            else:
                ok = code == want and reason == want_reason
                required = METHOD_SCOPES[_path(method)]
                if ok and want == grpc.StatusCode.PERMISSION_DENIED and required is not None:
                    ok = f"'{required.value}'" in message  # the message names the scope needed
            if not ok:
                failures.append(f"{credential}: got {code.name} {reason} {message!r}, want {want} {want_reason}")
    assert not failures, "\n".join(failures)


def test_the_access_log_names_the_principal(matrix_server: ServerProcess) -> None:
    stats = pb.DESCRIPTOR.services_by_name["FaceSearch"].methods_by_name["GetStats"]
    with grpc.insecure_channel(matrix_server.target) as channel:
        assert _call(channel, stats, "read")[0] == grpc.StatusCode.OK
        assert _call(channel, stats, "identify")[0] == grpc.StatusCode.PERMISSION_DENIED

    def refused_lines() -> list[str]:
        return [
            line
            for line in matrix_server.log().splitlines()
            if '"principal":"identify-token"' in line and "GetStats" in line
        ]

    # the access log's line is written once the reply has gone: wait for it, as a reader of the log would
    wait_until(
        lambda: bool(refused_lines()) and '"principal":"read-token"' in matrix_server.log(),
        timeout=30,
        what="both GetStats calls in the access log",
    )
    log = matrix_server.log()
    assert '"method":"/facesearch.v1.FaceSearch/GetStats","code":"OK"' in log
    assert '"principal":"read-token"' in log
    # a caller refused for want of a scope is named too
    assert '"code":"PERMISSION_DENIED","ms":' in log and '"principal":"identify-token"' in log
    refused = refused_lines()
    assert refused and all('"reason":"SCOPE_REQUIRED"' in line for line in refused)
    assert "matrix-read-secret" not in log  # secrets never reach the log
    assert "DEPRECATED" in log and "plain token" in log  # the legacy line was loaded with a warning


def test_a_loopback_server_with_tokens_has_no_security_warnings(matrix_server: ServerProcess) -> None:
    metadata = (("authorization", f"Bearer {SCOPE_TOKENS['read']}"),)
    with grpc.insecure_channel(matrix_server.target) as channel:
        stats = pb_grpc.FaceSearchStub(channel).GetStats(pb.GetStatsRequest(), metadata=metadata, timeout=30)
    assert stats.model_id and list(stats.security_warnings) == []
    assert "SECURITY:" not in matrix_server.log()
