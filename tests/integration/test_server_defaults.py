"""Safe defaults on real server processes: bearer tokens over plaintext on a non-loopback address are
refused at start (one line, exit 2) unless FACESEARCH_ALLOW_PLAINTEXT_TOKENS=1, and a server reachable
from the network without TLS or without auth says so: a WARNING at start and Stats.security_warnings.
(The loopback defaults themselves: tests/unit/test_server_config.py; a loopback server has no
warnings: tests/integration/test_auth_matrix.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from server.auth import token_line
from server.principal import Scope
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, ServerProcess, start_server

pytestmark = pytest.mark.slow

TOKEN = "fst_defaults-reader-secret"


def _tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(token_line("reader", [Scope.READ], TOKEN) + "\n")
    return path


def _warnings(srv: ServerProcess, token: str | None = None) -> list[str]:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(srv.target) as channel:
        stats = pb_grpc.FaceSearchStub(channel).GetStats(pb.GetStatsRequest(), metadata=metadata, timeout=30)
    return list(stats.security_warnings)


def test_plaintext_tokens_on_the_network_are_refused_at_start(server_bundle: Path, tmp_path: Path) -> None:
    where = ["--bundle", str(server_bundle), "--index", str(tmp_path / "index")]
    done = subprocess.run(
        [sys.executable, "-m", "server", *where, "--listen", "0.0.0.0:0", "--auth-tokens", str(_tokens(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "FACESEARCH_METRICS_LISTEN": "off"},
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "bearer tokens over plaintext on 0.0.0.0:0" in lines[0] and "FACESEARCH_ALLOW_PLAINTEXT_TOKENS=1" in lines[0]
    assert "FACESEARCH_TLS_CERT" in lines[0]


def test_allowed_plaintext_tokens_and_network_metrics_are_warned_about(server_bundle: Path, tmp_path: Path) -> None:
    srv = start_server(
        server_bundle,
        tmp_path / "index",
        tmp_path / "logs",
        env={"FACESEARCH_ALLOW_PLAINTEXT_TOKENS": "1", "FACESEARCH_METRICS_LISTEN": "0.0.0.0:0"},
        args=("--listen", "0.0.0.0:0", "--auth-tokens", str(_tokens(tmp_path))),
    )
    try:
        warnings = _warnings(srv, TOKEN)
        assert len(warnings) == 3, warnings
        assert "without TLS" in warnings[0] and "plaintext" in warnings[1] and "metrics on 0.0.0.0:0" in warnings[2]
        log = srv.log()
        for warning in warnings:
            assert f"WARNING facesearch.server.app: SECURITY: {warning}" in log
    finally:
        assert srv.stop() == 0


def test_an_open_server_on_the_network_is_warned_about(server_bundle: Path, tmp_path: Path) -> None:
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs", args=("--listen", "0.0.0.0:0"))
    try:
        warnings = _warnings(srv)
        assert len(warnings) == 2, warnings
        assert "without TLS" in warnings[0] and "without authentication" in warnings[1]
        assert "anyone who can connect may identify, enroll, list and delete" in warnings[1]
        assert srv.log().count("WARNING facesearch.server.app: SECURITY:") == 2
    finally:
        assert srv.stop() == 0
