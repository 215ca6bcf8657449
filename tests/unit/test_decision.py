"""The one decision rule: the server and the evaluation code decide alike, at the threshold itself
and at the thresholds evaluation measures; FPIR <-> FMR; the closed sets reach the wire unchanged."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.errors import InvalidInputError
from facesearch.evaluation.ident import Searches, det_curve, fnir_at, fpir_at, threshold_at_fpir
from facesearch.scoring.decision import (
    CalibratedThreshold,
    DecisionThreshold,
    ScoredCandidate,
    ScoreKind,
    ThresholdKind,
    ThresholdScale,
    VerifyDecision,
    decide,
    fmr_for_fpir,
    fpir_for_fmr,
    just_above,
    matches,
    verify_decision,
)
from facesearch.scoring.gallery_stats import GalleryOpenSet
from server import convert
from server.open_set_state import OpenSetState
from server.search import Candidate
from server.service import FaceSearchService, VerifyResult

T = 0.8125  # exactly representable: the score sits on the threshold, not a rounding of it


def threshold(value: float, score_kind: ScoreKind = ScoreKind.RAW) -> DecisionThreshold:
    return DecisionThreshold(ThresholdKind.MIN_SIMILARITY, value, score_kind, 1, None, None, False, "test")


def server_identify(score: float, t: DecisionThreshold) -> bool:
    """Whether the server's Identify path matches one candidate scoring ``score`` (raw and normalised alike)."""
    state = SimpleNamespace(
        search=lambda queries, limit: [[Candidate("a", "A", score, "1")] for _ in queries],
        open_set=OpenSetState(GalleryOpenSet.empty(4, k=4)),  # no statistics: normalised == template == raw
    )
    (face,) = FaceSearchService._search_and_decide(state, [None], np.zeros((1, 4), np.float32), top_k=5, threshold=t)
    # a reply lists candidates at or above the threshold only (no leaks below it without the candidates scope)
    assert [c.identity_id for c in face.candidates] == (["a"] if face.match is not None else [])
    return face.match is not None


def evaluation_counts(score: float, t: float) -> tuple[bool, bool]:
    """(a mated rank-1 search scoring ``score`` is a hit, a non-mated one is a false positive) at ``t``."""
    mated = Searches(np.array([True]), np.array([1]), np.array([score]))
    nonmated = Searches(np.array([False]), np.array([0]), np.array([score]))
    return fnir_at(mated, t) == 0.0, fpir_at(nonmated, t) == 1.0


@pytest.mark.parametrize("kind", list(ScoreKind))
def test_a_score_equal_to_the_threshold_matches_in_the_server_and_in_evaluation(kind: ScoreKind) -> None:
    below = float(np.nextafter(T, -np.inf))
    assert matches(T, T) and not matches(below, T)
    assert server_identify(T, threshold(T, kind)) and not server_identify(below, threshold(T, kind))
    assert evaluation_counts(T, T) == (True, True)
    assert evaluation_counts(below, T) == (False, False)
    assert verify_decision(T, threshold(T)) is VerifyDecision.SAME
    assert verify_decision(below, threshold(T)) is VerifyDecision.DIFFERENT
    calibrated = CalibratedThreshold(T, ThresholdScale.NORMALISED, 0.01, None, 100, False, "test")
    assert decide([ScoredCandidate("a", 0.5, 0.5, T)], calibrated).match is not None


def test_measured_thresholds_are_applied_by_the_server_as_measured() -> None:
    """An empirical FPIR threshold, applied by the server's rule, rejects exactly what evaluation counted
    as rejected, ties at the boundary score included."""
    rng = np.random.default_rng(0)
    top = rng.normal(size=2000).round(2)  # many ties
    searches = Searches(np.zeros(len(top), bool), np.zeros(len(top), int), top)
    for fpir in (0.1, 0.01, 0.005):
        t = threshold_at_fpir(top, fpir)
        by_server = sum(decide([ScoredCandidate("x", s, s, s)], threshold(t)).match is not None for s in top)
        assert by_server == round(fpir_at(searches, t) * len(top)) <= math.floor(fpir * len(top))
        boundary = np.sort(top)[::-1][math.floor(fpir * len(top))]
        assert t == just_above(boundary) and not matches(boundary, t)
        assert matches(float(np.min(top[top > boundary])), t)  # the next score up is a false positive


def test_det_points_are_thresholds_the_server_can_apply() -> None:
    rng = np.random.default_rng(1)
    top = np.r_[rng.normal(2.0, 1.0, 200), rng.normal(0.0, 1.0, 200)].round(1)
    s = Searches(np.r_[np.ones(200, bool), np.zeros(200, bool)], np.r_[np.ones(200, int), np.zeros(200, int)], top)
    thresholds, fpir, _ = det_curve(s)
    for t, rate in zip(thresholds, fpir, strict=True):
        assert rate == np.mean(
            [decide([ScoredCandidate("x", v, v, v)], threshold(t)).match is not None for v in top[200:]]
        )


def test_faceless_searches_never_match_a_measured_threshold() -> None:
    top = np.array([-np.inf, -np.inf, 0.3])
    t = threshold_at_fpir(top, 0.99)
    assert math.isfinite(t) and not matches(-np.inf, t)


def test_fpir_and_fmr_convert_both_ways() -> None:
    assert fpir_for_fmr(1e-3, 1000) == pytest.approx(1 - (1 - 1e-3) ** 1000)
    assert fpir_for_fmr(1e-12, 10) == pytest.approx(1e-11, rel=1e-9)  # tiny rates keep their precision
    assert fmr_for_fpir(0.01, 1000) == pytest.approx(1.005e-5, rel=1e-3)
    for n in (1, 7, 150, 10**7):
        assert fmr_for_fpir(fpir_for_fmr(1e-6, n), n) == pytest.approx(1e-6, rel=1e-9)
    assert fpir_for_fmr(0.2, 0) == fpir_for_fmr(0.2, 1) == pytest.approx(0.2)  # Verify: one comparison
    assert fpir_for_fmr(1.0, 5) == 1.0
    with pytest.raises(InvalidInputError):
        fmr_for_fpir(1.0, 10)
    with pytest.raises(InvalidInputError):
        fpir_for_fmr(-0.1, 10)


def test_closed_sets_reach_the_wire_by_explicit_tables() -> None:
    for decision in VerifyDecision:
        msg = convert.verify_response(VerifyResult(decision, 0.0, threshold(0.9), None, None, ""))
        assert pb.VerifyDecision.Name(msg.decision) == decision.value
        assert msg.same == (decision is VerifyDecision.SAME)
    for kind in ThresholdKind:
        for score_kind in ScoreKind:
            t = DecisionThreshold(kind, 0.5, score_kind, 3, None, None, False, "")
            msg = convert.decision_threshold(t)
            assert pb.ThresholdKind.Name(msg.kind) == f"THRESHOLD_KIND_{kind.value.upper()}"
            assert pb.ScoreKind.Name(msg.score_kind) == f"SCORE_KIND_{score_kind.value.upper()}"
    assert [k.value for k in ThresholdScale] == ["cosine", "normalised"]  # eval ident's report.json names
    assert ThresholdScale.COSINE.score_kind is ScoreKind.RAW
    assert ThresholdScale.NORMALISED.score_kind is ScoreKind.NORMALISED
