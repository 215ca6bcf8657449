"""The deletion matrix's "model change and rebuild" row, against real server processes.

A version is built from a photo tree with the default bundle; a server of that model erases X
(DeleteIdentity) and one photo's face of Y (DeleteFaces). Then the model changes: the index is rebuilt
from the same tree with another bundle (a fine-tuned export with perturbed weights: a new contract, new
embeddings of the same photos, new vector ids), and a server of the new model serves it. The erased
subject is never back: not fetched, listed, verified or matched (by Identify or StreamIdentify; its
own photos would score ~1.0), Y's erased photo has no face, an Enroll of X is still refused, and all
of that survives a restart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import NotFoundError, PreconditionError
from facesearch.store.index_artifact import current_version, read_manifest
from indexer.main import main as index_main
from tests.integration.checkpoint_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import start_server, wait_until

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
