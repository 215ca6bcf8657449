"""Checking and repairing a live journal (``facesearch-index journal check|repair``).

:func:`check` reads a journal (a running server may hold it) and reports every referenced vectors
record that cannot be served (missing, another face's, failing its checksum), a damaged file
header, the bytes after the last referenced record (unacknowledged writes, cut at the writer's next
open), and the faces quarantined so far. It never changes anything.

:func:`repair` takes the journal's writer lock (the server must be stopped), quarantines the face of
every damaged record (the face row is deleted, a tombstone hides it from the published version too,
and ``quarantine`` lists it with the problem, for the operator to re-enroll) and rewrites the vectors
file with the good records, checksummed, in the same transaction. A damaged embedding is never
served: after a repair the server starts and serves every other face.

Both work on one journal directory or on a live directory's every journal (its own, and
``contracts/*`` of other model contracts): :func:`journal_dirs_of` accepts an index root
(``ROOT/live``), a live directory or a journal directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import IndexFormatError, Reason
from facesearch.store.live_journal import (
    JOURNAL_FILE,
    LOCK_FILE,
    Inspection,
    LiveJournal,
    QuarantinedFace,
    journal_dirs,
)
from facesearch.util.lock import holder_pid

__all__ = ["JournalReport", "check", "journal_dirs_of", "repair"]

log = logging.getLogger(__name__)

LIVE_DIR = "live"


@dataclass(frozen=True, slots=True)
class JournalReport:
    """One journal's state: :func:`check`'s finding, or what :func:`repair` left."""

    directory: Path
    contract_id: str
    schema: int
    inspection: Inspection
    quarantined: tuple[QuarantinedFace, ...]  # every face quarantined so far
    newly_quarantined: tuple[int, ...]  # vector ids this repair quarantined
    writer_pid: int | None  # a live process holding the writer's lock (None: no writer)

    @property
    def ok(self) -> bool:
        return self.inspection.ok

    def to_json(self) -> dict[str, Any]:
        i = self.inspection
        return {
            "directory": str(self.directory),
            "contract_id": self.contract_id,
            "schema": self.schema,
            "vectors_file": i.vectors_file,
            "live_faces": i.live_faces,
            "ok": self.ok,
            "header": i.header,
            "damaged": [{"face_id": str(d.vector_id), "offset": d.offset, "problem": d.problem} for d in i.damaged],
            "unacknowledged_tail_bytes": max(0, i.size - i.end),
            "quarantined": [
                {"face_id": str(q.vector_id), "identity_id": q.identity_id, "problem": q.problem, "seq": q.seq}
                for q in self.quarantined
            ],
            "newly_quarantined": [str(v) for v in self.newly_quarantined],
            "writer_pid": self.writer_pid,
        }


def journal_dirs_of(path: Path) -> list[Path]:
    """The journals at ``path``: a journal directory, a live directory, or an index root's ``live/``."""
    path = Path(path)
    if (path / JOURNAL_FILE).is_file():
        return [path]
    for live in (path, path / LIVE_DIR):
        found = journal_dirs(live)
        if found:
            return found
    raise IndexFormatError(
        f"no live journal at {path} (looked for {JOURNAL_FILE} there, in {path / LIVE_DIR} and their contracts/)",
        reason=Reason.JOURNAL_MISSING,
    )


def check(directory: Path) -> JournalReport:
    """Inspect one journal without changing it."""
    journal = LiveJournal.open_reader(directory)
    try:
        return JournalReport(
            journal.dir,
            journal.contract_id,
            journal.schema,
            journal.inspect(),
            journal.quarantined(),
            (),
            _live_writer(journal.dir),
        )
    finally:
        journal.close()


def repair(directory: Path) -> JournalReport:
    """Quarantine damaged records' faces and rewrite the vectors file (the server must be stopped)."""
    journal = LiveJournal.open_to_repair(directory)
    try:
        found = journal.inspect()
        new = journal.quarantine(found.damaged)
        if not found.ok:
            log.warning(
                "live journal %s: quarantined %d face(s) whose records were damaged%s; rewrote the good ones into %s",
                journal.dir,
                len(found.damaged),
                f" ({found.header})" if found.header else "",
                new.name,
            )
        return JournalReport(
            journal.dir,
            journal.contract_id,
            journal.schema,
            journal.inspect(),
            journal.quarantined(),
            tuple(d.vector_id for d in found.damaged),
            None,
        )
    finally:
        journal.close()


def _live_writer(directory: Path) -> int | None:
    """The pid in the lock file if that process is alive (a clean release empties the file)."""
    pid = holder_pid(directory / LOCK_FILE)
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
