"""A promoted model on an index of the old one: the server refuses the old index (NOT_SERVING, the
reason naming both contract ids) until a version built with the new bundle is published, then serves it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import PreconditionError
from tests.integration.checkpoint_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import build_index, start_server, synthetic_embeddings, wait_until

pytestmark = pytest.mark.slow


def test_new_model_refuses_old_index_until_a_new_one_is_published(
    server_bundle: Path, ft_bundle: Path, people: dict[str, list[Path]], tmp_path: Path
) -> None:
    old, new = ModelBundle.load(server_bundle).contract_id, ModelBundle.load(ft_bundle).contract_id
    assert old != new
    root = tmp_path / "index"
    emb, ids = synthetic_embeddings(300, seed=7)
    old_version = build_index(root, emb, ids, old, work=tmp_path / "work").name
    srv = start_server(ft_bundle, root, tmp_path / "logs")
    try:
        with srv.client() as c:
            assert c.health() == "NOT_SERVING"
            photo = next(iter(people.values()))[0]
            with pytest.raises(PreconditionError) as err:
                c.identify(photo)
            assert err.value.reason == "CONTRACT_MISMATCH"
            assert old in err.value.message and new in err.value.message and old_version in err.value.message
            assert c.detect(photo)  # the new model's pipeline works meanwhile
            rebuilt = build_index(root, emb, ids, new, work=tmp_path / "work").name  # the reindex, published
            wait_until(lambda: c.health() == "SERVING", timeout=60, what="the index of the new model")
            stats = c.stats()
            assert stats["index_version"] == rebuilt and stats["contract_id"] == new
            assert c.identify(photo).faces
    finally:
        assert srv.stop() == 0


def test_live_faces_of_the_old_model_are_kept_apart(
    server_bundle: Path, ft_bundle: Path, people: dict[str, list[Path]], tmp_path: Path
) -> None:
    """Live enrollments hold old-model embeddings: a new model starts its own journal, never mixes them
    in, and leaves them where they were, so going back to the old bundle serves them again."""
    from facesearch.store.live_journal import CONTRACTS_DIR, LiveJournal, journal_place

    old, new = ModelBundle.load(server_bundle).contract_id, ModelBundle.load(ft_bundle).contract_id
    root = tmp_path / "index"
    emb, ids = synthetic_embeddings(300, seed=7)
    build_index(root, emb, ids, old, work=tmp_path / "work")
    photos = next(iter(people.values()))
    srv = start_server(server_bundle, root, tmp_path / "logs-old")
    try:
        with srv.client() as c:
            wait_until(lambda: c.health() == "SERVING", timeout=60, what="the old model's server")
            assert c.enroll("live-old", photos[:1]).face_ids
            assert c.stats()["live_faces"] == 1
    finally:
        assert srv.stop() == 0

    srv = start_server(ft_bundle, root, tmp_path / "logs-new")
    try:
        with srv.client() as c:
            assert c.health() == "NOT_SERVING"  # the published index is the old model's
            build_index(root, emb, ids, new, work=tmp_path / "work2")
            wait_until(lambda: c.health() == "SERVING", timeout=60, what="the index of the new model")
            assert c.stats()["live_faces"] == 0  # the old model's live face is not searched with the new one
            assert c.enroll("live-new", photos[1:2] or photos[:1]).face_ids
        assert "1 live faces of model contract " + old in srv.log()
    finally:
        assert srv.stop() == 0
    place = journal_place(root / "live", new)
    assert place.directory == root / "live" / CONTRACTS_DIR / new.replace(":", "-")
    assert [(d, c, n) for d, c, n in place.others] == [(root / "live", old, 1)]
    old_journal = LiveJournal.open(root / "live", contract_id=old, d=128)
    try:
        assert [f.identity_id for f in old_journal.snapshot(after_seq=0).faces] == ["live-old"]
    finally:
        old_journal.close()
    assert journal_place(root / "live", old).directory == root / "live"


def test_an_uncalibrated_fine_tuned_model_is_not_served_on_dlib_defaults(ft_bundle: Path, tmp_path: Path) -> None:
    """dlib's 0.82 tolerance says nothing about another model's scores: no calibration, no start
    (unless the operator names a threshold)."""
    bare = tmp_path / "bare"
    shutil.copytree(ft_bundle, bare)
    for name in ("calibration.json", "open_set_calibration.json"):
        (bare / name).unlink()
    with pytest.raises(RuntimeError, match="before listening") as err:
        start_server(bare, tmp_path / "index", tmp_path / "logs")
    assert "NO_CALIBRATION" in str(err.value) or "facesearch eval calibrate" in str(err.value)
    srv = start_server(bare, tmp_path / "index", tmp_path / "logs2", env={"FACESEARCH_MIN_SIMILARITY": "0.9"})
    assert srv.stop() == 0
