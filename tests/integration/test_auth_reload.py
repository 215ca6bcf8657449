"""The token file is read again without a restart: when it changes (FACESEARCH_AUTH_RELOAD_S) and on
SIGHUP; a token minted with ``facesearch-server token new --append`` works at once after, a removed one
stops working, and a broken new file keeps the tokens in force (with an error in the log)."""

from __future__ import annotations

import os
import signal
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
from tests.integration.server_fixtures import REPO, ServerProcess, start_server, wait_until

pytestmark = pytest.mark.slow

FIRST = "fst_reload-first-secret"


def _code(srv: ServerProcess, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(srv.target) as channel:
        try:
            pb_grpc.FaceSearchStub(channel).GetStats(
                pb.GetStatsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def _mint(tokens: Path, name: str) -> str:
    """``facesearch-server token new --append``: the secret (stdout)."""
    done = subprocess.run(
        [sys.executable, "-m", "server", "token", "new", "--name", name, "--scopes", "read", "--append", str(tokens)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    return done.stdout.strip()


def _start(bundle: Path, tmp_path: Path, reload_s: str) -> tuple[ServerProcess, Path]:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("first", [Scope.READ], FIRST) + "\n")
    srv = start_server(
        bundle,
        tmp_path / "index",
        tmp_path / "logs",
        env={"FACESEARCH_AUTH_RELOAD_S": reload_s},
        args=("--auth-tokens", str(tokens)),
    )
    return srv, tokens


def test_a_changed_token_file_is_reloaded_and_a_broken_one_is_refused(server_bundle: Path, tmp_path: Path) -> None:
    srv, tokens = _start(server_bundle, tmp_path, "0.2")
    try:
        assert _code(srv, FIRST) == grpc.StatusCode.OK
        second = _mint(tokens, "second")
        wait_until(lambda: _code(srv, second) == grpc.StatusCode.OK, timeout=20, what="the minted token to work")
        assert _code(srv, FIRST) == grpc.StatusCode.OK
        tokens.write_text(tokens.read_text().splitlines()[1] + "\n")  # revoke the first token
        wait_until(lambda: _code(srv, FIRST) == grpc.StatusCode.UNAUTHENTICATED, timeout=20, what="the revocation")
        tokens.write_text("second read sha256:not-a-digest\n")  # broken: the tokens in force stay
        wait_until(lambda: "not reloaded, the previous one stays in force" in srv.log(), timeout=20, what="the error")
        assert _code(srv, second) == grpc.StatusCode.OK and _code(srv, FIRST) == grpc.StatusCode.UNAUTHENTICATED
        assert second not in srv.log() and FIRST not in srv.log()
    finally:
        assert srv.stop() == 0


def test_sighup_reloads_the_token_file_at_once(server_bundle: Path, tmp_path: Path) -> None:
    srv, tokens = _start(server_bundle, tmp_path, "3600")  # no reload by time during the test
    try:
        later = _mint(tokens, "later")
        assert _code(srv, later) == grpc.StatusCode.UNAUTHENTICATED  # not read yet
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _code(srv, later) == grpc.StatusCode.OK, timeout=20, what="the SIGHUP reload")
        assert "SIGHUP: reloading credentials" in srv.log()
    finally:
        assert srv.stop() == 0
