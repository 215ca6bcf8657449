"""Hot swap under load with zero failed requests, and indices of another model refused
(at startup: health NOT_SERVING and FAILED_PRECONDITION; later: the old version keeps serving)."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import FaceSearchError, PreconditionError
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import build_index, start_server, synthetic_embeddings, wait_until

pytestmark = pytest.mark.slow

OTHER_CONTRACT = "some-other-model:0123456789abcdef"


def test_hot_swap_under_load_fails_no_request(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root = tmp_path / "index"
    emb, ids = synthetic_embeddings(600, seed=1)
    build_index(root, emb, ids, contract, work=tmp_path / "work")
    srv = start_server(server_bundle, root, tmp_path / "logs", env={"FACESEARCH_MIN_SIMILARITY": "0.91"})
    name = next(iter(people))
    try:
        with srv.client() as c:
            live_faces = len(c.enroll(name, people[name][:3], use_largest_face=True).face_ids)
        failures: list[BaseException] = []
        answers: list[str | None] = []
        versions: set[str] = set()
        stop = threading.Event()

        def load() -> None:
            with srv.client(timeout=30) as c:
                i = 0
                while not stop.is_set():
                    try:
                        r = c.identify(people[name][3 + i % 3], largest_only=True)
                        answers.append(r.faces[0].match.identity_id if r.faces[0].match else None)
                        versions.add(r.index_version)
                    except BaseException as err:  # any failure fails the test
                        failures.append(err)
                    i += 1

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        published = []
        for seed in (2, 3):
            emb, ids = synthetic_embeddings(600 + 100 * seed, seed=seed)
            published.append(build_index(root, emb, ids, contract, work=tmp_path / "work").name)
            with srv.client() as c:
                wait_until(
                    lambda: c.stats()["index_version"] == published[-1], timeout=60, what=f"swap to {published[-1]}"
                )
        after_swaps = len(answers)
        wait_until(
            lambda: len(answers) > after_swaps + 30 and published[-1] in versions,
            timeout=120,
            what="requests served after the swaps",
        )
        stop.set()
        for t in threads:
            t.join(60)
        assert not failures, failures[:3]
        assert answers and all(a == name for a in answers)  # the live enrollment survives each swap
        assert set(published) <= versions  # requests were served by the new versions
        with srv.client() as c:  # a fresh build absorbs the live enrollment (README: rollback and rebuild)
            stats = c.stats()
            assert stats["index_ntotal"] == 600 + 100 * 3 + live_faces and stats["live_faces"] == 0
    finally:
        assert srv.stop() == 0


def test_wrong_model_index_refused_at_startup_then_good_one_served(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root = tmp_path / "index"
    emb, ids = synthetic_embeddings(300, seed=4)
    build_index(root, emb, ids, OTHER_CONTRACT, work=tmp_path / "work")
    srv = start_server(server_bundle, root, tmp_path / "logs")
    try:
        with srv.client() as c:
            assert c.health() == "NOT_SERVING"
            photo = next(iter(people.values()))[0]
            for call in (lambda: c.identify(photo), c.stats, lambda: c.enroll("x", [photo])):
                with pytest.raises(PreconditionError) as err:
                    call()
                assert err.value.reason == "CONTRACT_MISMATCH"
                assert OTHER_CONTRACT in err.value.message
            assert c.detect(photo)  # detection needs no index
            good = build_index(root, emb, ids, contract, work=tmp_path / "work").name
            wait_until(lambda: c.health() == "SERVING", timeout=60, what="the matching version")
            assert c.stats()["index_version"] == good
            assert c.identify(photo).faces
        assert "refused" in srv.log()
    finally:
        assert srv.stop() == 0


def test_wrong_model_version_published_later_is_refused(server_bundle: Path, tmp_path: Path) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root = tmp_path / "index"
    emb, ids = synthetic_embeddings(300, seed=5)
    good = build_index(root, emb, ids, contract, work=tmp_path / "work").name
    srv = start_server(server_bundle, root, tmp_path / "logs")
    try:
        build_index(root, emb, ids, OTHER_CONTRACT, work=tmp_path / "work")
        metrics = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        wait_until(
            lambda: (
                'facesearch_index_swaps_total{result="refused"} 1.0'
                in urllib.request.urlopen(metrics, timeout=5).read().decode()
            ),
            timeout=30,
            what="refusal",
        )
        with srv.client() as c:
            assert c.health() == "SERVING"
            assert c.stats()["index_version"] == good  # the old version keeps serving
    except FaceSearchError:
        raise
    finally:
        assert srv.stop() == 0
