"""Which store an index root belongs to: ``ROOT/STORE``, written before the first version published
from a PostgreSQL store.

A root whose versions come from a PostgreSQL store (``facesearch-index build|add|compact|remove
--store``) holds the store's faces under the store's vector ids, and what was erased since lives in
*that store's* erasure ledger, not in the root's own (``ROOT/erasures.sqlite``). A job or a server
that opened such a root without the store would consult only the root's ledger, so a rebuild from
photos, an ``add``, or a plain server would bring back a person erased through a replica. The marker
makes that a clear refusal (``STORE_ROOT``, naming the store) instead: :func:`require_store` is
called by every writer of a root and by the server before it opens one with the embedded store.

The file holds the store's id (``store_meta.store_id``) as JSON, written atomically before the
version is published (a crash between the two leaves a marker and no version, which only refuses
more). The marker is never removed by the tools: a root that should leave its store is rebuilt into a
new root.
"""

from __future__ import annotations

import json
from pathlib import Path

from facesearch.errors import PreconditionError, Reason
from facesearch.util.fs import write_atomic

__all__ = ["STORE_MARKER", "mark_store_root", "require_store", "root_store_id"]

STORE_MARKER = "STORE"


def root_store_id(root: Path) -> str | None:
    """The id of the PostgreSQL store ``root`` was published from (None: an embedded-store root)."""
    path = Path(root) / STORE_MARKER
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return str(json.loads(text)["store_id"])
    except (ValueError, KeyError, TypeError):
        raise PreconditionError(
            f"{path} is not a store marker (JSON with store_id)", reason=Reason.STORE_ROOT
        ) from None


def mark_store_root(root: Path, store_id: str) -> None:
    """Record that ``root`` is published from the store ``store_id`` (before publishing into it).
    A root already marked for another store is refused: one root, one store."""
    held = root_store_id(root)
    if held == store_id:
        return
    if held is not None:
        raise PreconditionError(
            f"index root {root} is published from the PostgreSQL store {held}, not {store_id}: "
            "one root serves one store; build into a new root",
            reason=Reason.STORE_ROOT,
        )
    Path(root).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(root) / STORE_MARKER, json.dumps({"store_id": store_id}) + "\n")


def require_store(
    root: Path, what: str, *, with_store: bool, how: str = "pass --store postgresql://... (or set FACESEARCH_STORE)"
) -> None:
    """Refuse ``what`` on ``root`` without the store the root is published from (``STORE_ROOT``);
    ``how`` tells the caller how to name the store."""
    held = root_store_id(root)
    if held is not None and not with_store:
        raise PreconditionError(
            f"{what}: index root {root} is published from the PostgreSQL store {held}, and what was erased "
            f"through its replicas is in that store's ledger: {how} for that store",
            reason=Reason.STORE_ROOT,
        )
