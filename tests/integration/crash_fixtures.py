"""A small index root with published and live history, and the checks every crash must leave true.

:func:`make_history_root` builds it once per test module (real indexer, real server, real LFW
photos): version v1 of 200 synthetic faces (50 identities), then through a server: enroll A, B and
C (two photos each), delete B (DeleteIdentity), delete one face of C (DeleteFaces), delete the
published identity ``syn-3``; ``compact`` to v2 (the server swaps to it); then enroll D (two photos)
and delete A, live on top of v2. Its :class:`Expected` state: C with one face, D with two, 49
synthetic identities; A, B and ``syn-3`` erased. :func:`check_served` checks a running server
against it (each listed, fetched and identified as expected; the erased never listed, fetched or
matched); :func:`check_at_rest` checks the root on disk (``CURRENT`` names a version whose files
match its manifest's sha256, every live journal passes ``journal check``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import NotFoundError
from facesearch.store.index_artifact import check_files, current_version
from facesearch.store.journal_check import check as check_journal
from facesearch.store.live_journal import journal_dirs
from tests.integration.server_fixtures import build_index, start_server, synthetic_embeddings, wait_until

SYNTHETIC_FACES = 200


@dataclass
class Expected:
    """What the root must serve: present identities with their face ids, erased ones, synthetic count."""

    faces: dict[str, set[str]] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)
    synthetic: int = 0


@dataclass
class HistoryRoot:
    root: Path  # the template: copy it, never write it
    bundle: Path
    photos: dict[str, list[Path]]  # person label (A..E) -> two photos Enroll accepts
    expected: Expected


def make_history_root(bundle: Path, people: dict[str, list[Path]], work: Path) -> HistoryRoot:
    contract = ModelBundle.load(bundle, verify=False).contract_id
    root = work / "root"
    emb, ids = synthetic_embeddings(SYNTHETIC_FACES, seed=11)
    build_index(root, emb, ids, contract, work=work / "build")
    photos = _enrollable(bundle, people, work)
    srv = start_server(bundle, root, work / "logs", env={"FACESEARCH_INDEX_POLL_S": "0.3"})
    try:
        with srv.client(timeout=60) as c:
            for label in "ABC":
                assert len(c.enroll(label, photos[label], name=label, use_largest_face=True).face_ids) == 2
            c.delete_identity("B")
            c_faces = c.get_identity("C", include_faces=True).faces
            c.delete_faces([c_faces[0].face_id])
            c.delete_identity("syn-3")
            from indexer.compact import compact

            v2 = compact(root, keep_versions=3).job
            assert v2 is not None
            wait_until(lambda: c.stats()["index_version"] == v2.version_dir.name, timeout=60, what="swap to v2")
            assert len(c.enroll("D", photos["D"], name="D", use_largest_face=True).face_ids) == 2
            c.delete_identity("A")
            expected = Expected(
                faces={label: {f.face_id for f in c.get_identity(label, include_faces=True).faces} for label in "CD"},
                erased={"A", "B", "syn-3"},
                synthetic=len(set(ids)) - 1,
            )
    finally:
        assert srv.stop() == 0
    assert {len(f) for f in expected.faces.values()} == {1, 2}
    return HistoryRoot(root, bundle, photos, expected)


def _enrollable(bundle: Path, people: dict[str, list[Path]], work: Path) -> dict[str, list[Path]]:
    """Two photos of each of five people that Enroll accepts (some LFW photos fail the blur gate),
    found on a scratch server: ``{A..E: [photo, photo]}``."""
    srv = start_server(bundle, work / "scratch", work / "logs")
    out: dict[str, list[Path]] = {}
    try:
        with srv.client(timeout=60) as c:
            for person, candidates in people.items():
                r = c.enroll(person, candidates[:6], use_largest_face=True)
                good = [candidates[x.index] for x in r.images if x.accepted]
                if len(good) >= 2:
                    out["ABCDE"[len(out)]] = good[:2]
                if len(out) == 5:
                    break
    finally:
        assert srv.stop() == 0
    assert len(out) == 5, "fewer than five fixture people with two enrollable photos"
    return out


def copy_root(template: HistoryRoot, to: Path) -> Path:
    shutil.copytree(template.root, to, symlinks=True)
    return to


def check_at_rest(root: Path) -> None:
    """``CURRENT`` names a complete version (every file matches its manifest) and the journals are sound."""
    version = current_version(root)
    assert version is not None, f"{root}: no CURRENT"
    assert check_files(root / version) == [], f"{root / version} does not match its manifest"
    for directory in journal_dirs(root / "live"):
        report = check_journal(directory)
        assert report.ok, f"journal check failed for {directory}: {report.to_json()}"


def top_identities(c: FaceSearchClient, photo: Path) -> list[str]:
    """Identities among the candidates of ``photo``'s largest face (those reaching the default threshold:
    an enrolled photo's own face scores ~1.0, so a served one is always among them)."""
    faces = c.identify(photo, largest_only=True, top_k=5).faces
    return [cand.identity_id for cand in faces[0].candidates] if faces else []


def identity_state(c: FaceSearchClient, identity_id: str, photo: Path) -> tuple[set[str] | None, bool, bool]:
    """``(face ids or None when NOT_FOUND, listed, matched by its own enrolled photo)``."""
    try:
        faces: set[str] | None = {f.face_id for f in c.get_identity(identity_id, include_faces=True).faces}
    except NotFoundError:
        faces = None
    listed = any(i.identity_id == identity_id for i in c.list_identities(page_size=500))
    return faces, listed, identity_id in top_identities(c, photo)


def check_served(c: FaceSearchClient, history: HistoryRoot, expected: Expected) -> None:
    """Everything ``expected`` says, over the wire: health, list, get, identify."""
    assert c.health() == "SERVING"
    listed = {i.identity_id: i.face_count for i in c.list_identities(page_size=500)}
    synthetic = {i for i in listed if i.startswith("syn-")}
    assert len(synthetic) == expected.synthetic, sorted(synthetic)
    others = set(listed) - synthetic
    assert others == set(expected.faces), f"listed {sorted(others)}, expected {sorted(expected.faces)}"
    for identity_id, faces in expected.faces.items():
        got = c.get_identity(identity_id, include_faces=True)
        assert {f.face_id for f in got.faces} == faces, identity_id
        assert listed[identity_id] == got.face_count == len(faces), identity_id
        photo = history.photos[identity_id][1]  # enrolled (C keeps its second face)
        assert top_identities(c, photo)[:1] == [identity_id], identity_id
    for identity_id in expected.erased:
        try:
            c.get_identity(identity_id)
        except NotFoundError:
            pass
        else:
            raise AssertionError(f"erased identity {identity_id} is back")
        if identity_id in history.photos:
            for photo in history.photos[identity_id]:
                assert identity_id not in top_identities(c, photo), f"erased {identity_id} matched"


def serve_and_check(
    history: HistoryRoot,
    root: Path,
    logs: Path,
    expected: Expected,
    settle: Callable[[FaceSearchClient], None] | None = None,
) -> None:
    """Start a server on ``root``; ``settle`` (first) may update ``expected`` from what it serves."""
    srv = start_server(history.bundle, root, logs)
    try:
        with srv.client(timeout=60) as c:
            wait_until(lambda: c.health() == "SERVING", timeout=60, what="SERVING")
            if settle is not None:
                settle(c)
            check_served(c, history, expected)
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


def wait_dead(proc_poll: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while proc_poll() is None:  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"the process did not crash within {timeout}s")
        time.sleep(0.05)
