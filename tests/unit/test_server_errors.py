"""The one error mapping and the auth check, through the real interceptor on an in-process server.

(The full method x credential matrix against a real server: tests/integration/test_auth_matrix.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from facesearch.errors import ContractMismatchError, NotFoundError, ResourceExhaustedError
from server.admission import DeadlineExceeded
from server.auth import Authenticator, WatchedFile, parse_token_file
from server.interceptors import EdgeInterceptor
from server.metrics import Metrics
from server.principal import Scope

FAILURES: dict[str, Callable[[], BaseException]] = {
    "internal": lambda: RuntimeError("secret /etc/passwd detail"),
    "not_found": lambda: NotFoundError("identity 'x' does not exist", reason="IDENTITY_NOT_FOUND"),
    "precondition": lambda: ContractMismatchError("other model"),
    "busy": lambda: ResourceExhaustedError("busy", reason="QUEUE_FULL"),
    "late": lambda: DeadlineExceeded("deadline exceeded before detect"),
}


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise FAILURES[request.decode()]()


async def _ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"ok:" + request


def _strict(data: bytes) -> bytes:
    if not data.isalpha():
        raise ValueError("not letters")
    return data.upper()


SCOPES: dict[str, Scope | None] = {
    "/test.Svc/Fail": Scope.IDENTIFY,
    "/test.Svc/Parse": Scope.IDENTIFY,
    "/test.Svc/Ok": Scope.IDENTIFY,
    "/grpc.health.v1.Health/Ok": None,
}


def _run(
    auth: Authenticator | None, calls: list[tuple[str, bytes, tuple[tuple[str, str], ...]]]
) -> list[tuple[grpc.StatusCode, str, str | None]]:
    async def scenario() -> list[tuple[grpc.StatusCode, str, str | None]]:
        metrics = Metrics()
        server = grpc.aio.server(interceptors=[EdgeInterceptor(metrics, auth, access_log=True, scopes=SCOPES)])
        handlers = {
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Ok": grpc.unary_unary_rpc_method_handler(_ok),
            "Parse": grpc.unary_unary_rpc_method_handler(_ok, request_deserializer=_strict),
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("test.Svc", handlers),
                grpc.method_handlers_generic_handler("grpc.health.v1.Health", handlers),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method, body, metadata in calls:
                try:
                    reply = await channel.unary_unary(method)(body, metadata=metadata, timeout=10)
                    out.append((grpc.StatusCode.OK, reply.decode(), None))
                except grpc.aio.AioRpcError as err:
                    reason = None
                    for key, value in err.trailing_metadata() or ():
                        if key == "grpc-status-details-bin":
                            info = error_details_pb2.ErrorInfo()
                            status_pb2.Status.FromString(value).details[0].Unpack(info)
                            reason = f"{info.domain}/{info.reason}"
                    out.append((err.code(), err.details() or "", reason))
        await server.stop(0)
        return out

    return asyncio.run(scenario())


def test_errors_map_to_status_codes_with_error_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    names = list(FAILURES)
    got = _run(None, [("/test.Svc/Fail", n.encode(), ()) for n in names])
    codes = {n: g for n, g in zip(names, got, strict=True)}
    assert codes["internal"][0] == grpc.StatusCode.INTERNAL
    assert "secret" not in codes["internal"][1] and codes["internal"][2] == "facesearch.v1/INTERNAL"
    assert "secret /etc/passwd detail" in caplog.text  # the traceback stays in the server log
    assert codes["not_found"] == (
        grpc.StatusCode.NOT_FOUND,
        "identity 'x' does not exist",
        "facesearch.v1/IDENTITY_NOT_FOUND",
    )
    assert codes["precondition"][0] == grpc.StatusCode.FAILED_PRECONDITION
    assert codes["precondition"][2] == "facesearch.v1/CONTRACT_MISMATCH"
    assert codes["busy"][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and codes["busy"][2].endswith("QUEUE_FULL")
    assert codes["late"][0] == grpc.StatusCode.DEADLINE_EXCEEDED
    access = [r.getMessage() for r in caplog.records if r.name == "facesearch.access"]
    assert len(access) == len(names) and '"code":"INTERNAL"' in access[0]


def test_bearer_tokens(tmp_path: Path) -> None:
    calls = [
        ("/test.Svc/Ok", b"a", ()),
        ("/test.Svc/Ok", b"b", (("authorization", "Bearer nope"),)),
        ("/test.Svc/Ok", b"c", (("authorization", "Bearer tok-2"),)),
        ("/test.Svc/Ok", b"d", (("authorization", "Basic tok-2"),)),
        ("/grpc.health.v1.Health/Ok", b"e", ()),  # health needs no token
    ]
    path = tmp_path / "tokens"
    path.write_text("tok-1\ntok-2\n")  # the old format: plain tokens, admin
    auth = Authenticator(WatchedFile(path, lambda text: parse_token_file(text, where="t"), "token file"), None)
    got = _run(auth, calls)
    assert got[0][0] == grpc.StatusCode.UNAUTHENTICATED and got[0][2].endswith("MISSING_TOKEN")
    assert got[1][0] == grpc.StatusCode.UNAUTHENTICATED and got[1][2].endswith("BAD_TOKEN")
    assert got[2] == (grpc.StatusCode.OK, "ok:c", None)
    assert got[3][0] == grpc.StatusCode.UNAUTHENTICATED
    assert got[4] == (grpc.StatusCode.OK, "ok:e", None)


def test_a_request_that_does_not_parse_is_invalid_argument() -> None:
    got = _run(None, [("/test.Svc/Parse", b"abc", ()), ("/test.Svc/Parse", b"\xff\x00", ())])
    assert got[0] == (grpc.StatusCode.OK, "ok:ABC", None)  # the edge deserialises with the handler's deserializer
    assert got[1][0] == grpc.StatusCode.INVALID_ARGUMENT and got[1][2] == "facesearch.v1/MALFORMED_REQUEST"
    assert "Parse does not parse" in got[1][1]
