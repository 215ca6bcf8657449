"""Erasure, rollback and integrity against real server processes (README, "Erasure").

* The deletion matrix: after DeleteIdentity and DeleteFaces, a fresh build from the same photo
  tree, ``add`` (with the erased person's photos), ``remove``, ``compact``, a rollback to every kept
  version, rolling forward and a restart: the erased subject is never matched by Identify, Verify or
  StreamIdentify, and GetIdentity, ListIdentities and Identify agree. Rolling back past the
  compaction (and the fresh build) keeps the live enrollment and the live deletions.
* The erasure audit: after the documented procedure (compact, ``prune --keep 1``, the server's
  journal retention), ``erase-status`` says complete and a byte scan of every file under the root
  finds neither the subjects' ids and names nor their embeddings' bytes.
* Integrity: a published version whose file differs from its manifest is refused at load (logged,
  counted) and the old one keeps serving; a sound version published after it is served.
* The matrix again with two replicas sharing a PostgreSQL store (issue 14; its differences are in
  that test's docstring): deletions on either replica, the same rebuild, add, remove, compact,
  rollbacks, restarts (one by SIGKILL) and prune; the store's ledger and audit log record each erasure.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import numpy as np
import psycopg
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import NotFoundError, PreconditionError
from facesearch.store.erasure_audit import erase_status
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import INDEX_FILE, STORE_FILE, current_version, list_versions, read_manifest
from facesearch.store.live_journal import LiveJournal
from facesearch.store.postgres import PgStore, migrate
from facesearch.util.fs import switch_pointer
from indexer.main import main as index_main
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import (
    ServerProcess,
    build_index,
    start_replica,
    start_server,
    synthetic_embeddings,
    wait_until,
)
from tests.pg_fixtures import *  # noqa: F403

pytestmark = pytest.mark.slow

ENV = {"FACESEARCH_MIN_SIMILARITY": "0.91"}


def _tree(folder: Path, photos: dict[str, list[Path]]) -> Path:
    for name, paths in photos.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy(p, folder / name / p.name)
    return folder


def _index(*args: object) -> None:
    code = index_main([str(a) for a in args])
    assert code == 0, f"facesearch-index {args}: exit {code}"


class Matrix:
    """The roles: X erased whole, Y one face erased, Z removed by ``facesearch-index remove``, H enrolled
    live, W added by ``facesearch-index add``; O1, O2 untouched."""

    def __init__(self, people: dict[str, list[Path]]) -> None:
        names = list(people)
        self.people = people
        self.x, self.y, self.o1, self.o2, self.z, self.h, self.w, self.live = names[:8]
        self.gone = {self.x}
        self.y_erased_photo = people[self.y][0].name
        self.y_erased_face = ""
        self.y_faces = 0  # Y's faces left after the erasure of one

    def probe(self, name: str) -> Path:
        return self.people[name][4]  # in no tree and enrolled nowhere

    def check(self, c: FaceSearchClient, expected: set[str], step: str) -> None:
        listed = {i.identity_id for i in c.list_identities(page_size=2)}
        assert listed == expected, f"{step}: listed {sorted(listed)}"
        for identity in expected:
            assert c.get_identity(identity).face_count > 0, (step, identity)
        for gone in self.gone:
            with pytest.raises(NotFoundError):
                c.get_identity(gone)
            with pytest.raises(NotFoundError):
                c.verify(self.probe(gone), identity_id=gone)
            found = {x.identity_id for f in c.identify(self.probe(gone), top_k=10).faces for x in f.candidates}
            assert not found & self.gone and found <= listed, (step, gone, found)
        probes = [(name, self.probe(name)) for name in (*sorted(self.gone), self.h)]
        for item in c.identify_stream(probes, top_k=10, largest_only=True):
            assert item.result is not None, (step, item.error)
            found = {x.identity_id for f in item.result.faces for x in f.candidates}
            assert not found & self.gone and found <= listed, (step, item.tag, found)
            if item.tag == self.h:
                match = item.result.faces[0].match
                assert match is not None and match.identity_id == self.h, step
        y = c.get_identity(self.y, include_faces=True)
        assert y.face_count == self.y_faces == len(y.faces), step
        assert all(Path(f.source).name != self.y_erased_photo for f in y.faces), step
        assert self.y_erased_face not in {f.face_id for f in y.faces}, step
        face = c.identify(self.people[self.y][0], largest_only=True, top_k=10).faces[0]  # the erased photo itself
        assert all(x.face_id != self.y_erased_face for x in face.candidates), step


def _swap(c: FaceSearchClient, version: str) -> None:
    wait_until(lambda: c.stats()["index_version"] == version, timeout=120, what=f"the server serving {version}")


def test_deletion_matrix_rollback_and_erasure_audit(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    m = Matrix(people)
    root = tmp_path / "index"
    tree = _tree(tmp_path / "tree", {n: people[n][:3] for n in (m.x, m.y, m.o1, m.o2, m.z)})
    job = ["--quiet", "--keep-versions", "20", "--embed-options", "min_face=80", "--workers", "1"]
    _index("build", "--bundle", server_bundle, "--images", tree, "--out", root, *job)
    v1 = str(current_version(root))
    with IdentityStore.open(root / v1 / STORE_FILE) as store:  # what the audit must not find at the end
        secrets = {
            who: store.embeddings_by_ids([f.vector_id for f in store.faces_of_identities([who])]) for who in (m.x, m.z)
        }
        y_faces = store.faces_of_identities([m.y])
        y0 = [f.vector_id for f in y_faces if Path(str(f.source)).name == m.y_erased_photo]
        secrets["y0"] = store.embeddings_by_ids(y0)
        m.y_faces = len(y_faces) - 1
    srv = start_server(server_bundle, root, tmp_path / "logs", env=ENV)
    servers = [srv]
    try:
        with srv.client(timeout=120) as c:
            h_faces = len(c.enroll(m.h, people[m.h][:3], name="H", use_largest_face=True).face_ids)
            live = c.enroll(m.live, people[m.live][:2], name=m.live.replace("_", " "), use_largest_face=True)
            snap = LiveJournal.open_reader(root / "live").snapshot()
            rows = [i for i, f in enumerate(snap.faces) if f.identity_id == m.live]
            secrets["live"] = snap.embeddings[rows]
            assert len(rows) == len(live.face_ids) > 0
            assert c.delete_identity(m.live) == len(rows)
            assert c.delete_identity(m.x) == len(secrets[m.x]) > 0
            y = c.get_identity(m.y, include_faces=True)
            m.y_erased_face = next(f.face_id for f in y.faces if Path(f.source).name == m.y_erased_photo)
            assert c.delete_faces([m.y_erased_face]) == 1
            expected = {m.y, m.o1, m.o2, m.z, m.h}
            m.check(c, expected, "live deletions")
            with pytest.raises(PreconditionError) as refused:  # an erased identity is not enrolled again
                c.enroll(m.x, people[m.x][3:4], use_largest_face=True)
            assert refused.value.reason == "IDENTITY_ERASED"

            _index("build", "--bundle", server_bundle, "--images", tree, "--out", root, *job)  # same tree
            v2 = str(current_version(root))
            built = read_manifest(root).build
            assert built["erased_rows"] == len(secrets[m.x]) + 1, built  # X's faces and Y's erased one
            assert built["journal_tail_faces"] == h_faces, built  # the live enrollment is kept
            _swap(c, v2)
            m.check(c, expected, "fresh build")

            more = _tree(tmp_path / "more", {m.x: people[m.x][3:4], m.w: people[m.w][:3]})
            _index("add", root, "--bundle", server_bundle, "--images", more, *job)
            v3 = str(current_version(root))
            assert read_manifest(root).build["erased_rows"] == 1
            _swap(c, v3)
            expected.add(m.w)
            m.check(c, expected, "add")

            _index("remove", root, "--identity", m.z, "--quiet", "--keep-versions", "20")
            v4 = str(current_version(root))
            m.gone.add(m.z)
            expected.discard(m.z)
            _swap(c, v4)
            m.check(c, expected, "remove")

            h_faces += len(c.enroll(m.h, people[m.h][3:4], use_largest_face=True, append=True).face_ids)
            _index("compact", root, "--quiet", "--keep-versions", "20")
            v5 = str(current_version(root))
            _swap(c, v5)
            m.check(c, expected, "compact")
            assert c.stats()["live_faces"] == 0

            for version in (v1, v2, v3, v4):  # every kept version, back past the compaction and the builds
                _index("rollback", root, "--to", version)
                _swap(c, version)
                m.check(c, expected - ({m.w} if version in (v1, v2) else set()), f"rollback to {version}")
                assert c.get_identity(m.h).face_count == h_faces, version  # the live enrollments survive
            _index("rollback", root, "--to", v5)
            _swap(c, v5)
            m.check(c, expected, "roll forward")
        assert srv.stop() == 0
        srv = start_server(server_bundle, root, tmp_path / "logs", env=ENV)
        servers.append(srv)
        with srv.client(timeout=120) as c:
            m.check(c, expected, "restart")

            # the audit: before the procedure the scan finds what it looks for, after it nothing
            assert not erase_status(root, identity_id=m.x).complete
            assert _found(root, m.x.encode()) and _found(root, secrets[m.x][0].tobytes())
            _index("prune", root, "--keep", "1")
            assert list_versions(root) == [v5]
            for who in (m.x, m.z, m.live):
                wait_until(
                    lambda who=who: erase_status(root, identity_id=who).complete,
                    timeout=60,
                    what=f"the erasure of {who} complete",
                )
            m.check(c, expected, "after the procedure")
        assert srv.stop() == 0
    finally:
        for server in servers:
            server.stop()
    for who in (m.x, m.z, m.live):
        assert erase_status(root, identity_id=who, also=[who.replace("_", " ")]).complete
        for needle in (who.encode(), who.replace("_", " ").encode()):
            assert not _found(root, needle), (who, _found(root, needle))
    assert not _found(root, m.y_erased_photo.encode())
    for who, vectors in secrets.items():
        for row in vectors:
            assert not _found(root, row.tobytes()), f"an embedding of {who} is still under {root}"
    assert index_main(["erase-status", str(root)]) == 0


def _found(root: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(server_bundle: Path, tmp_path: Path) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root, other = tmp_path / "index", tmp_path / "other"
    emb, ids = synthetic_embeddings(300, seed=5)
    build_index(root, emb, ids, contract, work=tmp_path / "work")
    emb2, ids2 = synthetic_embeddings(200, seed=6)
    good = build_index(other, emb2, ids2, contract, work=tmp_path / "work")
    corrupt = root / "v000002"
    shutil.copytree(good, corrupt)
    raw = bytearray((corrupt / INDEX_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one vector
    (corrupt / INDEX_FILE).write_bytes(bytes(raw))
    srv = start_server(server_bundle, root, tmp_path / "logs", env=ENV)
    try:
        with srv.client() as c:
            assert c.stats()["index_ntotal"] == 300
            switch_pointer(root / "CURRENT", corrupt.name)
            wait_until(lambda: "sha256 differs" in srv.log(), timeout=60, what="the corrupt version refused")
            assert c.stats()["index_ntotal"] == 300 and c.health() == "SERVING"
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read().decode()
            assert 'facesearch_index_swaps_total{result="failed"} 1.0' in metrics
            shutil.copytree(good, root / "v000003")
            switch_pointer(root / "CURRENT", "v000003")
            wait_until(lambda: c.stats()["index_ntotal"] == 200, timeout=60, what="the sound version served")
    finally:
        assert srv.stop() == 0
    # at startup a corrupt CURRENT is refused too: NOT_SERVING, and the calls say why
    switch_pointer(root / "CURRENT", corrupt.name)
    srv = start_server(server_bundle, root, tmp_path / "logs", env=ENV)
    try:
        with srv.client() as c:
            assert c.health() == "NOT_SERVING"
            with pytest.raises(PreconditionError) as refused:
                c.stats()
            assert refused.value.reason == "INDEX_INVALID"
    finally:
        srv.stop()
    assert np.isfinite(emb).all()


# -- the same matrix with replicas sharing a PostgreSQL store (issue 14) ---------------------------------
def _replica(bundle: Path, root: Path, logs: Path, dsn: str, name: str) -> ServerProcess:
    return start_replica(bundle, root, logs, dsn, name, env=ENV)


def test_deletion_matrix_with_postgresql_replicas(
    server_bundle: Path,
    tmp_path: Path,
    people: dict[str, list[Path]],
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The matrix above with two replicas sharing a PostgreSQL store: a deletion on either, then a fresh
    build from the same photos, ``add`` (with the erased person's photos), ``remove``, ``compact``, a
    rollback to every kept version, rolling forward, a restart of one replica and a SIGKILL and restart
    of the other, ``prune --keep 1``: neither replica ever serves the erased subject, and the store's
    audit log records each deletion. Differences from SQLite, by design: every write (``add``'s
    included) lives in the store's log, so a rollback to a version older than ``add`` still serves W
    (the store's tail after that version's ``live_seq`` is replayed); the erasure ledger and the audit
    log are the store's (checked through :class:`PgStore`), not files under the root."""
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    monkeypatch.setenv("FACESEARCH_STORE", pg_dsn)  # every facesearch-index command below uses the store
    m = Matrix(people)
    root, logs = tmp_path / "index", tmp_path / "logs"
    tree = _tree(tmp_path / "tree", {n: people[n][:3] for n in (m.x, m.y, m.o1, m.o2, m.z)})
    job = ["--quiet", "--keep-versions", "20", "--embed-options", "min_face=80", "--workers", "1"]
    _index("build", "--bundle", server_bundle, "--images", tree, "--out", root, *job)
    v1 = str(current_version(root))
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    with IdentityStore.open(root / v1 / STORE_FILE) as vstore:  # what no file under the root may hold at the end
        secrets = {
            who: vstore.embeddings_by_ids([f.vector_id for f in vstore.faces_of_identities([who])])
            for who in (m.x, m.z)
        }
        y0 = [f.vector_id for f in vstore.faces_of_identities([m.y]) if Path(str(f.source)).name == m.y_erased_photo]
        secrets["y0"] = vstore.embeddings_by_ids(y0)
    servers = [_replica(server_bundle, root, logs, pg_dsn, "r1"), _replica(server_bundle, root, logs, pg_dsn, "r2")]
    try:
        with servers[0].client(timeout=120) as c1, servers[1].client(timeout=120) as c2:
            both = (c1, c2)
            h_faces = len(c1.enroll(m.h, people[m.h][:3], name="H", use_largest_face=True).face_ids)
            live = c2.enroll(m.live, people[m.live][:2], name=m.live.replace("_", " "), use_largest_face=True)
            with PgStore.open(pg_dsn, contract_id=contract, d=128) as store:
                snap = store.snapshot()
            secrets["live"] = snap.embeddings[[i for i, f in enumerate(snap.faces) if f.identity_id == m.live]]
            assert len(secrets["live"]) == len(live.face_ids)
            assert c1.delete_identity(m.live) == len(live.face_ids) > 0  # enrolled on r2, deleted on r1
            x_faces = c2.delete_identity(m.x)
            assert x_faces > 0
            y = c1.get_identity(m.y, include_faces=True)
            m.y_faces = y.face_count - 1
            m.y_erased_face = next(f.face_id for f in y.faces if Path(f.source).name == m.y_erased_photo)
            assert c2.delete_faces([m.y_erased_face]) == 1
            expected = {m.y, m.o1, m.o2, m.z, m.h}
            for c in both:
                m.check(c, expected, "live deletions")
                with pytest.raises(PreconditionError) as refused:  # an erased identity is not enrolled again
                    c.enroll(m.x, people[m.x][3:4], use_largest_face=True)
                assert refused.value.reason == "IDENTITY_ERASED"

            _index("build", "--bundle", server_bundle, "--images", tree, "--out", root, *job)  # same tree
            v2 = str(current_version(root))
            for c in both:
                _swap(c, v2)
                m.check(c, expected, "fresh build")

            more = _tree(tmp_path / "more", {m.x: people[m.x][3:4], m.w: people[m.w][:3]})
            _index("add", root, "--bundle", server_bundle, "--images", more, *job)
            v3 = str(current_version(root))
            expected.add(m.w)
            for c in both:
                _swap(c, v3)
                m.check(c, expected, "add")

            _index("remove", root, "--identity", m.z, "--quiet", "--keep-versions", "20")
            v4 = str(current_version(root))
            m.gone.add(m.z)
            expected.discard(m.z)
            for c in both:
                _swap(c, v4)
                m.check(c, expected, "remove")

            h_faces += len(c2.enroll(m.h, people[m.h][3:4], use_largest_face=True, append=True).face_ids)
            _index("compact", root, "--quiet", "--keep-versions", "20")
            v5 = str(current_version(root))
            for c in both:
                _swap(c, v5)
                m.check(c, expected, "compact")

            for version in (v1, v2, v3, v4):  # every kept version: the store's log after it is replayed
                _index("rollback", root, "--to", version)
                for c in both:
                    _swap(c, version)
                    m.check(c, expected, f"rollback to {version}")
                    assert c.get_identity(m.h).face_count == h_faces, version
            _index("rollback", root, "--to", v5)
            for c in both:
                _swap(c, v5)
                m.check(c, expected, "roll forward")
        assert servers[0].stop() == 0  # r1 restarted cleanly, r2 killed (SIGKILL) and restarted
        servers[1].kill()
        servers += [
            _replica(server_bundle, root, logs, pg_dsn, "r1"),
            _replica(server_bundle, root, logs, pg_dsn, "r2"),
        ]
        _index("prune", root, "--keep", "1")
        assert list_versions(root) == [v5]
        for srv in servers[2:]:
            with srv.client(timeout=120) as c:
                m.check(c, expected, "restart, prune")
        for srv in servers[2:]:  # the replicas' caches (checkpoints) are rewritten without the erased
            assert srv.stop() == 0
    finally:
        for server in servers:
            server.stop()
    for who, vectors in secrets.items():  # no file under the root holds an erased face's embedding
        for row in vectors:
            assert not _found(root, row.tobytes()), f"an embedding of {who} is still under {root}"
    for who in (m.x, m.z, m.live):
        assert not _found(root, who.encode()), (who, _found(root, who.encode()))
    with PgStore.open(pg_dsn, contract_id=contract, d=128) as store:
        erased = store.erased()
        for who in (m.x, m.z, m.live):
            assert erased.identity_erased(who), who
            assert store.identity(who) is None or store.identity(who).deleted, who  # type: ignore[union-attr]
            assert store.face_count(who) == 0, who
            entries = store.audit_entries(identity_id=who)  # by id, or by digest once pseudonymised
            assert "delete_identity" in [e.action for e in entries], (who, entries)
            assert all(e.identity_id != who for e in entries), (who, entries)  # prune kept only the digest
        assert "delete_faces" in [e.action for e in store.audit_entries(identity_id=m.y)]
        assert store.face_count(m.y) == m.y_faces  # Y's erased face is not among the store's rows
        held = {Path(str(f.source)).name for f in store.snapshot().faces if f.identity_id == m.y}
        assert m.y_erased_photo not in held, held
