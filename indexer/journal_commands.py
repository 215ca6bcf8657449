"""``facesearch-index journal check|repair PATH``: inspect or repair a server's live journal.

    facesearch-index journal check ROOT       every journal under ROOT/live (a live or journal dir works too)
    facesearch-index journal repair ROOT      quarantine damaged records' faces (stop the server first)

``check`` reads only (the server may be running) and prints one JSON report per journal
(:class:`facesearch.store.journal_check.JournalReport`): the referenced records that cannot be
served (``damaged``: missing, another face's, failing their checksum), a damaged header, the bytes
of unacknowledged writes after the last record (``unacknowledged_tail_bytes``, cut when the server
next opens the journal), every face quarantined so far, and the pid of a server writing it.
Exit status 0 when every journal is sound, 1 when one is damaged.

``repair`` takes each journal's writer lock (refused, naming the pid, while a server holds it),
deletes and tombstones the face of every damaged record (listed under ``quarantined``: re-enroll
those people), and rewrites the vectors file with the good records; the server then starts and
serves every other face. Exit status 0 when repaired (or nothing to repair).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesearch.errors import ExitCode
from facesearch.store.journal_check import check, journal_dirs_of, repair

COMMANDS = ("journal",)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    j = sub.add_parser("journal", help="check or repair the server's live journal")
    actions = j.add_subparsers(dest="journal_command", required=True)
    for name, text in (
        ("check", "report damaged records, unacknowledged tail bytes and quarantined faces (read-only)"),
        ("repair", "quarantine the faces of damaged records and rewrite the vectors file (server stopped)"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("path", type=Path, metavar="PATH", help="index root, live directory or journal directory")


def dispatch(args: argparse.Namespace) -> int:
    act = repair if args.journal_command == "repair" else check
    reports = [act(directory) for directory in journal_dirs_of(args.path)]
    print(json.dumps([r.to_json() for r in reports], indent=2))
    if args.journal_command == "check" and not all(r.ok for r in reports):
        return ExitCode.FAILED
    return ExitCode.OK
