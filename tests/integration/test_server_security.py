"""Bearer-token auth, TLS and mutual TLS on a real server, the Docker healthcheck script, and
graceful shutdown on SIGTERM (in-flight calls finish, the process exits 0)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from facesearch.client.service_client import RpcFailedError
from facesearch.errors import UnauthenticatedError
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, start_server

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


def test_bearer_token_auth(server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]) -> None:
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
        assert "s3cret" not in srv.log()  # tokens never reach the log
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
