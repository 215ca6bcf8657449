"""FACESEARCH_STORE is read in one place (facesearch.store.store_location): SQLite by default, a
postgresql:// URL for the shared store, anything else refused naming the variable; passwords never
appear in messages; the SQLite path never imports the PostgreSQL driver."""

from __future__ import annotations

import subprocess
import sys

import pytest

from facesearch.errors import InvalidInputError, Reason
from facesearch.store.store_location import STORE_ENV, StoreKind, parse_store, redact, store_location


@pytest.mark.parametrize("value", [None, "", "  ", "sqlite"])
def test_unset_or_sqlite_is_the_embedded_store(value: str | None) -> None:
    env = {} if value is None else {STORE_ENV: value}
    location = store_location(env)
    assert location.kind is StoreKind.SQLITE and location.url is None and not location.shared


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://fs:secret@db.internal:5432/facesearch",
        "postgres://fs@127.0.0.1/facesearch",
        "postgresql:///facesearch",  # a local socket
    ],
)
def test_a_postgresql_url_selects_the_shared_store(url: str) -> None:
    location = store_location({STORE_ENV: url})
    assert location.kind is StoreKind.POSTGRESQL and location.url == url and location.shared
    assert "secret" not in str(location)


@pytest.mark.parametrize("value", ["mysql://x/db", "postgresql://", "/var/lib/facesearch", "sqlite3"])
def test_anything_else_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(InvalidInputError, match=STORE_ENV) as err:
        store_location({STORE_ENV: value})
    assert err.value.reason is Reason.BAD_CONFIG
    with pytest.raises(InvalidInputError, match="--store"):
        parse_store(value, "--store")


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://fs:s3cret@h:5432/db?sslmode=require") == "postgresql://fs:***@h:5432/db?sslmode=require"
    assert redact("postgresql://fs@h/db") == "postgresql://fs@h/db"
    assert "p@ss" not in redact("postgresql://fs:p@ss@h/db")


def test_the_sqlite_path_does_not_import_the_driver() -> None:
    code = (
        "import sys, facesearch.store, facesearch.store.store_location, indexer.main, server.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
