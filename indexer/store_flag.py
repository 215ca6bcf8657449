"""``--store URL``: which store a ``facesearch-index`` command works on, without importing the driver.

``--store`` wins over ``FACESEARCH_STORE`` (read only through :func:`facesearch.store.store_location.store_location`);
neither, or ``sqlite``: the embedded SQLite store under the index root (None here). Commands import the
PostgreSQL modules only once a URL was given, so the SQLite path never needs psycopg.
"""

from __future__ import annotations

import argparse

from facesearch.errors import InvalidInputError, Reason
from facesearch.store.store_location import StoreKind, parse_store, require_postgres_driver, store_location

__all__ = ["add_store_flag", "refuse_with_store", "resolve_store"]


def add_store_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="URL",
        help="a PostgreSQL store shared by replicas, postgresql://... (default: $FACESEARCH_STORE; unset: SQLite)",
    )


def resolve_store(flag: str | None) -> str | None:
    """The PostgreSQL URL of ``--store`` or ``FACESEARCH_STORE`` (None: the embedded SQLite store)."""
    location = parse_store(flag, "--store") if flag else store_location()
    if location.kind is not StoreKind.POSTGRESQL or location.url is None:
        return None
    require_postgres_driver()
    return location.url


def refuse_with_store(what: str, why: str) -> None:
    """Exit 2 (BAD_ARGS): ``what`` cannot be honoured with a PostgreSQL store, because ``why``."""
    raise InvalidInputError(f"{what} cannot be honoured with a PostgreSQL store: {why}", reason=Reason.BAD_ARGS)
