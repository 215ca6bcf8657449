"""Which live-journal changes a published version holds, and how much of the journal may be forgotten.

Each version's identity store records the journal position it absorbed: meta ``live_journal_id``
(the journal's id) and ``live_seq`` (every change with ``seq <= live_seq`` of that journal is in the
version). A version that absorbed nothing of a journal (a build before the server enrolled anything,
a version of another journal) holds position 0 of it: the server replays the whole journal on top.

Retention rule: the server may prune the changes with ``seq <= retained_from(root, journal)`` and no
more: the smallest position any kept version absorbed. So a rollback to any kept version finds every
change that version lacks still in the journal and replays it (rolling back past a compaction loses
no acknowledged enrollment or deletion), and versions deleted by ``facesearch-index prune`` (or by
publishing with ``--keep-versions``) let the journal shrink.

Forgetting (:func:`forget`, what the server runs under its write lock) leaves nothing of the pruned
changes on disk: the journal prunes (rotating its vectors file), rotates once more when a vectors
file older than the current one is still there (its first rotation keeps the previous file for
snapshot readers; that file may hold the embeddings of erased live faces), and ``journal.sqlite``
is VACUUMed and its write-ahead log truncated, so deleted rows leave no bytes in free pages or in the
log. A compaction reading a snapshot at that moment may fail and is simply run again.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from facesearch.errors import FaceSearchError
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, list_versions
from facesearch.store.live_journal import JOURNAL_FILE, LiveJournal
from facesearch.util import failpoints

#: The server's live journal under an index root, unless configured elsewhere (FACESEARCH_LIVE_DIR).
LIVE_DIR = "live"
LIVE_SEQ_META = "live_seq"
LIVE_JOURNAL_META = "live_journal_id"


@dataclass(frozen=True, slots=True)
class Absorbed:
    """A journal position: every change of journal ``journal_id`` with ``seq <= seq``."""

    journal_id: str | None
    seq: int

    def position_in(self, journal_id: str) -> int:
        """How far into ``journal_id`` this position reaches (0 for another journal)."""
        return self.seq if self.journal_id == journal_id else 0

    @classmethod
    def of(cls, store: IdentityStore) -> Absorbed:
        journal = store.meta(LIVE_JOURNAL_META)
        return cls(str(journal) if journal else None, int(store.meta(LIVE_SEQ_META) or 0))

    def write(self, store: IdentityStore) -> None:
        """Record this position in a store being written (the caller commits)."""
        store.set_meta(LIVE_SEQ_META, self.seq)
        store.set_meta(LIVE_JOURNAL_META, self.journal_id)


NOTHING = Absorbed(None, 0)


def absorbed_by(version_dir: Path) -> Absorbed:
    """The journal position a published version absorbed (read from its identity store)."""
    with IdentityStore.open(version_dir / STORE_FILE, readonly=True) as store:
        return Absorbed.of(store)


def retained_from(root: Path, journal_id: str) -> int:
    """The journal position the server may prune up to: the least any kept version of ``root`` absorbed
    (0 with no version). A version that vanishes meanwhile (being pruned) is skipped; one that cannot
    be read counts as 0, which keeps everything."""
    floor: int | None = None
    for version in list_versions(root):
        vdir = root / version
        seq = 0
        if not (vdir / STORE_FILE).is_file():
            continue
        with contextlib.suppress(FaceSearchError, OSError):
            seq = absorbed_by(vdir).position_in(journal_id)
        floor = seq if floor is None else min(floor, seq)
    return floor or 0


def forget(journal: LiveJournal, upto: int) -> None:
    """Prune ``journal`` up to ``upto`` and leave no byte of the pruned changes in its files."""
    journal.prune(upto)
    if len(list(journal.dir.glob("vectors-*"))) > 1:
        journal.prune(upto)  # the second rotation drops the file the first one kept
    vacuum(journal.dir / JOURNAL_FILE)


def vacuum(path: Path) -> None:
    """Rewrite an SQLite file without free pages or deleted cells, and empty its write-ahead log."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        failpoints.hit("journal.vacuum")
        conn.execute("VACUUM")
        failpoints.hit("journal.checkpoint")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
