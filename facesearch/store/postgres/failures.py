"""PostgreSQL failures as facesearch errors: a store that cannot be reached is UNAVAILABLE with a reason.

=====================================================================  ==============================
connection refused or lost, server shutting down or restarting,       ``UnavailableError``
no pooled connection within the pool's timeout (``PoolTimeout``),      ``Reason.STORE_UNAVAILABLE``
a serialization failure or deadlock that retries did not clear         (nothing was written)
the connection lost *during* ``COMMIT`` (:func:`commit`)              ``UnavailableError``
                                                                       ``Reason.STORE_OUTCOME_UNKNOWN``
=====================================================================  ==============================

The ambiguous case is named apart because a retry of it is safe only as an idempotent retry: the
write may have been committed (an Enroll retried with the same ``request_id`` returns the first
result; a deletion retried after it was made gets NOT_FOUND, and what it erased stays erased).
Anything else (a constraint violation, a bug in a query) keeps its own exception: it is not a
condition a retry fixes.

Failpoints (:mod:`facesearch.util.failpoints`, the ``pg.*`` and ``replica.*`` sites): :func:`inject`
turns an injected ``eio`` into the error a broken connection raises there, so the code above maps it
exactly as it maps the real one. :func:`commit` holds ``pg.commit`` (``eio``: the connection closed just
before ``COMMIT``: nothing made, outcome unknown to the caller) and ``pg.committed`` (``eio``: the reply
to a ``COMMIT`` that was made is lost).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg

from facesearch.errors import Reason, UnavailableError
from facesearch.util import failpoints

__all__ = ["commit", "inject", "is_transient", "store_errors", "unavailable"]

#: SQLSTATE classes and codes that mean "the server is not there now": connection exceptions (08),
#: operator intervention (57: admin shutdown, crash shutdown, cannot connect now), insufficient
#: resources (53: too many connections), and transaction rollbacks a retry clears (40001, 40P01).
_TRANSIENT_CLASSES = ("08", "57", "53")
_RETRYABLE = ("40001", "40P01")


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` says the store is unreachable or busy now (a retry later may succeed)."""
    if isinstance(err, psycopg_pool.PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError):
        return True
    state = getattr(err, "sqlstate", None) or ""
    return isinstance(err, psycopg.Error) and (state[:2] in _TRANSIENT_CLASSES or state in _RETRYABLE)


def unavailable(err: BaseException, what: str) -> UnavailableError:
    return UnavailableError(
        f"{what}: the PostgreSQL store is unavailable ({type(err).__name__}: {_first_line(err)}); nothing was "
        "written: retry later",
        reason=Reason.STORE_UNAVAILABLE,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no detail"


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Re-raise the body's transient PostgreSQL failures as UNAVAILABLE ``STORE_UNAVAILABLE``."""
    try:
        yield
    except UnavailableError:
        raise
    except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
        if is_transient(err):
            raise unavailable(err, what) from err
        raise


def inject(site: str, conn: Any = None) -> None:
    """:func:`facesearch.util.failpoints.hit` at a PostgreSQL site: ``kill``/``slow`` as anywhere; an
    errno action (``eio``...) raises ``psycopg.OperationalError`` as a connection broken there would,
    after closing ``conn`` when one is given (what a broken connection leaves)."""
    try:
        failpoints.hit(site)
    except OSError as err:
        if conn is not None:
            conn.close()
        raise psycopg.OperationalError(
            f"server closed the connection unexpectedly ({err.strerror}, failpoint {site})"
        ) from err


def commit(conn: Any, what: str) -> None:
    """``COMMIT``; a connection lost meanwhile is ``STORE_OUTCOME_UNKNOWN`` (it may have committed).

    A commit the server *refused* (a deferred constraint, a serialization failure) is known not to
    have happened: that stays ``STORE_UNAVAILABLE`` (transient) or the error itself.
    """
    try:
        inject("pg.commit", conn)  # an injected break: conn closed, the COMMIT lost with it (not made)
        conn.commit()
        inject("pg.committed")
    except (psycopg.OperationalError, psycopg.InterfaceError) as err:
        if isinstance(err, pg.SerializationFailure | pg.DeadlockDetected):
            raise unavailable(err, what) from err
        raise UnavailableError(
            f"{what}: the connection to the PostgreSQL store broke during the commit ({_first_line(err)}): the "
            "change may or may not have been made; retry (an Enroll with the same request_id returns the first "
            "result)",
            reason=Reason.STORE_OUTCOME_UNKNOWN,
        ) from err
