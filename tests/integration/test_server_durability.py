"""Durability and compaction against real server processes.

* kill -9 during concurrent enrollments, restart: no acknowledged enrollment is lost;
* ``compact`` while the server is up publishes the live changes; the server swaps to the new
  version and drops exactly the part of its delta that the version contains: changes made
  after the compaction's snapshot (an enrollment, a deletion) are kept, face ids stay valid,
  and a restart serves the same gallery.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import FaceSearchError, NotFoundError
from indexer.compact import compact
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import build_index, start_server, synthetic_embeddings, wait_until

pytestmark = pytest.mark.slow

THRESHOLD = "0.91"


def test_kill_9_during_enrollments_loses_nothing_acknowledged(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    root = tmp_path / "index"
    srv = start_server(server_bundle, root, tmp_path / "logs")
    photos = [p for ps in people.values() for p in ps[:4]]
    acknowledged: dict[str, list[str]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def enroller(worker: int) -> None:
        with srv.client(timeout=20) as c:
            i = 0
            while not stop.is_set():
                ident = f"w{worker}-{i:03d}"
                try:
                    r = c.enroll(ident, [photos[(worker * 7 + i) % len(photos)]], use_largest_face=True)
                except FaceSearchError:
                    return  # the server died under us: this call was never acknowledged
                if r.face_ids:
                    with lock:
                        acknowledged[ident] = r.face_ids
                i += 1

    threads = [threading.Thread(target=enroller, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acknowledged) >= 12, timeout=120, what="12 acknowledged enrollments")
    srv.kill()  # SIGKILL while enrollments are in flight
    stop.set()
    for t in threads:
        t.join(30)
    assert srv.proc.returncode == -9
    with lock:
        acked = dict(acknowledged)

    again = start_server(server_bundle, root, tmp_path / "logs")
    try:
        with again.client() as c:
            for ident, face_ids in acked.items():
                got = c.get_identity(ident, include_faces=True)
                assert set(face_ids) <= {f.face_id for f in got.faces}, ident
            assert c.stats()["live_faces"] >= sum(len(f) for f in acked.values())
            # and they are searchable: the photo of an acknowledged enrollment finds itself
            ident = sorted(acked)[0]
            worker, i = int(ident[1]), int(ident.split("-")[1])
            face = c.identify(photos[(worker * 7 + i) % len(photos)], largest_only=True).faces[0]
            assert face.candidates[0].similarity > 0.99
    finally:
        assert again.stop() == 0


def test_compaction_swaps_and_keeps_changes_made_meanwhile(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root = tmp_path / "index"
    emb, ids = synthetic_embeddings(400, seed=7)
    v1 = build_index(root, emb, ids, contract, work=tmp_path / "work").name
    srv = start_server(
        server_bundle,
        root,
        tmp_path / "logs",
        env={"FACESEARCH_MIN_SIMILARITY": THRESHOLD, "FACESEARCH_INDEX_POLL_S": "1"},
    )
    names = list(people)
    a, b, c_name = names[0], names[1], names[2]
    servers = [srv]
    try:
        with srv.client() as c:
            assert c.stats()["index_version"] == v1
            ra = c.enroll(a, people[a][:3], name="A", use_largest_face=True)
            rb = c.enroll(b, people[b][:3], name="B", use_largest_face=True)
            doomed = ids[0]
            assert c.delete_identity(doomed) >= 1  # tombstones on the published version
            assert c.delete_faces([ra.face_ids[0]]) == 1
            before = c.stats()
            assert before["tombstones"] >= 1 and before["live_faces"] == len(ra.face_ids) - 1 + len(rb.face_ids)

            result = compact(root)  # the server is up
            assert result.job is not None and result.added_faces == before["live_faces"]
            v2 = result.job.version_dir.name
            # changes after the compaction's snapshot: they must survive the swap
            rc = c.enroll(c_name, people[c_name][:2], name="C", use_largest_face=True)
            assert c.delete_faces([rb.face_ids[0]]) == 1

            wait_until(lambda: c.stats()["index_version"] == v2, timeout=60, what=f"swap to {v2}")
            after = c.stats()
            assert after["live_faces"] == len(rc.face_ids)  # exactly the post-snapshot enrollment
            assert after["tombstones"] == 1  # exactly the post-snapshot deletion (B's face, now published)
            assert after["index_ntotal"] == 400 - before["tombstones"] + before["live_faces"]
            _check_gallery(c, people, a, b, c_name, ra.face_ids, rb.face_ids, rc.face_ids, doomed)
        assert srv.stop() == 0
        again = start_server(server_bundle, root, tmp_path / "logs", env={"FACESEARCH_MIN_SIMILARITY": THRESHOLD})
        servers.append(again)
        with again.client() as c:
            assert c.stats()["index_version"] == v2 and c.stats()["live_faces"] == len(rc.face_ids)
            _check_gallery(c, people, a, b, c_name, ra.face_ids, rb.face_ids, rc.face_ids, doomed)
            assert compact(root).job is not None  # the post-snapshot changes compact next time
            wait_until(lambda: c.stats()["live_faces"] == 0, timeout=60, what="second swap")
            _check_gallery(c, people, a, b, c_name, ra.face_ids, rb.face_ids, rc.face_ids, doomed)
        assert compact(root).job is None  # nothing left to compact
        assert again.stop() == 0
    finally:
        for server in servers:
            server.stop()


def _check_gallery(c, people, a, b, c_name, a_ids, b_ids, c_ids, doomed) -> None:  # noqa: PLR0917
    assert c.get_identity(a).face_count == len(a_ids) - 1
    assert c.get_identity(b).face_count == len(b_ids) - 1
    assert c.get_identity(c_name).face_count == len(c_ids)
    assert c.get_identity(a).name == "A"
    with pytest.raises(NotFoundError):
        c.get_identity(doomed)
    for name, ids, deleted in ((a, a_ids, a_ids[0]), (b, b_ids, b_ids[0]), (c_name, c_ids, None)):
        face = c.identify(people[name][4], largest_only=True, top_k=3).faces[0]
        assert face.match is not None and face.match.identity_id == name
        assert face.match.face_id in ids and face.match.face_id != deleted  # face ids survive compaction
    got = {f.face_id for f in c.get_identity(a, include_faces=True).faces}
    assert got == set(a_ids[1:])
