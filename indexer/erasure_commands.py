"""``facesearch-index prune | erase-status | unerase``: the erasure side of an index root.

    facesearch-index prune ROOT --keep N        delete all but the N newest versions (never the
                                                current one), the server's cached statistics of
                                                those, and the leftovers of killed jobs; with
                                                FACESEARCH_STORE=postgresql://... also the store's
                                                log up to the oldest kept version's position, and
                                                request ids / audit rows past their retention
    facesearch-index erase-status ROOT [ID]     where erased subjects' data still is; exit 0 when
                                                every erasure is complete, 1 when not
    facesearch-index unerase ROOT ID            permit an erased identity to be enrolled again

With a PostgreSQL store (``--store URL`` or ``FACESEARCH_STORE``), ``erase-status`` reports the store's
erasure ledger's subjects, in the same format, over the root, each replica's caches and the store's
tables (:mod:`facesearch.store.postgres.erasure_status`), and ``unerase`` records the unerase in the
store's ledger (the one replicas check).

Erasure procedure (README, "Erasure"): after DeleteIdentity/DeleteFaces (or ``remove``), run
``compact`` (the current version no longer holds the subject), then ``prune --keep 1`` (older
versions and leftovers are deleted; the server then prunes and rotates its live journal within its
index poll interval; with the store, its log is pruned past the deletion), then
``erase-status ROOT ID`` to confirm.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from facesearch.errors import ExitCode, InvalidInputError, NotFoundError, Reason
from facesearch.store.audit_log import AuditLog, AuditOp
from facesearch.store.erasure_audit import EraseStatus, erase_status
from facesearch.store.erasure_ledger import ErasureLedger, os_principal
from facesearch.store.journal_retention import LIVE_DIR
from facesearch.store.store_location import store_location
from facesearch.store.store_marker import require_store
from indexer.publish import locked, prune, remove_leftovers
from indexer.store_flag import add_store_flag, resolve_store

log = logging.getLogger(f"facesearch.{__name__}")

COMMANDS = ("prune", "erase-status", "unerase")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="delete older versions and the leftovers of killed jobs")
    p.add_argument("root", type=Path)
    p.add_argument("--keep", type=int, required=True, metavar="N", help="versions kept (the current one always)")
    p.add_argument("--live-dir", type=Path, metavar="DIR", help="the server's live journal (default: ROOT/live)")
    s = sub.add_parser("erase-status", help="which files still hold erased subjects' data (exit 1: not complete)")
    s.add_argument("root", type=Path)
    s.add_argument("identity", nargs="?", metavar="ID", help="one erased identity: also byte-scans every file")
    s.add_argument("--live-dir", type=Path, metavar="DIR", help="the server's live journal (default: ROOT/live)")
    s.add_argument("--also", action="append", default=[], metavar="TEXT", help="more bytes to scan for (a name)")
    s.add_argument("--json", action="store_true", help="the report as JSON")
    add_store_flag(s)
    u = sub.add_parser("unerase", help="permit an erased identity to be enrolled again (logged)")
    u.add_argument("root", type=Path)
    u.add_argument("identity", metavar="ID")
    add_store_flag(u)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "prune":
        if args.keep < 1:
            raise InvalidInputError(f"--keep must be >= 1, got {args.keep}")
        with locked(args.root):
            deleted = prune(args.root, args.keep)
            leftovers = remove_leftovers(args.root)
            location = store_location()  # a shared store: its log shrinks to what the kept versions absorbed
            if location.shared and location.url:
                from indexer.store_compact import prune_from_store  # noqa: PLC0415 - imports the PostgreSQL driver

                pruned = prune_from_store(args.root, location.url)
                if pruned is not None:
                    print(f"facesearch-index prune: {pruned.describe()}")
        caches = (args.live_dir or args.root / LIVE_DIR) / "open_set"
        for version in deleted:  # the server's copies of those versions' open-set statistics
            for cache in caches.glob(f"{version}-*.npz"):
                cache.unlink(missing_ok=True)
        print(
            f"facesearch-index prune: deleted {len(deleted)} versions ({', '.join(deleted) or 'none'}) and "
            f"{len(leftovers)} leftovers ({', '.join(leftovers) or 'none'})"
        )
        return ExitCode.OK
    if args.command == "erase-status":
        url = resolve_store(args.store)
        if url is not None:
            report = _store_erase_status(args, url)
        else:
            require_store(args.root, "erase-status", with_store=False)
            report = erase_status(args.root, identity_id=args.identity, live_dir=args.live_dir, also=args.also)
        print(json.dumps(report.to_dict(), indent=2) if args.json else describe(report))
        return ExitCode.OK if report.complete else ExitCode.FAILED
    if args.command == "unerase" and (url := resolve_store(args.store)) is not None:
        return _store_unerase(args, url)
    if args.command == "unerase":
        require_store(args.root, "unerase", with_store=False)
        with ErasureLedger.open(args.root) as ledger, AuditLog.open(args.root, ledger.digester) as audit:
            record = ledger.unerase(args.identity, via="facesearch-index unerase", principal=os_principal())
            # the audit row names the identity by digest, like its erased history
            audit.record(
                AuditOp.UNERASE,
                args.identity,
                principal=str(record.principal),
                via="facesearch-index unerase",
                erased=True,
            )
        log.warning(
            "identity %r may be enrolled again (ledger record #%d, %s)", args.identity, record.seq, record.principal
        )
        print(f"facesearch-index unerase: {args.identity} may be enrolled again (ledger record #{record.seq})")
        return ExitCode.OK
    raise AssertionError(args.command)


def _store_erase_status(args: argparse.Namespace, url: str) -> EraseStatus:
    from facesearch.store.postgres import PgStore  # noqa: PLC0415 - the driver, only with a store
    from facesearch.store.postgres.admin import store_status  # noqa: PLC0415
    from facesearch.store.postgres.erasure_status import store_erase_status  # noqa: PLC0415

    status = store_status(url)
    if status.contract_id is None or status.d is None:  # never used: nothing erased
        if args.identity is not None:
            raise NotFoundError(
                f"the store {status.store} holds nothing: {args.identity!r} is not erased", reason=Reason.NOT_ERASED
            )
        return EraseStatus(str(args.root), 0, [], [])
    with PgStore.open(url, contract_id=status.contract_id, d=status.d) as store:
        return store_erase_status(store, args.root, identity_id=args.identity, live_dir=args.live_dir, also=args.also)


def _store_unerase(args: argparse.Namespace, url: str) -> int:
    from facesearch.store.postgres import PgStore  # noqa: PLC0415 - the driver, only with a store
    from facesearch.store.postgres.admin import store_status  # noqa: PLC0415

    status = store_status(url)
    if status.contract_id is None or status.d is None:
        raise NotFoundError(
            f"the store {status.store} holds nothing: {args.identity!r} is not erased", reason=Reason.NOT_ERASED
        )
    with PgStore.open(url, contract_id=status.contract_id, d=status.d) as store:
        seq = store.unerase(args.identity, via="facesearch-index unerase", principal=os_principal())
    log.warning("identity %r may be enrolled again (store ledger record #%d)", args.identity, seq)
    print(f"facesearch-index unerase: {args.identity} may be enrolled again (ledger record #{seq})")
    return ExitCode.OK


def describe(report: EraseStatus) -> str:
    lines = [
        f"erasures in {report.root} (ledger position {report.ledger_position}): "
        + ("complete" if report.complete else "NOT complete")
    ]
    for status in report.subjects:
        state = "complete" if status.complete else f"held by {len(status.holdings)} files"
        lines.append(f"  {status.subject} ({', '.join(status.kinds)}, record #{status.erased_seq}): {state}")
        lines.extend(f"    {h.path}: {h.what}" for h in status.holdings)
    if report.unverified:
        lines.append("  unverified without an identity id (give one for a byte scan):")
        lines.extend(f"    {h.path}: {h.what}" for h in report.unverified)
    return "\n".join(lines)
