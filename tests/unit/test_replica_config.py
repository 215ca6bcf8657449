"""Replica settings in server/config.py (issue 14): FACESEARCH_STORE selects the shared PostgreSQL store
(SQLite stays the default, with the live directory where it was), each replica gets its own cache
directory and a stable id, bad values name their variable, and the logged config hides the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from facesearch.errors import InvalidInputError
from facesearch.store.store_location import StoreKind
from server.config import load_config

BASE = {"FACESEARCH_HOME": "/tmp/fs-home", "FACESEARCH_BUNDLE": "/tmp/fs-bundle", "FACESEARCH_INDEX": "/srv/index"}
URL = "postgresql://fs:s3cret@127.0.0.1:5432/faces"


def test_sqlite_stays_the_default() -> None:
    c = load_config(env=BASE)
    assert c.store.kind is StoreKind.SQLITE
    assert c.live_dir == Path("/srv/index/live")


def test_a_postgres_store_makes_a_replica_with_its_own_directory() -> None:
    c = load_config(env={**BASE, "FACESEARCH_STORE": URL, "FACESEARCH_REPLICA_ID": "r-1"})
    assert c.store.kind is StoreKind.POSTGRESQL and c.store.url == URL
    assert c.replica_id == "r-1"
    assert c.live_dir == Path("/srv/index/replicas/r-1")  # not the shared ROOT/live
    assert (c.store_fence_s, c.store_poll_s) == (10.0, 1.0)
    described = c.describe()
    assert "s3cret" not in str(described) and described["store"] == "postgresql://fs:***@127.0.0.1:5432/faces"
    explicit = load_config(env={**BASE, "FACESEARCH_STORE": URL, "FACESEARCH_LIVE_DIR": "/var/cache/fs"})
    assert explicit.live_dir == Path("/var/cache/fs")


def test_default_replica_ids_differ_by_port() -> None:
    a = load_config(env={**BASE, "FACESEARCH_STORE": URL, "FACESEARCH_LISTEN": "127.0.0.1:50051"})
    b = load_config(env={**BASE, "FACESEARCH_STORE": URL, "FACESEARCH_LISTEN": "127.0.0.1:50052"})
    assert a.replica_id != b.replica_id and a.replica_id.endswith("-50051")
    picked = load_config(env={**BASE, "FACESEARCH_STORE": URL, "FACESEARCH_LISTEN": "127.0.0.1:0"})
    assert not picked.replica_id.endswith("-0")  # port 0 is picked at bind: the process id stands in


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FACESEARCH_STORE": "mysql://x"}, "FACESEARCH_STORE"),
        ({"FACESEARCH_REPLICA_ID": "has space"}, "FACESEARCH_REPLICA_ID"),
        ({"FACESEARCH_STORE_POLL_S": "10", "FACESEARCH_STORE_FENCE_S": "5"}, "FACESEARCH_STORE_POLL_S"),
        ({"FACESEARCH_STORE_POLL_S": "0"}, "FACESEARCH_STORE_POLL_S"),
        ({"FACESEARCH_STORE_FENCE_S": "soon"}, "FACESEARCH_STORE_FENCE_S"),
    ],
)
def test_bad_replica_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        load_config(env={**BASE, **env})
    assert name in err.value.message and err.value.reason == "BAD_CONFIG"
