"""Bulk import into the PostgreSQL store: what ``facesearch-index build|add --store`` indexes is written
to the store first, so the store stays the record of every face a version serves.

:func:`import_faces` writes one batch of faces (of any number of identities) in one transaction under
the store's append lock, as enrollments: one change log entry per identity (kind ``enroll``, principal
and audit entry of the command), the identity rows (created, or appended to), the face rows with
vector ids drawn from the store's sequence, and one ``NOTIFY`` for the batch; durable when it returns.
Replicas apply it like any enrollment, and a version that absorbs the log up to its seq holds it.

Decided inside the transaction, with the append lock held (every erasure and unerase takes it too):

* faces of an identity the store's erasure ledger holds as erased, and erased faces (identity and
  source), are skipped (counted in ``erased``): an import never brings an erased subject back;
* a face the identity already holds is skipped (``duplicates``): the same identity and source file,
  or the same identity and embedding bytes (the same photo embedded again, wherever it is read from).
  So a rerun of an interrupted build writes only what the first run had not (an import is resumable
  batch by batch), and a rebuild from the same photos adds no second copy.

An identity's name and metadata are the batch's when given, else kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from facesearch.store.live_journal import NewFace
from facesearch.store.postgres import sql
from facesearch.store.postgres.records import ChangeKind
from facesearch.store.postgres.sql import NOTIFY_CHANNEL
from facesearch.store.postgres.store import PgStore

__all__ = ["ImportFace", "Imported", "import_faces"]


@dataclass(frozen=True, slots=True)
class ImportFace:
    identity_id: str
    face: NewFace


@dataclass(slots=True)
class Imported:
    """What imports wrote and skipped (added up over batches)."""

    faces: int = 0
    identities: int = 0  # identities created
    duplicates: int = 0
    erased: int = 0  # faces of erased subjects skipped
    last_seq: int = 0  # the seq of the last change written (0: none)
    batches: int = 0
    touched: set[str] = field(default_factory=set, repr=False)

    def add(self, other: Imported) -> None:
        self.faces += other.faces
        self.identities += other.identities
        self.duplicates += other.duplicates
        self.erased += other.erased
        self.last_seq = max(self.last_seq, other.last_seq)
        self.batches += other.batches
        self.touched |= other.touched

    def facts(self) -> dict[str, int]:
        return {
            "store_imported_faces": self.faces,
            "store_created_identities": self.identities,
            "store_duplicate_faces": self.duplicates,
            "store_erased_skipped": self.erased,
            "store_import_seq": self.last_seq,
        }


def _keys(identity_id: str, source: str | None, md5: str) -> list[tuple[str, str]]:
    """What makes a face one the identity already holds: its source file, or its embedding's bytes."""
    return [(identity_id, "md5:" + md5), *([(identity_id, "source:" + source)] if source else [])]


def import_faces(
    store: PgStore,
    faces: Sequence[ImportFace],
    identities: Mapping[str, tuple[str | None, Mapping[str, Any] | None]] | None = None,
    *,
    principal: str | None,
    via: str,
) -> Imported:
    """Write ``faces`` (one batch, one transaction) as enrollments; ``identities``: name and metadata
    by identity id (None or empty keeps the store's). See the module docstring."""
    out = Imported(batches=1)
    if not faces:
        return out
    blobs = sql.embedding_rows([f.face for f in faces], store.d)
    ids = sorted({f.identity_id for f in faces})
    info = identities or {}
    with store.writing(f"import {len(faces)} faces") as conn:
        conn.execute("SELECT 1").fetchone()  # the append lock is held from here: no erasure can commit now
        erased = store.erased()
        prior = {
            r[0]: sql.identity_of(r)
            for r in conn.execute(sql.IDENTITY_SELECT + " WHERE identity_id = ANY(%s) FOR UPDATE", (ids,)).fetchall()
        }
        held = {
            key
            for r in conn.execute(
                "SELECT identity_id, source, md5(embedding) FROM faces WHERE identity_id = ANY(%s)", (ids,)
            ).fetchall()
            for key in _keys(r[0], r[1], r[2])
        }
        chosen: dict[str, list[tuple[NewFace, bytes]]] = {}
        for item, blob in zip(faces, blobs, strict=True):
            who, face = item.identity_id, item.face
            if erased.identity_erased(who) or erased.face_erased(who, face.source):
                out.erased += 1
                continue
            keys = _keys(who, face.source, hashlib.md5(blob).hexdigest())
            if any(k in held for k in keys):
                out.duplicates += 1
                continue
            held.update(keys)
            chosen.setdefault(who, []).append((face, blob))
        if not chosen:
            return out
        n = sum(len(v) for v in chosen.values())
        vids = [int(r[0]) for r in conn.execute(sql_draw("face_vector_ids"), (n,)).fetchall()]
        seqs = [int(r[0]) for r in conn.execute(sql_draw("changes_seq_seq"), (len(chosen),)).fetchall()]
        changes, identity_rows, face_rows, audit_rows = [], [], [], []
        at = 0
        for (who, picked), seq in zip(sorted(chosen.items()), seqs, strict=True):
            mine = vids[at : at + len(picked)]
            at += len(picked)
            changes.append((seq, str(ChangeKind.ENROLL), who, mine, principal))
            existing = prior.get(who)
            alive = existing is not None and not existing.deleted
            name, meta = info.get(who, (None, None))
            kept_name = name or (existing.name if alive and existing else None)
            kept_meta = dict(meta or {}) or (dict(existing.metadata) if alive and existing else {})
            created = existing.created_at if alive and existing else None
            identity_rows.append((who, kept_name, Jsonb(kept_meta), seq, created))
            out.identities += 0 if alive else 1
            for vid, (face, blob) in zip(mine, picked, strict=True):
                box = face.box or (None,) * 4
                face_rows.append((vid, who, seq, blob, face.source, *box, face.det_score, face.face_size, face.blur))
            audit_rows.append((principal, who, seq, Jsonb({"faces": len(picked), "via": via})))
            out.touched.add(who)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO changes (seq, kind, identity_id, vector_ids, principal) VALUES (%s, %s, %s, %s, %s)",
                changes,
            )
            cur.executemany(
                "INSERT INTO identities (identity_id, name, metadata, deleted, seq, created_at, updated_at) "
                "VALUES (%s, %s, %s, false, %s, coalesce(to_timestamp(%s), now()), now()) "
                "ON CONFLICT (identity_id) DO UPDATE SET name = excluded.name, metadata = excluded.metadata, "
                "deleted = false, seq = excluded.seq, created_at = excluded.created_at, "
                "updated_at = excluded.updated_at",
                identity_rows,
            )
            cur.executemany(
                "INSERT INTO faces (vector_id, identity_id, seq, embedding, source, x1, y1, x2, y2, det_score, "
                "face_size, blur, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())",
                face_rows,
            )
            cur.executemany(
                "INSERT INTO audit_log (principal, action, identity_id, change_seq, detail) "
                "VALUES (%s, 'enroll', %s, %s, %s)",
                audit_rows,
            )
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(max(seqs))))
        out.faces = n
        out.last_seq = max(seqs)
    return out


def sql_draw(sequence: str) -> str:
    """``n`` values of ``sequence`` (one parameter: n), in order."""
    return f"SELECT nextval('{sequence}') FROM generate_series(1, %s)"
