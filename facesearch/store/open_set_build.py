"""The open-set statistics of a published version, built from its identity store.

The statistics themselves (templates, cohort, the saved ``open_set.npz``) are
:mod:`facesearch.scoring.gallery_stats`; this module only reads every face of a version's
identity store, in chunks and within a memory budget, and hands them over grouped by identity.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facesearch.errors import InvalidInputError, Reason
from facesearch.scoring.gallery_stats import (
    BLOCK_ELEMENTS,
    EXACT_FACES,
    SHORTLIST,
    GalleryOpenSet,
    Grouped,
    from_grouped,
)
from facesearch.scoring.normalise import DEFAULT_K
from facesearch.scoring.templates import DEFAULT_TEMPLATE
from facesearch.store.identity_store import IdentityStore

RESIDENT_FACES_BYTES = 1 << 30
_READ_ROWS = 65_536  # faces read from the store at once
_TEMPLATE_IDS = 65_536  # identities whose template sums are held at once


def build_open_set_for_store(
    store_path: Path,
    *,
    k: int = DEFAULT_K,
    rule: str = DEFAULT_TEMPLATE,
    depth: int | None = None,
    resident_bytes: int = RESIDENT_FACES_BYTES,
    scratch_dir: Path | None = None,
    progress: bool = False,
    exact_faces: int = EXACT_FACES,
    shortlist: int = SHORTLIST,
) -> GalleryOpenSet:
    """The open-set statistics of a published version, from its identity store (every face's embedding).

    For the indexer: ``build_open_set_for_store(version_dir / STORE_FILE, k=..., rule=...)
    .save(version_dir / OPEN_SET_FILE)`` before the version is published; ``k`` and ``rule``
    from the bundle's ``open_set_calibration.json`` (:func:`open_set_params`).

    Memory stays bounded: the store is read in chunks, and the faces, regrouped by identity,
    are held in memory only up to ``resident_bytes``; above, they go to a float32 scratch file
    (in ``scratch_dir``, default the system's temporary folder) that the build reads through
    the page cache. Resident: the templates (L x d float32), the cohort (L x depth x 12 bytes)
    and 32 bytes a face of ids (:func:`open_set_build_bytes`). Same result as :func:`build_open_set`.
    """

    with contextlib.ExitStack() as stack:
        store = stack.enter_context(IdentityStore.open(store_path, readonly=True))
        _, keys = store.vector_identity_keys()  # vector id order, as iter_embeddings reads
        unique, owner = np.unique(keys, return_inverse=True)
        del keys
        identity_ids = store.identity_ids_by_key(unique.tolist())
        n, d, n_ids = len(owner), store.d, len(unique)
        counts = np.bincount(owner, minlength=n_ids)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        dest = np.empty(n, np.int64)  # the row of each face once grouped by identity (stable: vector id order)
        dest[np.argsort(owner, kind="stable")] = np.arange(n)
        del owner
        if n * d * 4 <= resident_bytes:
            faces = np.empty((n, d), np.float32)
        else:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="open-set-", dir=scratch_dir)))
            faces = np.lib.format.open_memmap(scratch / "faces.npy", mode="w+", dtype=np.float32, shape=(n, d))
        pos = 0
        with tqdm(total=n, desc="open-set read", unit="face", disable=not progress, dynamic_ncols=True) as bar:
            for _, emb, _ in store.iter_embeddings(_READ_ROWS):
                faces[dest[pos : pos + len(emb)]] = emb
                pos += len(emb)
                bar.update(len(emb))
        if pos != n:
            raise InvalidInputError(f"{store_path}: {pos} faces read, {n} counted", reason=Reason.BAD_GALLERY)
        del dest
        templates = np.empty((n_ids, d), np.float32)
        for lo in range(0, n_ids, _TEMPLATE_IDS):  # sums in float64, as mean_templates
            hi = min(n_ids, lo + _TEMPLATE_IDS)
            sums = np.add.reduceat(
                np.asarray(faces[starts[lo] : starts[hi - 1] + counts[hi - 1]], np.float64),
                starts[lo:hi] - starts[lo],
                axis=0,
            )
            templates[lo:hi] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return from_grouped(
            [str(i) for i in identity_ids],
            Grouped(faces, starts, counts, templates),
            k=k,
            rule=rule,
            depth=depth,
            exact_faces=exact_faces,
            shortlist=shortlist,
            progress=progress,
        )


def open_set_build_bytes(n_faces: int, n_identities: int, d: int, depth: int) -> int:
    """Resident bytes of :func:`build_open_set_for_store` with the faces in a scratch file."""
    return (
        n_identities * d * 4 * 2  # templates, and one float64 block of sums
        + n_identities * depth * 12 * 2  # neighbour rows + scores, and the cohort built from them
        + n_faces * 8 * 4  # keys, owner rows, their order, destination rows
        + BLOCK_ELEMENTS * 4 * 3
        + _READ_ROWS * d * 4 * 2
    )
