"""Where the identity store and change log live: ``FACESEARCH_STORE``, read in this one place.

Unset or empty (or ``sqlite``), the store is the embedded default: SQLite files under the index root
(the identity store of each version, the live journal, the erasure ledger), as before. A
``postgresql://`` (or ``postgres://``) URL selects the PostgreSQL store shared by several servers
(:mod:`facesearch.store.postgres`, which needs the ``postgres`` extra: psycopg 3 and psycopg_pool).
Anything else is refused with ``BAD_CONFIG`` naming the variable.

This module never imports the driver: the SQLite path does not need it installed.
:func:`require_postgres_driver` says clearly when it is missing. :func:`redact` hides a URL's
password wherever a store is named in a message or a log line.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from facesearch.errors import InvalidInputError, PreconditionError, Reason

__all__ = [
    "STORE_ENV",
    "StoreKind",
    "StoreLocation",
    "parse_store",
    "redact",
    "require_postgres_driver",
    "store_location",
]

STORE_ENV = "FACESEARCH_STORE"
_SCHEMES = ("postgresql", "postgres")


class StoreKind(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True, slots=True)
class StoreLocation:
    kind: StoreKind
    url: str | None = None  # the PostgreSQL connection URL (None for SQLite)

    @property
    def shared(self) -> bool:
        return self.kind is StoreKind.POSTGRESQL

    def __str__(self) -> str:
        return redact(self.url) if self.url else "sqlite (files under the index root)"


def parse_store(text: str | None, source: str = STORE_ENV) -> StoreLocation:
    """A store location from a setting's text; ``source`` names the setting in the error."""
    value = (text or "").strip()
    if value in ("", "sqlite"):
        return StoreLocation(StoreKind.SQLITE)
    parts = urlsplit(value)
    if parts.scheme in _SCHEMES and (parts.hostname or parts.path.strip("/")):
        return StoreLocation(StoreKind.POSTGRESQL, value)
    raise InvalidInputError(
        f"{source}={redact(value)!r} is not a store: leave it unset (or 'sqlite') for the embedded SQLite store, or "
        "give a PostgreSQL URL, postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        reason=Reason.BAD_CONFIG,
    )


def store_location(env: Mapping[str, str] | None = None) -> StoreLocation:
    """The store selected by ``FACESEARCH_STORE`` in ``env`` (default: the process environment)."""
    return parse_store((os.environ if env is None else env).get(STORE_ENV), STORE_ENV)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable store URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def require_postgres_driver() -> None:
    """PreconditionError ``STORE_DRIVER_MISSING`` unless psycopg and psycopg_pool are installed."""
    missing = [m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None]
    if missing:
        raise PreconditionError(
            f"a postgresql:// store needs {' and '.join(missing)}: pip install 'facesearch[postgres]'",
            reason=Reason.STORE_DRIVER_MISSING,
        )
