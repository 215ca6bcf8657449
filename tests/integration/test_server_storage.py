"""A full or failing disk, a second writer and a damaged journal, against real server processes.

* ENOSPC for real: the live directory on a 2 MB tmpfs, filled up; every Enroll fails with UNAVAILABLE
  (STORAGE_FULL) while searches go on; the Writes health service and ``facesearch_writes_degraded``
  say so; once space is freed, writes succeed with no restart, and a restart serves every
  acknowledged enrollment.
* EIO injected (``FACESEARCH_FAILPOINTS``) at the vectors fsync and at the commit: UNAVAILABLE
  (STORAGE_ERROR) for exactly those calls, the next ones succeed, a restart holds exactly what was
  acknowledged (a failed deletion did not happen).
* A second server on the same live journal refuses to start, naming the first one's pid, while a
  compaction (a reader) and ``facesearch-index journal check`` work beside it.
* A damaged record: the server refuses to start with the face and the repair command named;
  ``facesearch-index journal repair`` quarantines that face and the server starts with the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facesearch.errors import FaceSearchError
from facesearch.store.journal_vectors import HEADER_BYTES, RecordLayout
from indexer.compact import compact
from server.health import WRITES_SERVICE
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, ServerProcess, start_server

pytestmark = pytest.mark.slow


def writes_health(srv: ServerProcess) -> str:
    with grpc.insecure_channel(srv.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=WRITES_SERVICE))
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def metric(srv: ServerProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values)


def refused(call: object) -> FaceSearchError:
    with pytest.raises(FaceSearchError) as err:
        call()  # type: ignore[operator]
    return err.value


def index_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "indexer.main", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_makes_enroll_unavailable_and_writes_resume_when_space_returns(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    names = list(people)
    with small_tmpfs(tmp_path / "live") as live:
        env = {"FACESEARCH_LIVE_DIR": str(live)}
        srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs", env=env)
        acknowledged: dict[str, list[str]] = {}
        try:
            with srv.client(timeout=60, enroll_retries=0) as c:  # each refusal seen, not retried
                acknowledged[names[0]] = c.enroll(names[0], people[names[0]][:1], use_largest_face=True).face_ids
                assert writes_health(srv) == "SERVING" and metric(srv, "facesearch_writes_degraded") == 0
                filler = fill(live)
                for name in names[1:3]:
                    err = refused(lambda n=name: c.enroll(n, people[n][:1], use_largest_face=True))
                    assert getattr(err, "status", None) == grpc.StatusCode.UNAVAILABLE
                    assert err.reason == "STORAGE_FULL" and "storage is full" in err.message
                assert writes_health(srv) == "NOT_SERVING" and metric(srv, "facesearch_writes_degraded") == 1
                assert metric(srv, 'facesearch_write_failures_total{reason="STORAGE_FULL"}') == 2
                probe = c.identify(people[names[0]][1], largest_only=True)  # searches go on
                assert probe.faces[0].candidates[0].identity_id == names[0]
                filler.unlink()  # space returns: no restart
                for name in names[1:3]:
                    acknowledged[name] = c.enroll(name, people[name][:1], use_largest_face=True).face_ids
                assert writes_health(srv) == "SERVING" and metric(srv, "facesearch_writes_degraded") == 0
        finally:
            assert srv.stop() == 0
        again = start_server(server_bundle, tmp_path / "index", tmp_path / "logs", env=env)
        try:
            with again.client() as c:
                for name, face_ids in acknowledged.items():
                    assert {f.face_id for f in c.get_identity(name, include_faces=True).faces} == set(face_ids)
        finally:
            assert again.stop() == 0


def test_injected_io_errors_fail_exactly_those_calls(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    a, b = list(people)[:2]
    env = {"FACESEARCH_FAILPOINTS": "journal.fsync:eio*1,journal.commit:eio*1+1"}
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs", env=env)
    try:
        with srv.client(timeout=60, enroll_retries=0) as c:  # each refusal seen, not retried
            err = refused(lambda: c.enroll(a, people[a][:2], use_largest_face=True))  # fsync #1: EIO
            assert err.reason == "STORAGE_ERROR" and getattr(err, "status", None) == grpc.StatusCode.UNAVAILABLE
            assert writes_health(srv) == "NOT_SERVING"
            ra = c.enroll(a, people[a][:2], use_largest_face=True)  # commit #1 passes
            assert writes_health(srv) == "SERVING" and len(ra.face_ids) == 2
            err = refused(lambda: c.delete_faces([ra.face_ids[0]]))  # commit #2: EIO
            assert err.reason == "STORAGE_ERROR"
            rb = c.enroll(b, people[b][:1], use_largest_face=True)
            assert c.get_identity(a).face_count == 2  # the failed deletion did not happen
    finally:
        assert srv.stop() == 0
    again = start_server(server_bundle, tmp_path / "index", tmp_path / "logs")
    try:
        with again.client() as c:
            assert {f.face_id for f in c.get_identity(a, include_faces=True).faces} == set(ra.face_ids)
            assert {f.face_id for f in c.get_identity(b, include_faces=True).faces} == set(rb.face_ids)
            assert c.stats()["live_faces"] == 3
    finally:
        assert again.stop() == 0


def test_a_second_server_is_refused_while_readers_work(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    a = next(iter(people))
    root = tmp_path / "index"
    first = start_server(server_bundle, root, tmp_path / "logs")
    try:
        with first.client(timeout=60) as c:
            c.enroll(a, people[a][:2], use_largest_face=True)
        with pytest.raises(RuntimeError) as err:
            start_server(server_bundle, root, tmp_path / "logs")
        assert f"is being written by pid {first.proc.pid}" in str(err.value)
        found = index_cli("journal", "check", str(root))
        assert found.returncode == 0, found.stderr
        (report,) = json.loads(found.stdout)
        assert report["ok"] and report["writer_pid"] == first.proc.pid and report["live_faces"] == 2
        blocked = index_cli("journal", "repair", str(root))
        assert blocked.returncode == 1 and f"pid {first.proc.pid}" in blocked.stderr
        result = compact(root)  # a reader: works beside the writer
        assert result.job is not None and result.added_faces == 2
    finally:
        assert first.stop() == 0


def test_a_damaged_record_is_reported_and_repair_quarantines_its_face(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    a, b, c_name = list(people)[:3]
    root = tmp_path / "index"
    srv = start_server(server_bundle, root, tmp_path / "logs")
    try:
        with srv.client(timeout=60) as c:
            ra = c.enroll(a, people[a][:1], use_largest_face=True)
            rb = c.enroll(b, people[b][:1], use_largest_face=True)
            rc = c.enroll(c_name, people[c_name][:1], use_largest_face=True)
    finally:
        assert srv.stop() == 0
    (vectors,) = (root / "live").glob("vectors-*.vec")
    data = bytearray(vectors.read_bytes())
    data[HEADER_BYTES + RecordLayout(2, 128).size + 100] ^= 0x10  # one bit of b's embedding
    vectors.write_bytes(bytes(data))
    with pytest.raises(RuntimeError) as err:
        start_server(server_bundle, root, tmp_path / "logs")
    message = str(err.value)
    assert f"face {rb.face_ids[0]}" in message and "checksum" in message and "journal repair" in message
    found = index_cli("journal", "check", str(root))
    assert found.returncode == 1 and json.loads(found.stdout)[0]["damaged"][0]["face_id"] == rb.face_ids[0]
    fixed = index_cli("journal", "repair", str(root))
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)[0]["newly_quarantined"] == rb.face_ids
    again = start_server(server_bundle, root, tmp_path / "logs")
    try:
        with again.client() as c:
            assert c.get_identity(b).face_count == 0  # quarantined: never served
            assert [f.face_id for f in c.get_identity(a, include_faces=True).faces] == ra.face_ids
            assert [f.face_id for f in c.get_identity(c_name, include_faces=True).faces] == rc.face_ids
            probe = c.identify(people[a][2], largest_only=True).faces[0]
            assert probe.candidates[0].identity_id == a
    finally:
        assert again.stop() == 0
