"""A fresh build published into a root the server is already serving: vector ids continue across the
root's history, so faces deleted live from the old version (tombstones, by vector id) never hide faces
of the new build."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import build_index, start_server, synthetic_embeddings, wait_until

pytestmark = pytest.mark.slow


def test_live_deletions_of_the_old_build_do_not_touch_a_new_build(server_bundle: Path, tmp_path: Path) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root = tmp_path / "index"
    emb1, ids1 = synthetic_embeddings(300, seed=11, prefix="old")
    first = build_index(root, emb1, ids1, contract, work=tmp_path / "work")
    srv = start_server(server_bundle, root, tmp_path / "logs")
    try:
        with srv.client() as c:
            wait_until(lambda: c.health() == "SERVING", timeout=60, what="the first build")
            doomed = sorted(set(ids1))[:5]
            deleted = sum(c.delete_identity(i) for i in doomed)
            assert deleted == sum(ids1.count(i) for i in doomed) > 0
            assert c.stats()["tombstones"] == deleted

            emb2, ids2 = synthetic_embeddings(300, seed=12, prefix="new")
            second = build_index(root, emb2, ids2, contract, work=tmp_path / "work")
            wait_until(lambda: c.stats()["index_version"] == second.name, timeout=60, what="the new build")
            stats = c.stats()
            assert stats["tombstones"] == 0  # the old ids name no face of the new build
            assert stats["faces"] == len(ids2)
            for identity, count in Counter(ids2).most_common(20):
                assert c.get_identity(identity).face_count == count
    finally:
        assert srv.stop() == 0
    with IdentityStore.open(first / STORE_FILE) as old, IdentityStore.open(second / STORE_FILE) as new:
        old_ids, _ = old.vector_identity_keys()
        new_ids, _ = new.vector_identity_keys()
    assert int(new_ids.min()) >= int(old_ids.max()) + 1
    assert np.intersect1d(old_ids, new_ids).size == 0
