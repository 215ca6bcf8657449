"""The gallery's open-set statistics as requests see them, and scoring one face's candidates.

Each :class:`~server.gallery.GalleryState` owns one :class:`OpenSetState`: the templates and
cohort of exactly the identities it serves. Requests read a few rows under :attr:`OpenSetState.lock`
(microseconds); the gallery's writer changes them under the same lock after computing the
change without it (:mod:`server.open_set_upkeep`).

A candidate's scores (:class:`facesearch.scoring.decision.ScoredCandidate`):

- ``similarity``: raw cosine with the identity's most similar face (what the search returns);
- ``identity_similarity``: the identity's score under the template rule (``both``: the average
  of ``similarity`` and the cosine with the identity's mean embedding);
- ``normalised``: ``identity_similarity - (probe_mean + identity_mean) / 2``
  (:func:`facesearch.scoring.normalise.normalise_candidates`): the probe's mean over its top-k
  *other* candidates, and the identity's stored cohort mean. A missing side (no other candidate;
  an identity whose statistics are being refreshed) is left out.

The probe side is taken over the search's shortlist (ranked by best face, at least
``4 (k + 1)`` identities), not the whole gallery: a gallery identity outside that shortlist can
only matter to the probe's top-k by its template score, which tracks its best-face score closely.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from facesearch.scoring.decision import ScoredCandidate
from facesearch.scoring.gallery_stats import GalleryOpenSet, combine
from facesearch.scoring.normalise import finite_or_none, normalise_candidates
from server.search import Candidate

log = logging.getLogger(f"facesearch.{__name__}")


class OpenSetState:
    """Templates + cohort of one gallery state; see the module notes for who may touch what."""

    def __init__(self, data: GalleryOpenSet) -> None:
        self.data = data
        self.lock = threading.Lock()
        self.failure: str | None = None  # set when an update failed: normalised scores are off

    @property
    def ready(self) -> bool:
        return self.failure is None

    @property
    def k(self) -> int:
        return self.data.k

    @property
    def rule(self) -> str:
        return self.data.rule

    @property
    def gallery_size(self) -> int:
        """Identities with at least one face (the N of the decision)."""
        return len(self.data.cohort)

    def shortlist(self, top_k: int) -> int:
        """How many identities a search should return for ``top_k`` candidates to be scored well."""
        return max(top_k, 4 * (self.data.k + 1))

    def fail(self, why: str) -> None:
        log.error("open-set statistics disabled: %s; decisions use raw cosine until the next index version", why)
        self.failure = why

    def lookup(self, identity_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(templates (m, d), known (m,), cohort means (m,))`` of some identities."""
        with self.lock:
            templates, known = self.data.templates.get(identity_ids)
            means = self.data.cohort.means(identity_ids)
        return templates, known, means

    def score(self, probe: np.ndarray, candidates: Sequence[Candidate]) -> list[ScoredCandidate]:
        """Scores of one probe's candidates, in the given order."""
        if not candidates:
            return []
        if not self.ready:
            return [
                ScoredCandidate(c.identity_id, c.similarity, c.similarity, None, name=c.name, face_id=c.face_id)
                for c in candidates
            ]
        ids = [c.identity_id for c in candidates]
        templates, known, means = self.lookup(ids)
        best = np.array([c.similarity for c in candidates], np.float64)
        ident = np.where(known, combine(best, templates @ np.asarray(probe, np.float32), self.rule), best)
        z, probe_means = normalise_candidates(ident, means, self.k)
        return [
            ScoredCandidate(
                c.identity_id,
                c.similarity,
                float(ident[i]),
                float(z[i]),
                finite_or_none(probe_means[i]),
                finite_or_none(means[i]),
                c.name,
                c.face_id,
            )
            for i, c in enumerate(candidates)
        ]
