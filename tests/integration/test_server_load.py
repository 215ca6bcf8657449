"""Overload: a bounded queue answers RESOURCE_EXHAUSTED (QUEUE_FULL) at once instead of growing,
and the server serves normally afterwards."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from facesearch.errors import ResourceExhaustedError
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import start_server

pytestmark = pytest.mark.slow


def test_queue_full_is_resource_exhausted(server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]) -> None:
    srv = start_server(
        server_bundle,
        tmp_path / "index",
        tmp_path / "logs",
        env={"FACESEARCH_WORKERS": "1", "FACESEARCH_QUEUE_SIZE": "1", "FACESEARCH_MIN_FACE": "40"},
    )
    photo = next(iter(people.values()))[0].read_bytes()
    clients = [srv.client() for _ in range(12)]
    for c in clients:
        c.stats()  # connect first, so that the burst arrives together
    barrier = threading.Barrier(len(clients))
    outcomes: list[str] = []
    lock = threading.Lock()

    def burst(c) -> None:
        barrier.wait()
        try:
            c.identify(photo)
            result = "ok"
        except ResourceExhaustedError as err:
            result = err.reason
        with lock:
            outcomes.append(result)

    try:
        threads = [threading.Thread(target=burst, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert "QUEUE_FULL" in outcomes, outcomes  # refused, not queued without bound
        assert outcomes.count("ok") >= 2  # one running + one queued were served
        assert set(outcomes) <= {"ok", "QUEUE_FULL"}
        assert clients[0].identify(photo).faces  # and it recovers
        assert clients[0].stats()["queue_depth"] == 0
    finally:
        for c in clients:
            c.close()
        assert srv.stop() == 0
