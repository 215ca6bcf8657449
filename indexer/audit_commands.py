"""``facesearch-index audit list|prune ROOT``: the root's audit log (:mod:`facesearch.store.audit_log`).

    facesearch-index audit list ROOT [--identity ID] [--since T] [--limit N] [--json]
                                             who enrolled, deleted, erased or unerased whom, and when
    facesearch-index audit prune ROOT [--older-than-days D]
                                             delete rows past the retention (default 365 days, as
                                             FACESEARCH_AUDIT_RETENTION_DAYS)

``--since`` takes unix seconds or an ISO 8601 time (``2026-12-07``, ``2026-12-07T10:00:00+00:00``;
without a zone: UTC). ``--identity`` also finds the rows of an erased identity (they keep only its
digest). Reading works while the server runs (the log is SQLite in WAL mode). Exit status 0; 2 for a
bad argument; 1 when the root has no audit log.

With a PostgreSQL store (``--store URL`` or ``FACESEARCH_STORE``) both work on the store's audit log
(the replicas'): ``list`` prints the same fields (``enroll``, ``delete_identity``, ``delete_faces``,
``unerase``; an erased identity's rows show ``erased:DIGEST``), ``prune`` deletes rows past the
retention and keeps only the digest in an erased identity's rows (what replicas also do every
``FACESEARCH_STORE_EXPIRE_S``); ROOT is not read.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from facesearch.errors import ExitCode, InvalidInputError, NotFoundError, Reason
from facesearch.store.audit_log import AUDIT_FILE, DEFAULT_RETENTION_DAYS, AuditEntry, AuditLog
from facesearch.store.erasure_ledger import LEDGER_FILE, ErasureLedger
from indexer.store_flag import add_store_flag, resolve_store

COMMANDS = ("audit",)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("audit", help="the audit log: who enrolled, deleted, erased whom, and when")
    actions = a.add_subparsers(dest="audit_command", required=True)
    lst = actions.add_parser("list", help="list audit rows, oldest first")
    lst.add_argument("root", type=Path)
    lst.add_argument("--identity", metavar="ID", help="only this identity's rows (an erased one's too)")
    lst.add_argument("--since", metavar="T", help="only rows at or after T (unix seconds or ISO 8601, UTC)")
    lst.add_argument("--limit", type=int, metavar="N", help="at most N rows")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    add_store_flag(lst)
    prune = actions.add_parser("prune", help="delete rows older than the retention")
    prune.add_argument("root", type=Path)
    prune.add_argument(
        "--older-than-days", type=float, default=DEFAULT_RETENTION_DAYS, metavar="D", help="retention (default 365)"
    )
    add_store_flag(prune)


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it names a zone)."""
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInputError(
                f"--since {text!r}: give unix seconds or an ISO 8601 time (e.g. 2026-12-07T10:00:00)",
                reason=Reason.INVALID_ARGUMENT,
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if not math.isfinite(value):
        raise InvalidInputError(f"--since {text!r} is not a time", reason=Reason.INVALID_ARGUMENT)
    return value


def _open(root: Path) -> tuple[ErasureLedger, AuditLog]:
    if not (root / AUDIT_FILE).is_file() or not (root / LEDGER_FILE).is_file():
        raise NotFoundError(f"no audit log at {root / AUDIT_FILE}", reason=Reason.NOT_FOUND)
    ledger = ErasureLedger.open(root)
    return ledger, AuditLog.open(root, ledger.digester)


def describe(entry: AuditEntry) -> str:
    when = datetime.fromtimestamp(entry.at, UTC).isoformat(timespec="seconds")
    who = entry.identity_id if entry.identity_id is not None else f"erased:{(entry.subject or '')[:16]}"
    extra = f" request {entry.request_id}" if entry.request_id else ""
    failed = " FAILED" if entry.outcome != "ok" else ""
    head = f"#{entry.seq} {when} {entry.principal} {entry.operation} {who}"
    return f"{head} faces={entry.faces} via {entry.via}{extra}{failed}"


def dispatch(args: argparse.Namespace) -> int:
    if args.audit_command == "prune" and not args.older_than_days > 0:
        raise InvalidInputError(
            f"--older-than-days must be > 0, got {args.older_than_days}", reason=Reason.INVALID_ARGUMENT
        )
    since = parse_time(args.since) if getattr(args, "since", None) is not None else None
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {args.limit}", reason=Reason.INVALID_ARGUMENT)
    url = resolve_store(args.store)
    if url is not None:
        return _with_store(args, url, since)
    if args.audit_command == "list":
        ledger, audit = _open(args.root)
        with ledger, audit:
            rows = audit.entries(identity_id=args.identity, since=since, limit=args.limit)
        for row in rows:
            print(json.dumps(row.to_dict()) if args.json else describe(row))
        return ExitCode.OK
    if args.audit_command == "prune":
        ledger, audit = _open(args.root)
        with ledger, audit:
            audit.pseudonymise_erased(ledger.current().subjects.keys())  # an erasure a crash interrupted
            n = audit.prune(older_than_days=args.older_than_days)
            left = audit.count()
        print(f"facesearch-index audit prune: deleted {n} rows older than {args.older_than_days:g} days; {left} kept")
        return ExitCode.OK
    raise AssertionError(args.audit_command)


def _with_store(args: argparse.Namespace, url: str, since: float | None) -> int:
    """``audit list|prune`` on the PostgreSQL store's audit log."""
    from facesearch.store.postgres import PgStore  # noqa: PLC0415 - the driver, only with a store
    from facesearch.store.postgres.admin import store_status  # noqa: PLC0415

    status = store_status(url)
    if status.contract_id is None or status.d is None:
        raise NotFoundError(f"the store {status.store} holds no audit log yet", reason=Reason.NOT_FOUND)
    with PgStore.open(url, contract_id=status.contract_id, d=status.d) as store:
        if args.audit_command == "prune":
            hidden = store.ledger.pseudonymise_erased()
            n = store.expire_audit(args.older_than_days)
            print(
                f"facesearch-index audit prune: deleted {n} rows older than {args.older_than_days:g} days from the "
                f"store's audit log; {hidden} rows of erased identities now keep only the digest"
            )
            return ExitCode.OK
        rows = [e for e in store.audit_entries(identity_id=args.identity) if since is None or e.at >= since]
    for e in rows[: args.limit] if args.limit is not None else rows:
        subject = e.detail.get("subject")
        who = e.identity_id if e.identity_id is not None else f"erased:{str(subject or '')[:16]}"
        if args.json:
            print(json.dumps({**asdict(e), "detail": dict(e.detail)}))
        else:
            when = datetime.fromtimestamp(e.at, UTC).isoformat(timespec="seconds")
            print(
                f"#{e.seq} {when} {e.principal} {e.action} {who} faces={e.detail.get('faces', 0)} "
                f"via {e.detail.get('via', '')}"
            )
    return ExitCode.OK
