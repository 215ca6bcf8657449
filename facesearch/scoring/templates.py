"""Identity templates: scoring a person with several enrolled faces as one.

Rules (:class:`TemplateRule`; its values are the names in ``open_set_calibration.json``,
``open_set.npz`` and GetStats), chosen between by measurement (bench/results/open_set.md;
``both`` won, quality weighting of the mean did not help):

- ``best``: the identity's score is its most similar face (what the index returns when
  results are collapsed per identity);
- ``mean``: the score against the identity's mean embedding, re-normalised (optionally a
  quality-weighted mean);
- ``both``: the average of the two.

Gallery-vs-gallery similarities (for the cohort statistics) use the same rule, so a
normalised score compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from facesearch.errors import InvalidInputError, Reason


class TemplateRule(StrEnum):
    """How an identity with several faces is scored."""

    BEST = "best"
    MEAN = "mean"
    BOTH = "both"


TEMPLATE_MODES = tuple(rule.value for rule in TemplateRule)
#: Measured best on lfw-dev with two enrolled photos per person (bench/results/open_set.md).
DEFAULT_TEMPLATE = TemplateRule.BOTH


def template_rule(value: str) -> TemplateRule:
    """``value`` as a :class:`TemplateRule`; InvalidInputError (BAD_CONFIG) naming the rules otherwise."""
    try:
        return TemplateRule(value)
    except ValueError:
        raise InvalidInputError(
            f"template rule must be one of {TEMPLATE_MODES}, got {value!r}", reason=Reason.BAD_CONFIG
        ) from None


@dataclass(frozen=True, slots=True)
class TemplateGallery:
    """Enrolled faces grouped into identities (rows of ``templates`` follow ``identities``)."""

    identities: np.ndarray  # (L,) identity labels, sorted unique
    faces: np.ndarray  # (n, d) L2-normalised face embeddings
    face_identity: np.ndarray  # (n,) row of each face's identity in ``identities``
    templates: np.ndarray  # (L, d) L2-normalised (weighted) mean embeddings


def mean_templates(
    faces: np.ndarray, face_identity: np.ndarray, count: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Per identity, the L2-normalised (weighted) mean of its faces' embeddings."""
    w = np.ones(len(faces)) if weights is None else np.asarray(weights, np.float64)
    sums = np.zeros((count, faces.shape[1]))
    np.add.at(sums, face_identity, faces * w[:, None])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def build_gallery(faces: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> TemplateGallery:
    """Group faces by label; ``weights`` (per face, >= 0) make the mean template quality-weighted."""
    faces = np.asarray(faces, np.float32)
    if faces.ndim != 2 or len(faces) != len(labels):
        raise InvalidInputError("faces must be (n, d) with one label per face", reason=Reason.BAD_GALLERY)
    identities, face_identity = np.unique(np.asarray(labels), return_inverse=True)
    templates = mean_templates(faces, face_identity, len(identities), weights)
    return TemplateGallery(identities=identities, faces=faces, face_identity=face_identity, templates=templates)


def best_face_scores(probes: np.ndarray, gallery: TemplateGallery, chunk: int = 1024) -> np.ndarray:
    """(q, L): each probe's best cosine against each identity's faces."""
    out = np.full((len(probes), len(gallery.identities)), -np.inf, np.float32)
    order = np.argsort(gallery.face_identity, kind="stable")
    sorted_ids = gallery.face_identity[order]
    faces = gallery.faces[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    for lo in range(0, len(probes), chunk):
        sims = probes[lo : lo + chunk] @ faces.T
        out[lo : lo + chunk, sorted_ids[starts]] = np.maximum.reduceat(sims, starts, axis=1)
    return out


def identity_scores(probes: np.ndarray, gallery: TemplateGallery, mode: str = "best") -> np.ndarray:
    """(q, L) raw identity scores of probes under a template rule."""
    rule = template_rule(mode)
    probes = np.asarray(probes, np.float32)
    if rule is TemplateRule.MEAN:
        return probes @ gallery.templates.T
    best = best_face_scores(probes, gallery)
    return best if rule is TemplateRule.BEST else 0.5 * (best + probes @ gallery.templates.T)


def gallery_scores(gallery: TemplateGallery, mode: str = "best") -> np.ndarray:
    """(L, L) identity-vs-identity scores under the same rule; the diagonal is -inf.

    ``best`` is the best pair of faces; ``mean`` the template cosine; ``both`` their average.
    """
    count = len(gallery.identities)
    rule = template_rule(mode)
    if rule is TemplateRule.MEAN:
        out = gallery.templates @ gallery.templates.T
    else:
        per_face = best_face_scores(gallery.faces, gallery)  # (n, L)
        best = np.full((count, count), -np.inf, np.float32)
        np.maximum.at(best, gallery.face_identity, per_face)
        out = best if rule is TemplateRule.BEST else 0.5 * (best + gallery.templates @ gallery.templates.T)
    out = np.asarray(out, np.float32).copy()
    np.fill_diagonal(out, -np.inf)
    return out


def quality_weights(
    face_size: np.ndarray, blur: np.ndarray, *, size_ref: float = 80.0, blur_ref: float = 100.0
) -> np.ndarray:
    """A weight in (0, 1] per face from its quality signals: small or blurred faces count less.

    ``min(1, size/size_ref) * min(1, blur/blur_ref)``, floored at 0.05 so no face vanishes.
    """
    size_w = np.clip(np.asarray(face_size, np.float64) / size_ref, 0.0, 1.0)
    blur_w = np.clip(np.asarray(blur, np.float64) / blur_ref, 0.0, 1.0)
    return np.maximum(size_w * blur_w, 0.05)
