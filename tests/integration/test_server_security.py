"""Bearer-token auth (the old plain-token file: admin, deprecated), TLS and mutual TLS (client
certificate subjects mapped to scopes) on a real server, the Docker healthcheck script, and graceful
shutdown on SIGTERM (in-flight calls finish, the process exits 0). The full method x credential
matrix: test_auth_matrix.py."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from facesearch.client.service_client import RpcFailedError
from facesearch.errors import UnauthenticatedError
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, start_server, wait_until

pytestmark = pytest.mark.slow


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("certs")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=facesearch test CA",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{who}.key",
            "-out",
            f"{who}.csr",
            "-subj",
            f"/CN={'localhost' if who == 'server' else 'facesearch-client'}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{who}.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )
    return d


def test_old_plain_token_file_still_works(server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]) -> None:
    """The compatibility contract: a file of plain tokens, one a line, keeps working (each token has
    the admin scope) and loading it logs a deprecation warning."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# accepted tokens\ns3cret-one\n\ns3cret-two\n")
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs", args=("--auth-tokens", str(tokens)))
    photo = next(iter(people.values()))[0]
    try:
        with srv.client() as anonymous:
            assert anonymous.health() == "SERVING"  # health stays open for load balancers
            with pytest.raises(UnauthenticatedError) as err:
                anonymous.identify(photo)
            assert err.value.reason == "MISSING_TOKEN"
        with srv.client(token="wrong") as wrong, pytest.raises(UnauthenticatedError) as err:
            wrong.stats()
        assert err.value.reason == "BAD_TOKEN"
        for token in ("s3cret-one", "s3cret-two"):
            with srv.client(token=token) as ok:
                assert ok.identify(photo).faces
                assert ok.stats()["model_id"]
        with grpc.insecure_channel(srv.target) as channel:  # admin: delete too (no such identity)
            with pytest.raises(grpc.RpcError) as rpc:
                pb_grpc.FaceSearchStub(channel).DeleteIdentity(
                    pb.DeleteIdentityRequest(identity_id="nobody"),
                    metadata=(("authorization", "Bearer s3cret-two"),),
                    timeout=30,
                )
            assert rpc.value.code() == grpc.StatusCode.NOT_FOUND
        assert "s3cret" not in srv.log()  # tokens never reach the log
        assert "DEPRECATED" in srv.log() and "holds 2 plain token(s)" in srv.log()
    finally:
        assert srv.stop() == 0


def test_tls_and_mutual_tls(server_bundle: Path, tmp_path: Path, certs: Path, people: dict[str, list[Path]]) -> None:
    photo = next(iter(people.values()))[0]
    srv = start_server(
        server_bundle,
        tmp_path / "index",
        tmp_path / "logs",
        args=("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")),
    )
    try:
        with srv.client(ca_cert=certs / "ca.pem", server_name="localhost") as c:
            assert c.identify(photo).faces
        with srv.client(timeout=5) as plaintext, pytest.raises(RpcFailedError):
            plaintext.stats()  # a plaintext client cannot talk to a TLS server
        env = {"FACESEARCH_TLS_CERT": str(certs / "server.pem"), "FACESEARCH_HEALTHCHECK_CA": str(certs / "ca.pem")}
        assert _healthcheck(srv.target, env).returncode == 0
    finally:
        assert srv.stop() == 0

    srv = start_server(
        server_bundle,
        tmp_path / "index",
        tmp_path / "logs",
        args=(
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(certs / "server.key"),
            "--tls-client-ca",
            str(certs / "ca.pem"),
        ),
    )
    try:
        with srv.client(
            ca_cert=certs / "ca.pem",
            server_name="localhost",
            client_cert=certs / "client.pem",
            client_key=certs / "client.key",
        ) as c:
            assert c.identify(photo).faces
        with (
            srv.client(ca_cert=certs / "ca.pem", server_name="localhost", timeout=5) as no_cert,
            pytest.raises(RpcFailedError),
        ):
            no_cert.stats()  # no client certificate: the handshake fails
    finally:
        assert srv.stop() == 0


def _healthcheck(target: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "healthcheck.py"), "--target", target],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_healthcheck_and_graceful_sigterm(server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]) -> None:
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs")
    done = _healthcheck(srv.target)
    assert done.returncode == 0 and done.stdout.strip() == "SERVING"
    photos = [p for ps in people.values() for p in ps[:3]]
    results: list[object] = []

    def stream() -> None:
        with srv.client() as c:
            try:
                results.extend(c.identify_stream([(str(i), p) for i, p in enumerate(photos)]))
            except BaseException as err:
                results.append(err)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.5)  # the stream is in flight
    srv.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert srv.proc.wait(60) == 0
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert len(results) == len(photos)  # every in-flight request was answered before exit
    assert _healthcheck(srv.target).returncode == 1  # nothing listens any more
    assert "received SIGTERM" in srv.log() and "stopped" in srv.log()


def test_client_certificate_subjects_have_scopes(server_bundle: Path, tmp_path: Path, certs: Path) -> None:
    """mTLS: the certificate's CN maps to scopes (FACESEARCH_TLS_CLIENT_SCOPES); a CN not in the file is
    refused with CLIENT_NOT_MAPPED; the file is reloaded like the token file."""
    scopes = tmp_path / "client-scopes"
    scopes.write_text("# CN scopes\nfacesearch-client identify\n")
    srv = start_server(
        server_bundle,
        tmp_path / "index",
        tmp_path / "logs",
        env={"FACESEARCH_TLS_CLIENT_SCOPES": str(scopes), "FACESEARCH_AUTH_RELOAD_S": "0.2"},
        args=(
            "--listen",
            "0.0.0.0:0",  # TLS and auth: no security warning
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(certs / "server.key"),
            "--tls-client-ca",
            str(certs / "ca.pem"),
        ),
    )
    creds = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(), (certs / "client.key").read_bytes(), (certs / "client.pem").read_bytes()
    )

    def call(rpc: str, request: object) -> tuple[grpc.StatusCode, str]:
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(srv.target, creds, options=options) as channel:
            try:
                getattr(pb_grpc.FaceSearchStub(channel), rpc)(request, timeout=30)
            except grpc.RpcError as err:
                return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    try:
        assert call("Detect", pb.DetectRequest())[0] == grpc.StatusCode.INVALID_ARGUMENT  # identify: allowed
        code, message = call("GetStats", pb.GetStatsRequest())
        assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope 'read'" in message
        assert call("Enroll", pb.EnrollRequest())[0] == grpc.StatusCode.PERMISSION_DENIED
        assert '"principal":"cert:facesearch-client"' in srv.log() and "SECURITY:" not in srv.log()
        scopes.write_text("someone-else admin\n")
        wait_until(lambda: call("Detect", pb.DetectRequest())[0] == grpc.StatusCode.PERMISSION_DENIED, timeout=20)
        assert "facesearch-client" in call("Detect", pb.DetectRequest())[1]  # CLIENT_NOT_MAPPED names the CN
    finally:
        assert srv.stop() == 0
