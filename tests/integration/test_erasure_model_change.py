"""The deletion matrix's "model change and rebuild" row, against real server processes.

A version is built from a photo tree with the default bundle; a server of that model erases X
(DeleteIdentity) and one photo's face of Y (DeleteFaces). Then the model changes: the index is rebuilt
from the same tree with another bundle (a fine-tuned export with perturbed weights: a new contract, new
embeddings of the same photos, new vector ids), and a server of the new model serves it. The erased
subject is never back: not fetched, listed, verified or matched (by Identify or StreamIdentify; its
own photos would score ~1.0), Y's erased photo has no face, an Enroll of X is still refused, and all
of that survives a restart.

With replicas sharing a PostgreSQL store (a second test, not a parametrization: a store holds one model
contract): the new model's rebuild against the store is refused and publishes nothing, a replica of the
new model refuses the store, and the old model's replicas never serve the erased subject.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import NotFoundError, PreconditionError
from facesearch.store.index_artifact import current_version, read_manifest
from facesearch.store.postgres import migrate
from indexer.main import main as index_main
from tests.integration.checkpoint_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import start_server, wait_until
from tests.pg_fixtures import *  # noqa: F403

pytestmark = pytest.mark.slow


def _index(*args: object) -> None:
    code = index_main([str(a) for a in args])
    assert code == 0, f"facesearch-index {args}: exit {code}"


def _check(c: FaceSearchClient, people: dict[str, list[Path]], roles: dict[str, str], y_faces: int, step: str) -> None:
    x, y = roles["x"], roles["y"]
    listed = {i.identity_id for i in c.list_identities(page_size=2)}
    assert listed == {y, roles["o1"], roles["o2"]}, f"{step}: listed {sorted(listed)}"
    with pytest.raises(NotFoundError):
        c.get_identity(x)
    with pytest.raises(NotFoundError):
        c.verify(people[x][4], identity_id=x)
    for photo in people[x][:5]:  # the erased photos and one never indexed
        found = {k.identity_id for f in c.identify(photo, top_k=10).faces for k in f.candidates}
        assert x not in found and found <= listed, (step, photo.name, found)
    for item in c.identify_stream([(p.name, p) for p in people[x][:3]], top_k=10, largest_only=True):
        assert item.result is not None, (step, item.error)
        assert x not in {k.identity_id for f in item.result.faces for k in f.candidates}, (step, item.tag)
    got = c.get_identity(y, include_faces=True)
    assert got.face_count == len(got.faces) == y_faces, step
    assert all(Path(f.source).name != people[y][0].name for f in got.faces), step
    with pytest.raises(PreconditionError) as refused:
        c.enroll(x, people[x][3:4], use_largest_face=True)
    assert refused.value.reason == "IDENTITY_ERASED", step


def test_an_erased_subject_does_not_come_back_after_a_model_change_and_rebuild(
    server_bundle: Path, worse_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    old, new = ModelBundle.load(server_bundle).contract_id, ModelBundle.load(worse_bundle).contract_id
    assert old != new
    names = list(people)
    roles = {"x": names[0], "y": names[1], "o1": names[2], "o2": names[3]}
    tree = tmp_path / "tree"
    for name in roles.values():
        (tree / name).mkdir(parents=True)
        for photo in people[name][:3]:
            shutil.copy(photo, tree / name / photo.name)
    root = tmp_path / "index"
    job = ["--quiet", "--keep-versions", "5", "--embed-options", "min_face=80", "--workers", "1"]
    _index("build", "--bundle", server_bundle, "--images", tree, "--out", root, *job)
    v1 = current_version(root)

    srv = start_server(server_bundle, root, tmp_path / "logs")
    try:
        with srv.client(timeout=120) as c:
            x_faces = c.delete_identity(roles["x"])
            assert x_faces > 0
            y = c.get_identity(roles["y"], include_faces=True)
            erased = next(f.face_id for f in y.faces if Path(f.source).name == people[roles["y"]][0].name)
            assert c.delete_faces([erased]) == 1
            y_faces = y.face_count - 1
        assert srv.stop() == 0
    finally:
        srv.stop()

    _index("build", "--bundle", worse_bundle, "--images", tree, "--out", root, *job)  # the new model's reindex
    v2 = current_version(root)
    manifest = read_manifest(root)
    assert v2 != v1 and manifest.contract_id == new
    assert manifest.build["erased_rows"] == x_faces + 1, manifest.build  # X's photos and Y's erased one

    for step in ("new model", "restart"):
        srv = start_server(worse_bundle, root, tmp_path / "logs")
        try:
            with srv.client(timeout=120) as c:
                wait_until(lambda c=c: c.health() == "SERVING", timeout=60, what="the new model's index")
                assert c.stats()["index_version"] == v2 and c.stats()["contract_id"] == new
                _check(c, people, roles, y_faces, step)
            assert srv.stop() == 0
        finally:
            srv.stop()


def test_with_postgresql_replicas_a_model_change_cannot_bring_back_what_the_store_erased(
    server_bundle: Path,
    worse_bundle: Path,
    tmp_path: Path,
    people: dict[str, list[Path]],
    pg_dsn: str,
) -> None:
    """The row above with replicas sharing a PostgreSQL store. Not a parametrization of it: a store holds
    one model contract (``facesearch.store.postgres``: several contracts in one database are refused),
    so the new model's rebuild cannot write its embeddings into the store whose ledger erased X. What
    must hold instead: that rebuild is refused and publishes nothing, a replica of the new model refuses
    the store (it would not see the ledger), and the old model's replicas, restarted, still never serve
    X or Y's erased face."""
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn)
    with pytest.MonkeyPatch.context() as env:  # every facesearch-index command below uses the store
        env.setenv("FACESEARCH_STORE", pg_dsn)
        _model_change_with_the_store(server_bundle, worse_bundle, tmp_path, people, pg_dsn)


def _model_change_with_the_store(
    server_bundle: Path, worse_bundle: Path, tmp_path: Path, people: dict[str, list[Path]], pg_dsn: str
) -> None:
    names = list(people)
    roles = {"x": names[0], "y": names[1], "o1": names[2], "o2": names[3]}
    tree = tmp_path / "tree"
    for name in roles.values():
        (tree / name).mkdir(parents=True)
        for photo in people[name][:3]:
            shutil.copy(photo, tree / name / photo.name)
    root, logs = tmp_path / "index", tmp_path / "logs"
    job = ["--quiet", "--keep-versions", "5", "--embed-options", "min_face=80", "--workers", "1"]
    _index("build", "--bundle", server_bundle, "--images", tree, "--out", root, *job)
    v1 = current_version(root)
    replica_env = {"FACESEARCH_STORE": pg_dsn, "FACESEARCH_REPLICA_ID": "r1", "FACESEARCH_STORE_FENCE_S": "4"}

    srv = start_server(server_bundle, root, logs, env=replica_env)
    try:
        with srv.client(timeout=120) as c:
            wait_until(lambda c=c: c.health() == "SERVING", timeout=60, what="the replica")
            assert c.delete_identity(roles["x"]) > 0
            y = c.get_identity(roles["y"], include_faces=True)
            erased = next(f.face_id for f in y.faces if Path(f.source).name == people[roles["y"]][0].name)
            assert c.delete_faces([erased]) == 1
            y_faces = y.face_count - 1
        assert srv.stop() == 0
    finally:
        srv.stop()

    code = index_main([str(a) for a in ("build", "--bundle", worse_bundle, "--images", tree, "--out", root, *job)])
    assert code != 0, "a rebuild with another model was written into the store"
    assert current_version(root) == v1  # nothing published
    with pytest.raises(RuntimeError) as refused:  # the new model's replica: the store is another model's
        start_server(worse_bundle, root, logs, env={**replica_env, "FACESEARCH_REPLICA_ID": "r2"})
    assert "contract" in str(refused.value).lower(), str(refused.value)[-2000:]

    srv = start_server(server_bundle, root, logs, env=replica_env)  # the old model's replica, restarted
    try:
        with srv.client(timeout=120) as c:
            wait_until(lambda c=c: c.health() == "SERVING", timeout=60, what="the replica")
            _check(c, people, roles, y_faces, "postgresql, after the refused model change")
        assert srv.stop() == 0
    finally:
        srv.stop()
