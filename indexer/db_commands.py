"""``facesearch-index db migrate|status``: the schema of a PostgreSQL store shared by several servers.

    facesearch-index db migrate [--store URL]   apply the pending schema migrations (a no-op when current)
    facesearch-index db status [--store URL]    schema version against this code's, store id, model
                                                contract, log position, row counts, and each server
                                                following the log (applied position, heartbeat age):
                                                JSON on stdout

``--store`` defaults to ``FACESEARCH_STORE`` (the variable the servers read); it must be a
``postgresql://`` URL (these commands have nothing to do for the embedded SQLite store). ``migrate``
runs every pending migration in one transaction under an advisory lock, so concurrent runs are safe;
it refuses a database migrated by a newer facesearch. Servers refuse a schema other than the one they
know, so run ``migrate`` before starting servers of a new release.

Exit status: ``migrate`` 0 done (or nothing to do); ``status`` 0 when the schema is current, 1 when
migrations are pending or the schema is newer than this code; 1 when the store cannot be reached
(``STORE_UNAVAILABLE``) or is refused; 2 bad usage (no store, not a PostgreSQL URL, the postgres extra
missing is 1: ``STORE_DRIVER_MISSING``).
"""

from __future__ import annotations

import argparse
import json

from facesearch.errors import ExitCode, InvalidInputError, Reason
from facesearch.store.store_location import STORE_ENV, StoreKind, parse_store, require_postgres_driver, store_location

COMMANDS = ("db",)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="migrate or inspect the schema of a PostgreSQL store")
    actions = db.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("migrate", "apply the pending schema migrations (safe to run concurrently; a no-op when current)"),
        ("status", "schema version against this code's, store id, contract, log position, row counts (JSON)"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument(
            "--store", metavar="URL", help=f"postgresql://USER:PASSWORD@HOST:PORT/DB (default: ${STORE_ENV})"
        )


def _url(args: argparse.Namespace) -> str:
    location = parse_store(args.store, "--store") if args.store else store_location()
    if location.kind is not StoreKind.POSTGRESQL or location.url is None:
        raise InvalidInputError(
            f"facesearch-index db needs a PostgreSQL store: pass --store postgresql://... or set {STORE_ENV}",
            reason=Reason.BAD_ARGS,
        )
    require_postgres_driver()
    return location.url


def dispatch(args: argparse.Namespace) -> int:
    url = _url(args)
    from facesearch.store.postgres.admin import migrate_store, store_status  # noqa: PLC0415 - the driver, only here

    if args.db_command == "migrate":
        report = migrate_store(url)
        print(json.dumps({"before": report.before, "after": report.after, "applied": list(report.applied)}))
        return ExitCode.OK
    status = store_status(url)
    print(json.dumps(status.to_json(), indent=2))
    return ExitCode.OK if status.current else ExitCode.FAILED
