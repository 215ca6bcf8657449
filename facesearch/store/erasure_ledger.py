"""The erasure ledger of an index root: every erased identity and face, durably, so that no path (a
fresh build, ``add``, compaction, a rollback, a restart) brings an erased subject back.

File
    ``ROOT/erasures.sqlite`` (WAL, ``synchronous=FULL``, ``secure_delete``): one row per record,
    appended, never changed. The server appends when it acknowledges ``DeleteIdentity`` or
    ``DeleteFaces`` (the record is durable before the live journal's tombstone and before the
    reply); ``facesearch-index remove`` appends for the identities it removes;
    ``facesearch-index unerase`` appends a permit to enroll an identity again.

What a record holds, and what it never holds
    A subject is named by a keyed digest, ``HMAC-SHA256(root key, identity id)``, never by its id,
    name, metadata, photo sources or embeddings: the ledger lives in the root that an erasure must
    leave clean (after the documented procedure a byte scan of the root finds nothing of the
    subject). The key is random per root and kept in the ledger; with it, someone who already knows
    an identity id can tell that it was erased, which is what the ledger is for (refusing an
    enrollment, skipping a rebuild's rows, hiding a kept version's rows) and nothing more.

Records (:class:`ErasureKind`)
    ``identity``  the identity and every face it had: their vector ids and face digests.
    ``faces``     some faces of an identity: their vector ids and face digests.
    ``unerase``   the identity may be enrolled again; faces erased before stay erased.

    A face digest is ``HMAC(key, identity id, file name of the face's source)``: the file name, not
    the whole path, so a rebuild from the same photos under another folder still recognises them.
    Faces without a source are recognised by vector id only (vector ids never repeat in a root).
    Every record also keeps its time, the principal that asked (when known) and the path it came
    by (``via``: ``DeleteIdentity``, ``DeleteFaces``, ``facesearch-index remove``, ...).

Reading
    :meth:`ErasureLedger.current` folds the records into an :class:`ErasureSet` (what is erased
    now, and the ledger position it reflects); :func:`read_erasures` does so for a root without
    creating a ledger. :func:`erased_in_store` finds what of an :class:`ErasureSet` an identity
    store holds (identities by digest, faces by vector id and by face digest): the indexer purges
    it from every version it writes (:func:`purge_store`), the server hides it in a version it
    serves, ``facesearch-index erase-status`` reports it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePath

import numpy as np

from facesearch.errors import IndexFormatError, NotFoundError, Reason
from facesearch.store.identity_store import IdentityStore
from facesearch.store.sqlite_files import connect_durable
from facesearch.util import failpoints

LEDGER_FILE = "erasures.sqlite"
SCHEMA_VERSION = 1
#: Identity-store meta key: the ledger position whose erasures a published version was purged of.
ERASURE_SEQ_META = "erasure_seq"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    vector_ids TEXT NOT NULL,
    faces TEXT NOT NULL,
    at REAL NOT NULL,
    principal TEXT,
    via TEXT NOT NULL
);
"""


class ErasureKind(StrEnum):
    IDENTITY = "identity"
    FACES = "faces"
    UNERASE = "unerase"


@dataclass(frozen=True, slots=True)
class Erasure:
    """One ledger record."""

    seq: int
    kind: ErasureKind
    subject: str  # hex HMAC of the identity id
    vector_ids: tuple[int, ...]
    faces: tuple[str, ...]  # hex HMACs of (identity id, source file name)
    at: float  # unix seconds
    principal: str | None
    via: str


@dataclass(frozen=True, slots=True)
class ErasedFace:
    """A face to record: its vector id and the source it was enrolled from (None: unknown)."""

    vector_id: int
    source: str | None


class Digester:
    """The root's keyed digests of identity ids and faces."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _digest(self, *parts: str) -> str:
        return hmac.new(self._key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def subject(self, identity_id: str) -> str:
        return self._digest("identity", identity_id)

    def face(self, identity_id: str, source: str | None) -> str | None:
        """The digest of a face by its source's file name (None for a face without a source)."""
        name = PurePath(source).name if source else ""
        return self._digest("face", identity_id, name) if name else None


@dataclass(frozen=True, slots=True)
class ErasureSet:
    """What is erased at ledger position ``position``: subjects, face vector ids, face digests.

    ``since`` gives what was erased after a position (the rest a version purged at that position
    cannot hold). Each member remembers the seq of the record that erased it.
    """

    position: int
    digester: Digester | None
    subjects: dict[str, int] = field(default_factory=dict)  # subject digest -> seq of its erasure
    vector_ids: dict[int, int] = field(default_factory=dict)  # vector id -> seq
    faces: dict[str, int] = field(default_factory=dict)  # face digest -> seq
    face_subjects: dict[str, int] = field(default_factory=dict)  # subjects with erased faces -> last seq

    @classmethod
    def empty(cls) -> ErasureSet:
        return cls(0, None)

    def __bool__(self) -> bool:
        return bool(self.subjects or self.vector_ids or self.faces)

    def identity_erased(self, identity_id: str) -> bool:
        return self.digester is not None and self.digester.subject(identity_id) in self.subjects

    def face_erased(self, identity_id: str, source: str | None) -> bool:
        if self.digester is None or not self.faces:
            return False
        digest = self.digester.face(identity_id, source)
        return digest is not None and digest in self.faces

    def erased_vector_ids(self) -> np.ndarray:
        return np.asarray(sorted(self.vector_ids), dtype=np.int64)

    def since(self, position: int) -> ErasureSet:
        """Only what records after ``position`` erased."""
        if position <= 0:
            return self
        return ErasureSet(
            self.position,
            self.digester,
            {k: s for k, s in self.subjects.items() if s > position},
            {k: s for k, s in self.vector_ids.items() if s > position},
            {k: s for k, s in self.faces.items() if s > position},
            {k: s for k, s in self.face_subjects.items() if s > position},
        )


def fold(records: Iterable[Erasure], digester: Digester | None, into: ErasureSet | None = None) -> ErasureSet:
    """The :class:`ErasureSet` after ``records`` (in seq order), on top of ``into``."""
    base = into or ErasureSet.empty()
    subjects, vids = dict(base.subjects), dict(base.vector_ids)
    faces, face_subjects = dict(base.faces), dict(base.face_subjects)
    position = base.position
    for r in records:
        position = max(position, r.seq)
        if r.kind is ErasureKind.UNERASE:
            subjects.pop(r.subject, None)
            continue
        if r.kind is ErasureKind.IDENTITY:
            subjects[r.subject] = r.seq
        face_subjects[r.subject] = r.seq
        vids.update(dict.fromkeys(r.vector_ids, r.seq))
        faces.update(dict.fromkeys(r.faces, r.seq))
    return ErasureSet(position, digester, subjects, vids, faces, face_subjects)


class ErasureLedger:
    """``ROOT/erasures.sqlite``, opened for appending and reading; safe to share between threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()
        self.digester = Digester(bytes.fromhex(str(self._meta("key"))))
        self._set = ErasureSet(0, self.digester)

    @classmethod
    def open(cls, root: str | Path) -> ErasureLedger:
        """Open (creating if needed) the ledger of the index root ``root``."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        path = root / LEDGER_FILE
        try:
            conn = connect_durable(path, _SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?), ('key', ?)",
                (json.dumps(SCHEMA_VERSION), json.dumps(secrets.token_hex(32))),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise IndexFormatError(
                f"erasure ledger {path} cannot be opened: {err}", reason=Reason.LEDGER_INVALID
            ) from err
        ledger = cls(path, conn)
        if ledger._meta("schema_version") != SCHEMA_VERSION:
            conn.close()
            raise IndexFormatError(
                f"erasure ledger {path} has schema {ledger._meta('schema_version')}, this code reads {SCHEMA_VERSION}",
                reason=Reason.LEDGER_INVALID,
            )
        return ledger

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ErasureLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> object:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # -- reads -------------------------------------------------------------------------
    def records(self, after: int = 0) -> list[Erasure]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, subject, vector_ids, faces, at, principal, via FROM records WHERE seq > ? "
                "ORDER BY seq",
                (after,),
            ).fetchall()
        return [
            Erasure(r[0], ErasureKind(r[1]), r[2], tuple(json.loads(r[3])), tuple(json.loads(r[4])), r[5], r[6], r[7])
            for r in rows
        ]

    def current(self) -> ErasureSet:
        """What is erased now, including records other processes appended since the last call."""
        known = self._set
        new = self.records(after=known.position)
        if new:
            self._set = known = fold(new, self.digester, known)
        return known

    def is_erased(self, identity_id: str) -> bool:
        return self.current().identity_erased(identity_id)

    # -- appends -----------------------------------------------------------------------
    def record(
        self,
        kind: ErasureKind,
        identity_id: str,
        faces: Sequence[ErasedFace],
        *,
        via: str,
        principal: str | None = None,
    ) -> Erasure:
        """Append an erasure of ``identity_id`` (``kind`` identity: with all of ``faces``); durable on return."""
        if kind is ErasureKind.UNERASE:
            raise ValueError("use unerase()")
        digests = sorted({d for f in faces if (d := self.digester.face(identity_id, f.source)) is not None})
        vids = sorted({int(f.vector_id) for f in faces})
        return self._append(kind, identity_id, vids, digests, via=via, principal=principal)

    def unerase(self, identity_id: str, *, via: str, principal: str | None = None) -> Erasure:
        """Permit ``identity_id`` to be enrolled again (NotFoundError when it is not erased)."""
        if not self.is_erased(identity_id):
            raise NotFoundError(f"identity {identity_id!r} is not erased in {self.path}", reason=Reason.NOT_ERASED)
        return self._append(ErasureKind.UNERASE, identity_id, [], [], via=via, principal=principal)

    def _append(
        self,
        kind: ErasureKind,
        identity_id: str,
        vids: list[int],
        faces: list[str],
        *,
        via: str,
        principal: str | None,
    ) -> Erasure:
        subject = self.digester.subject(identity_id)
        at = time.time()
        with self._lock:
            failpoints.hit("ledger.commit")
            cur = self._conn.execute(
                "INSERT INTO records (kind, subject, vector_ids, faces, at, principal, via) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(kind), subject, json.dumps(vids), json.dumps(faces), at, principal, via),
            )  # autocommit: one fsync'd WAL commit (synchronous=FULL)
            failpoints.hit("ledger.committed")
        seq = int(cur.lastrowid or 0)
        return Erasure(seq, kind, subject, tuple(vids), tuple(faces), at, principal, via)


def read_erasures(root: str | Path) -> ErasureSet:
    """The :class:`ErasureSet` of ``root``'s ledger (empty when the root has none)."""
    if not (Path(root) / LEDGER_FILE).is_file():
        return ErasureSet.empty()
    with ErasureLedger.open(root) as ledger:
        return ledger.current()


def os_principal() -> str:
    """Who runs a command-line erasure: the OS user (recorded as the principal)."""
    try:
        return f"os:{os.getlogin()}"
    except OSError:
        return f"uid:{os.getuid()}"


# -- identity stores -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoreHits:
    """What an identity store holds of an :class:`ErasureSet`."""

    identities: dict[str, tuple[int, str]]  # identity id -> (key, subject digest): erased identities
    face_ids: np.ndarray  # sorted vector ids of every erased face present (of erased identities too)
    face_subjects: dict[int, str]  # vector id -> subject digest of its identity

    def __bool__(self) -> bool:
        return bool(self.identities) or len(self.face_ids) > 0

    @property
    def keys(self) -> list[int]:
        return sorted(k for k, _ in self.identities.values())

    def subjects(self) -> set[str]:
        return {s for _, s in self.identities.values()} | set(self.face_subjects.values())


def erased_in_store(store: IdentityStore, erased: ErasureSet) -> StoreHits:
    """Erased identities (by digest) and erased faces (by vector id, by face digest) in ``store``.

    Costs one digest per identity of the store (a scan) when ``erased`` names subjects, and reads
    the faces of the identities whose faces were erased; nothing when ``erased`` is empty.
    """
    empty = StoreHits({}, np.zeros(0, np.int64), {})
    if not erased or erased.digester is None:
        return empty
    digest = erased.digester
    identities: dict[str, tuple[int, str]] = {}
    with_faces: dict[str, tuple[int, str]] = {}
    if erased.subjects or erased.face_subjects:
        for key, identity_id in store.iter_identity_keys():
            subject = digest.subject(identity_id)
            if subject in erased.subjects:
                identities[identity_id] = (key, subject)
            elif subject in erased.face_subjects:
                with_faces[identity_id] = (key, subject)
    found: dict[int, str] = {}
    if identities:
        by_key = {k: s for k, s in identities.values()}
        vids, owners = store.faces_of_identity_keys(list(by_key))
        found.update({int(v): by_key[int(o)] for v, o in zip(vids.tolist(), owners.tolist(), strict=True)})
    if with_faces:
        by_key = {k: s for k, s in with_faces.values()}
        for face in store.faces_of_identities(list(with_faces)):
            owner = with_faces[face.identity_id][1]
            if face.vector_id in erased.vector_ids or erased.face_erased(face.identity_id, face.source):
                found[face.vector_id] = owner
    if erased.vector_ids:
        listed = [v for v in erased.vector_ids if v not in found]
        for row in store.faces(listed):
            if row is not None:
                found[row.vector_id] = digest.subject(row.identity_id)
    return StoreHits(identities, np.asarray(sorted(found), dtype=np.int64), found)


def purge_store(store: IdentityStore, erased: ErasureSet) -> StoreHits:
    """Delete from ``store`` (open for writing) every erased identity and face; record the position.

    The caller ``finalize()``s the store, which VACUUMs it, so nothing deleted survives in the file.
    """
    hits = erased_in_store(store, erased)
    if hits.identities:
        store.remove_identities(sorted(hits.identities))
    if len(hits.face_ids):
        store.remove_faces(hits.face_ids.tolist())
    store.set_meta(ERASURE_SEQ_META, erased.position)
    store.commit()
    return hits
