"""Where an erased subject's data still is under an index root: ``facesearch-index erase-status``.

For each subject of the root's erasure ledger (or one identity id), every file that may still hold
its embeddings, ids, names, metadata or photo sources is listed, and the erasure is *complete* when
none does. What is looked at:

* every kept version ``ROOT/v*``: the identity store (identity rows found by digest, faces by vector
  id and by face digest); when the store holds any of the subject, the files derived from it hold it
  too (``index.faiss``, ``vector_ids.npy``, the re-ranking rows, ``exact.npy``, ``open_set.npz``:
  embeddings, vector ids, templates); ``rejects.jsonl`` lines naming the identity;
* the live journal(s) under the live directory (``ROOT/live`` by default, and ``contracts/*``): rows
  naming the identity (its state, live faces, tombstones), and every ``vectors-*`` file holding
  one of its live faces' vector ids (an embedding record);
* the server's caches of computed open-set statistics (``LIVE_DIR/open_set/*.npz``: templates by id)
  and its checkpoint of the live statistics (``open_set_checkpoint.npz`` in each journal directory:
  after a deletion the server rewrites it without the subject within ``FACESEARCH_CHECKPOINT_ERASE_S``,
  default 30 s, so a subject held there is reported as pending; ``open_set_checkpoint.*.npz``: one
  being written);
* leftovers of killed jobs: ``.trash-*`` (a prune that stopped), ``.staging-*`` (a job that
  stopped before publishing) and ``.work`` (an unfinished build's embeddings): anything may be in
  them, so they count against every subject until ``facesearch-index prune`` deletes them;
* with an identity id given: a byte scan of every file under the root and the live directory for
  the id's UTF-8 bytes (and any ``also`` strings, e.g. the display name), which also finds what row
  checks cannot: deleted rows left in SQLite free pages or write-ahead logs.

Without an id, SQLite free pages and write-ahead logs cannot be checked against a digest; they are
listed under ``unverified`` (a byte scan with the id settles them).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facesearch.errors import FaceSearchError, NotFoundError, Reason
from facesearch.scoring.gallery_stats import OPEN_SET_FILE, GalleryOpenSet
from facesearch.store.erasure_ledger import (
    LEDGER_FILE,
    Digester,
    Erasure,
    ErasureKind,
    ErasureLedger,
    ErasureSet,
    erased_in_store,
)
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import (
    EXACT_FILE,
    INDEX_FILE,
    LEFTOVER_PATTERNS,
    REFINE_CODEC_FILE,
    REFINE_FILE,
    REJECTS_FILE,
    STORE_FILE,
    VECTOR_IDS_FILE,
    list_versions,
)
from facesearch.store.journal_retention import LIVE_DIR
from facesearch.store.live_journal import CONTRACTS_DIR, JOURNAL_FILE, LIVE_VECTOR_ID_BASE, LiveJournal

CHECKPOINT_FILE = "open_set_checkpoint.npz"  # server.open_set_checkpoint.DATA_FILE
CHECKPOINT_STAGING = "open_set_checkpoint.*.npz"  # being written (staging and temporary files)
#: What erase-status says of a subject in the server's open-set checkpoint (server.open_set_checkpoint).
CHECKPOINT_PENDING = (
    "open-set checkpoint: templates; pending: the server rewrites it without erased subjects within "
    "FACESEARCH_CHECKPOINT_ERASE_S (default 30 s) of the deletion, at a clean shutdown, and right after a "
    "restart (a restart on it replays the deletion: the subject is not served)"
)

#: Files of a version derived from its identity store: they hold what the store holds.
DERIVED_FILES = (INDEX_FILE, VECTOR_IDS_FILE, REFINE_FILE, REFINE_CODEC_FILE, EXACT_FILE, OPEN_SET_FILE)
_BLOCK = 1 << 22

#: ``hold(subject digest, path, what)``: note that ``path`` holds ``what`` of a subject.
_Hold = Callable[[str, Path, str], None]


@dataclass(frozen=True, slots=True)
class Holding:
    """A file (path relative to the root, or absolute outside it) and what of a subject it holds."""

    path: str
    what: str


@dataclass(slots=True)
class SubjectStatus:
    subject: str  # the identity id when given, else the ledger's digest
    erased_seq: int
    erased_at: float
    kinds: list[str]
    holdings: list[Holding] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.holdings


@dataclass(slots=True)
class EraseStatus:
    root: str
    ledger_position: int
    subjects: list[SubjectStatus]
    unverified: list[Holding]

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.subjects)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["complete"] = self.complete
        for status, data in zip(self.subjects, out["subjects"], strict=True):
            data["complete"] = status.complete
        return out


@dataclass(frozen=True, slots=True)
class LedgerView:
    """An erasure ledger as :func:`erase_status` reads it: the root's, or a shared store's
    (``facesearch.store.postgres.erasure_status``), with the places only that ledger's owner knows:
    ``cache_dirs`` (directories holding open-set caches ``open_set/*.npz`` and checkpoints, e.g. each
    replica's) and ``more(hold, hold_identity)`` (holdings outside the root, e.g. the store's tables)."""

    records: list[Erasure]
    erased: ErasureSet
    digester: Digester
    cache_dirs: tuple[Path, ...] = ()
    more: Callable[[_Hold, _Hold], None] | None = None


def erase_status(
    root: Path,
    *,
    identity_id: str | None = None,
    live_dir: Path | None = None,
    also: Iterable[str] = (),
    ledger: LedgerView | None = None,
) -> EraseStatus:
    """Audit ``root`` for every erased subject (or only ``identity_id``); ``ledger``: another ledger
    than the root's (a shared store's)."""
    root = Path(root)
    live_dir = Path(live_dir) if live_dir is not None else root / LIVE_DIR
    if ledger is None and not (root / LEDGER_FILE).is_file():
        if identity_id is not None:
            raise NotFoundError(
                f"{root} has no erasure ledger: {identity_id!r} is not erased", reason=Reason.NOT_ERASED
            )
        return EraseStatus(str(root), 0, [], [])
    if ledger is None:
        with ErasureLedger.open(root) as opened:
            ledger = LedgerView(opened.records(), opened.current(), opened.digester)
    erased, records, digester = ledger.erased, ledger.records, ledger.digester
    subjects: dict[str, SubjectStatus] = {}
    for r in records:
        if r.kind is ErasureKind.UNERASE:
            subjects.pop(r.subject, None)
            continue
        status = subjects.setdefault(r.subject, SubjectStatus(r.subject, r.seq, r.at, []))
        status.erased_seq, status.erased_at = r.seq, r.at
        if str(r.kind) not in status.kinds:
            status.kinds.append(str(r.kind))
    wanted: str | None = None
    if identity_id is not None:
        wanted = digester.subject(identity_id)
        if wanted not in subjects:
            raise NotFoundError(f"identity {identity_id!r} is not erased in {root}", reason=Reason.NOT_ERASED)
        subjects = {wanted: subjects[wanted]}
        subjects[wanted].subject = identity_id
    report = EraseStatus(str(root), erased.position, list(subjects.values()), [])

    def hold(subject: str, path: Path, what: str) -> None:
        if subject in subjects:
            subjects[subject].holdings.append(Holding(_relative(path, root), what))

    def hold_identity(subject: str, path: Path, what: str) -> None:
        """Rows that name the identity count against an identity erasure only (not a faces erasure)."""
        if subject in erased.subjects:
            hold(subject, path, what)

    live_vids: dict[str, set[int]] = {}
    for r in records:
        live_vids.setdefault(r.subject, set()).update(v for v in r.vector_ids if v >= LIVE_VECTOR_ID_BASE)
    for version in list_versions(root):
        _audit_version(root / version, erased, digester, hold, hold_identity)
    for directory in _journal_dirs(live_dir):
        _audit_journal(directory, digester, live_vids, (hold, hold_identity), report.unverified, root)
    for cache in sorted((live_dir / "open_set").glob("*.npz")) if (live_dir / "open_set").is_dir() else []:
        _audit_open_set(cache, digester, hold_identity, "cached open-set statistics: templates")
    now = time.time()

    def hold_checkpoint(subject: str, path: Path, what: str) -> None:
        if subject in subjects:
            what += f" (erased {max(0.0, now - subjects[subject].erased_at):.0f} s ago)"
        hold_identity(subject, path, what)

    for cache in sorted(
        c for d in ledger.cache_dirs if (d / "open_set").is_dir() for c in (d / "open_set").glob("*.npz")
    ):
        _audit_open_set(cache, digester, hold_identity, "cached open-set statistics: templates")
    checkpoint_dirs = [*_journal_dirs(live_dir), *ledger.cache_dirs]
    for directory in checkpoint_dirs:  # the server's checkpoint of its statistics (server.open_set_checkpoint)
        if (checkpoint := directory / CHECKPOINT_FILE).is_file():
            _audit_open_set(checkpoint, digester, hold_checkpoint, CHECKPOINT_PENDING)
        for staging in sorted(directory.glob(CHECKPOINT_STAGING)):
            for subject in subjects:
                hold(subject, staging, "an open-set checkpoint being written (or left by a crash: removed at start)")
    if ledger.more is not None:
        ledger.more(hold, hold_identity)
    for pattern in LEFTOVER_PATTERNS:
        for leftover in sorted(root.glob(pattern)):
            for subject in subjects:
                hold(subject, leftover, "left by a killed job (may hold anything): `facesearch-index prune` deletes it")
    if identity_id is not None:
        needles = [identity_id.encode(), *(a.encode() for a in also if a)]
        for path in _files(root, live_dir):
            for needle in needles:
                if _contains(path, needle):
                    hold(wanted or "", path, f"the bytes of {needle.decode()!r}")
        report.unverified.clear()  # settled by the byte scan
    return report


def _audit_version(vdir: Path, erased: ErasureSet, digester: Digester, hold: _Hold, hold_identity: _Hold) -> None:
    store_path = vdir / STORE_FILE
    if store_path.is_file():
        with IdentityStore.open(store_path, readonly=True) as store:
            hits = erased_in_store(store, erased)
        for identity_id, (_, subject) in hits.identities.items():
            del identity_id  # never reported: the subject is named by its digest (or the id given)
            hold(subject, store_path, "identity row (name, metadata)")
        counts: dict[str, int] = {}
        for subject in hits.face_subjects.values():
            counts[subject] = counts.get(subject, 0) + 1
        for subject, n in counts.items():
            hold(subject, store_path, f"{n} faces (embeddings, sources, boxes)")
        for subject in hits.subjects():
            for name in DERIVED_FILES:
                if (vdir / name).is_file():
                    hold(subject, vdir / name, "derived from the identity store (vectors, ids or templates)")
    rejects = vdir / REJECTS_FILE
    if rejects.is_file():
        _audit_rejects(rejects, digester, hold_identity)


def _audit_rejects(path: Path, digester: Digester, hold: _Hold) -> None:
    seen: set[str] = set()
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                identity = json.loads(line).get("identity_id")
                if identity:
                    seen.add(digester.subject(str(identity)))
    for subject in seen:
        hold(subject, path, "skipped input rows naming the identity")


def _audit_open_set(path: Path, digester: Digester, hold: _Hold, what: str) -> None:
    try:
        ids = GalleryOpenSet.load(path).templates.identity_ids
    except FaceSearchError:
        return
    for identity in ids:
        hold(digester.subject(str(identity)), path, what)


def _journal_dirs(live_dir: Path) -> Iterator[Path]:
    if LiveJournal.exists(live_dir):
        yield live_dir
    extra = live_dir / CONTRACTS_DIR
    if extra.is_dir():
        yield from (d for d in sorted(extra.iterdir()) if LiveJournal.exists(d))


def _audit_journal(  # noqa: PLR0917 - one directory, the lookups and the outputs
    directory: Path,
    digester: Digester,
    live_vids: dict[str, set[int]],
    holds: tuple[_Hold, _Hold],
    unverified: list[Holding],
    root: Path,
) -> None:
    hold, hold_identity = holds
    path = directory / JOURNAL_FILE
    journal = LiveJournal.open_reader(directory)
    try:
        snap = journal.snapshot(after_seq=0)
    finally:
        journal.close()
    for ident in snap.identities:
        state = "deleted" if ident.deleted else "current"
        hold_identity(digester.subject(ident.identity_id), path, f"identity row ({state})")
    owners: dict[str, int] = {}
    for face in snap.faces:
        subject = digester.subject(face.identity_id)
        owners[subject] = owners.get(subject, 0) + 1
    for subject, n in owners.items():
        hold_identity(subject, path, f"{n} live faces (sources, boxes)")
    for t in snap.tombstones:
        if t.identity_id:
            hold_identity(digester.subject(t.identity_id), path, "tombstone naming the identity")
    for vectors in sorted(directory.glob("vectors-*")):
        data = vectors.read_bytes()  # the live delta: compaction keeps it small
        for subject, vids in live_vids.items():
            n = sum(int(v).to_bytes(8, "little") in data for v in vids)
            if n:
                hold(subject, vectors, f"{n} live face embeddings")
    for residue in (path, path.with_name(path.name + "-wal")):
        if residue.is_file() and residue.stat().st_size:
            unverified.append(
                Holding(_relative(residue, root), "deleted rows may remain in SQLite free pages or the log")
            )


def _files(*roots: Path) -> Iterator[Path]:
    seen: set[Path] = set()
    for top in roots:
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.resolve() not in seen:
                seen.add(path.resolve())
                yield path


def _contains(path: Path, needle: bytes) -> bool:
    """Whether ``path``'s bytes contain ``needle`` (read in blocks that overlap by its length)."""
    tail = b""
    try:
        with path.open("rb") as fh:
            while block := fh.read(_BLOCK):
                if needle in tail + block:
                    return True
                tail = block[-(len(needle) - 1) :] if len(needle) > 1 else b""
    except OSError:
        return False
    return False


def _relative(path: Path, root: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(root))
    return str(path)
