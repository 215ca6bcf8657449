"""A crash at every failpoint (``facesearch.util.failpoints.SITES``), in a real process, loses nothing
acknowledged and half-applies nothing.

For each declared site and each operation that reaches it (the list is generated from the
declarations, so a new site is covered when it is declared), on a copy of one small root with
published and live history (:mod:`tests.integration.crash_fixtures`):

* the process that reaches the site is started with ``FACESEARCH_FAILPOINTS=<site>:crash`` and
  kills itself there (SIGKILL: no cleanup): a server during Enroll, DeleteIdentity or DeleteFaces,
  or while it swaps to a compacted version and prunes its journal; ``facesearch-index compact`` or
  ``rollback`` during its publish, pointer switch or pruning of old versions;
* then, at rest: ``CURRENT`` names a version whose every file matches its manifest, and every live
  journal passes ``facesearch-index journal check``;
* a server started on the root reaches SERVING and serves every acknowledged change (face ids,
  listing, its own photo matched), no erased identity (not fetched, not listed, not matched), and
  the interrupted change either whole or not at all (GetIdentity, ListIdentities and Identify
  agree);
* after an interrupted ``compact``, running it again succeeds.
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import FaceSearchError
from facesearch.util import failpoints
from facesearch.util.failpoints import Operation
from tests.integration.crash_fixtures import (
    Expected,
    HistoryRoot,
    check_at_rest,
    copy_root,
    identity_state,
    make_history_root,
    serve_and_check,
    wait_dead,
)
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, start_server

pytestmark = pytest.mark.slow

POINTS = [
    (site.name, op)
    for site in failpoints.SITES.values()
    if site.store is failpoints.Store.SQLITE  # the PostgreSQL store's sites: test_pg_crash_points.py
    for op in site.operations
]
SERVER_WRITES = (Operation.ENROLL, Operation.DELETE_IDENTITY, Operation.DELETE_FACES)


@pytest.fixture(scope="module")
def history(
    server_bundle: Path, people: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> HistoryRoot:
    return make_history_root(server_bundle, people, tmp_path_factory.mktemp("crash-history"))


def _index_job(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args],
        env=full,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(("site", "op"), POINTS, ids=[f"{s}-{o}" for s, o in POINTS])
def test_a_crash_at_the_failpoint_loses_nothing_acknowledged(
    site: str, op: Operation, history: HistoryRoot, tmp_path: Path
) -> None:
    root = copy_root(history, tmp_path / "root")
    logs = tmp_path / "logs"
    crash = {failpoints.ENV: f"{site}:crash"}
    expected = copy.deepcopy(history.expected)
    target: str | None = None  # the identity the interrupted change is about
    if op in SERVER_WRITES or op == Operation.SWAP:
        srv = start_server(history.bundle, root, logs, env=crash)
        with srv.client(timeout=60) as c:
            if op == Operation.ENROLL:
                target = "E"
                with pytest.raises(FaceSearchError):
                    c.enroll("E", history.photos["E"], name="E", use_largest_face=True)
            elif op == Operation.DELETE_IDENTITY:
                target = "D"
                with pytest.raises(FaceSearchError):
                    c.delete_identity("D")
            elif op == Operation.DELETE_FACES:
                target = "D"
                with pytest.raises(FaceSearchError):
                    c.delete_faces([min(expected.faces["D"])])
            else:  # the server swaps to the new version and prunes its journal
                done = _index_job(["compact", str(root), "--keep-versions", "2", "--quiet"])
                assert done.returncode == 0, done.stderr[-3000:]
        wait_dead(srv.proc.poll)
        assert srv.proc.returncode == -9, f"not a crash at {site}: exit {srv.proc.returncode}\n{srv.log()[-3000:]}"
    else:
        args = ["compact", str(root), "--keep-versions", "2", "--quiet"] if op == Operation.COMPACT else []
        if op == Operation.ROLLBACK:
            args = ["rollback", str(root)]
        done = _index_job(args, crash)
        assert done.returncode == -9, f"not a crash at {site}: exit {done.returncode}\n{done.stderr[-3000:]}"

    check_at_rest(root)
    settle = None
    if target is not None:
        settle = functools.partial(_settle_interrupted, history=history, expected=expected, target=target, op=op)
    serve_and_check(history, root, logs, expected, settle=settle)
    if op == Operation.COMPACT:  # an interrupted compaction does not wedge the root
        done = _index_job(["compact", str(root), "--keep-versions", "2", "--quiet"])
        assert done.returncode == 0, done.stderr[-3000:]
        check_at_rest(root)
        serve_and_check(history, root, logs, expected)


def _settle_interrupted(
    c: FaceSearchClient, *, history: HistoryRoot, expected: Expected, target: str, op: Operation
) -> None:
    """Find how the interrupted change ended up, check it is whole or absent, and update ``expected``."""
    faces, listed, matched = identity_state(c, target, history.photos[target][0])
    before = expected.faces.get(target)
    if op == Operation.ENROLL:
        if faces is None:
            assert not listed and not matched, f"E half-enrolled: listed {listed}, matched {matched}"
        else:
            assert len(faces) == 2 and listed and matched, f"E half-enrolled: {faces}, {listed}, {matched}"
            expected.faces["E"] = faces
    elif op == Operation.DELETE_IDENTITY:
        if faces is None:
            assert not listed and not matched, f"D half-deleted: listed {listed}, matched {matched}"
            del expected.faces["D"]
            expected.erased.add("D")
        else:
            assert faces == before and listed and matched, f"D half-deleted: {faces}, {listed}, {matched}"
    else:  # DeleteFaces of one of D's two faces
        assert before is not None and faces is not None and listed and matched, (faces, listed, matched)
        assert faces in (before, before - {min(before)}), f"D's faces {faces}, before {before}"
        expected.faces["D"] = faces
