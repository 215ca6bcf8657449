"""Open-set decisions end to end, on a bundle calibrated by ``facesearch eval calibrate`` (on 330
other lfw-dev people: out of sample, galleries up to 165): a real server, a published index of
140 lfw-dev people plus four more enrolled live, Identify and StreamIdentify (through the CLI)
with max_fpir / max_fmr / defaults, and what the replies say about the threshold. A gallery below
the open-set calibration's size decides on raw cosine, holding the same default FPIR.

The module's server takes scoped tokens and the tests call it as an operator whose token holds the
``candidates`` scope, so replies rank the candidates below the threshold too (what these tests look
at); a plain ``identify`` caller sees none of them: tests/integration/test_server_leaks.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.cli import client_commands
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import InvalidInputError
from facesearch.scoring.decision import fmr_for_fpir
from facesearch.scoring.open_set_calibration import load_open_set_calibration
from server.auth import new_secret, token_line
from server.principal import Scope
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, build_index, start_server

pytestmark = pytest.mark.slow

ENROLLED = 4  # the first people of the fixture are enrolled; the last four are strangers
OPERATOR = new_secret()  # admin + candidates: replies list the candidates below the threshold too


@pytest.fixture(scope="module")
def server(
    calibrated_bundle: Path,
    people: dict[str, list[Path]],
    lfw_gallery: tuple[np.ndarray, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> ServerProcess:
    root = tmp_path_factory.mktemp("decisions")
    contract = ModelBundle.load(calibrated_bundle, verify=False).contract_id
    emb, names = lfw_gallery
    build_index(root / "index", emb, names, contract, work=root / "work")
    tokens = root / "tokens"
    tokens.write_text(token_line("operator", [Scope.ADMIN, Scope.CANDIDATES], OPERATOR) + "\n")
    srv = start_server(
        calibrated_bundle, root / "index", root / "logs", env={"FACESEARCH_AUTH_TOKENS_FILE": str(tokens)}
    )
    with srv.client(token=OPERATOR) as c:
        for name in list(people)[:ENROLLED]:
            assert c.enroll(name, people[name][:3], use_largest_face=True).face_ids
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> FaceSearchClient:
    with server.client(token=OPERATOR) as c:
        yield c


@pytest.fixture(autouse=True)
def operator_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESEARCH_TOKEN", OPERATOR)  # the CLI's bearer token


def default_fpir(bundle: Path) -> float:
    """The FPIR the bundle's default decision promises at every gallery size."""
    calibration = load_open_set_calibration(bundle)
    assert calibration is not None
    return calibration.default_fpir


def split(people: dict[str, list[Path]]) -> tuple[list[str], list[str]]:
    names = list(people)
    return names[:ENROLLED], names[ENROLLED:]


def test_stranger_is_unknown_and_enrolled_people_are_identified_at_max_fpir(
    client: FaceSearchClient, people: dict[str, list[Path]], calibrated_bundle: Path
) -> None:
    enrolled, strangers = split(people)
    gallery = client.stats()["identities"]
    cal = load_open_set_calibration(calibrated_bundle)
    assert cal is not None and gallery >= cal.min_gallery  # large enough for the normalised decision
    # calibrated (out of sample: other lfw-dev people) on galleries up to half its ~330 identities:
    # the served gallery's size is inside the table, so FPIR 1% is read off it, not extrapolated
    assert cal.curves[-2].gallery_size < gallery <= cal.max_gallery
    for name in strangers:
        for photo in people[name][:2]:
            r = client.identify(photo, largest_only=True, max_fpir=0.01)
            t = r.threshold
            assert (t.kind, t.score_kind, t.gallery_size) == ("max_fpir", "normalised", gallery)
            assert t.fpir == pytest.approx(0.01) and t.fmr == pytest.approx(1 - 0.99 ** (1 / gallery))
            assert "FPIR 1% at gallery size" in t.reason and "held at the largest" not in t.reason
            assert not t.capped
            face = r.faces[0]
            assert face.match is None, (name, face.candidates[:2])  # a stranger is unknown
            assert face.candidates and all(c.normalised_score is not None for c in face.candidates)
            assert face.candidates[0].normalised_score <= t.value  # (both rounded to 3 decimals)
    hits, wrong = 0, []
    for name in enrolled:
        for photo in people[name][3:5]:
            face = client.identify(photo, largest_only=True, max_fpir=0.01).faces[0]
            top = face.candidates[0]
            assert top.identity_id == name  # rank 1 is right for every probe
            scores = [c.normalised_score for c in face.candidates]
            assert scores == sorted(scores, reverse=True)  # ranked by the score the decision is on
            d = top.details
            assert d is not None and d.probe_cohort_mean is not None and d.identity_cohort_mean is not None
            assert top.normalised_score == pytest.approx(
                d.identity_similarity - (d.probe_cohort_mean + d.identity_cohort_mean) / 2,
                abs=2e-3,  # rounded
            )
            hits += face.match is not None and face.match.identity_id == name
            if face.match is not None and face.match.identity_id != name:
                wrong.append((photo, face.match.identity_id))
    assert not wrong  # never a wrong name
    # of 8 probes at FPIR 1%: 5 here. bench/results/open_set.md measures FNIR ~23% at a calibrated FPIR 1%
    # on lfw-dev (~6 of 8 expected; 5 or fewer has probability ~0.28 at that rate)
    assert hits >= 5, hits


def test_defaults_and_other_threshold_kinds(
    client: FaceSearchClient, people: dict[str, list[Path]], calibrated_bundle: Path
) -> None:
    enrolled, strangers = split(people)
    stats = client.stats()
    assert stats["cohort_k"] == 4 and stats["template_rule"] == "both"
    promise = default_fpir(calibrated_bundle)
    assert stats["default_fpir"] == pytest.approx(promise) and "at every gallery size" in stats["threshold_note"]
    default = stats["default_threshold"]
    assert default.score_kind == 2 and default.kind == 4 and "default FPIR" in default.reason  # NORMALISED, DEFAULT
    assert default.fpir == pytest.approx(promise)
    probe = people[enrolled[0]][3]
    r = client.identify(probe, largest_only=True)
    assert (r.threshold.kind, r.threshold.score_kind) == ("default", "normalised")
    assert r.threshold.value == pytest.approx(default.value)
    strict = client.identify(probe, largest_only=True, max_fmr=1e-9)
    assert strict.threshold.kind == "max_fmr" and strict.threshold.capped
    assert "not guaranteed" in strict.threshold.reason
    both = client.identify(probe, largest_only=True, max_fpir=0.5, max_fmr=1e-7)  # the stricter wins
    assert both.threshold.kind == "max_fmr"
    with pytest.raises(InvalidInputError) as floor:  # looser than the default (FPIR 97% at this size)
        client.identify(probe, largest_only=True, min_similarity=0.9)
    assert floor.value.reason == "THRESHOLD_BELOW_FLOOR" and "normalised score" in floor.value.message
    raw = client.identify(probe, largest_only=True, min_similarity=0.95)  # the cosine of an FMR below the floor's
    t = raw.threshold
    assert (t.kind, t.score_kind, t.value) == ("min_similarity", "raw", pytest.approx(0.95))
    # what the cosine stands for, from calibration.json (unknown above the strictest threshold it measured)
    assert t.fmr is None or t.fmr < 1e-3
    sims = [c.similarity for c in raw.faces[0].candidates]
    assert sims == sorted(sims, reverse=True)  # ranked by raw similarity
    for bad in ({"max_fpir": 0.01, "min_similarity": 0.9}, {"max_fpir": 0.0}, {"max_fmr": 2.0}):
        with pytest.raises(InvalidInputError) as err:
            client.identify(probe, **bad)  # type: ignore[arg-type]
        assert err.value.reason in ("BAD_THRESHOLD", "BAD_FPIR", "BAD_FMR")
    with pytest.raises(InvalidInputError) as floor:  # Verify's floor: the default FMR's threshold
        client.verify(people[enrolled[0]][3], reference_image=people[enrolled[0]][4], max_fmr=1e-2)
    assert floor.value.reason == "THRESHOLD_BELOW_FLOOR"
    same = client.verify(people[enrolled[0]][3], reference_image=people[enrolled[0]][4], max_fmr=1e-5)
    assert same.threshold is not None and same.threshold.kind == "max_fmr" and same.threshold.gallery_size == 1
    assert same.min_similarity == pytest.approx(same.threshold.value)
    assert not client.verify(people[strangers[0]][0], identity_id=enrolled[0], max_fmr=1e-5).same


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="facesearch")
    sub = parser.add_subparsers(dest="command", required=True)
    client_commands.register(sub)
    result = client_commands.dispatch(parser.parse_args(argv))
    assert result is not None
    return result


def test_cli_max_fpir_and_max_fmr(
    server: ServerProcess, people: dict[str, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    enrolled, strangers = split(people)
    photos = [str(people[enrolled[1]][3]), str(people[strangers[1]][0])]
    assert cli(["identify", "--json", "--largest-only", "--max-fpir", "0.01", "--target", server.target, *photos]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert [r["path"] for r in rows] == photos
    for row in rows:
        face = row["faces"][0]
        assert set(face) == {"box", "detection_score", "match", "candidates", "threshold"}
        assert set(face["threshold"]) == {
            "kind",
            "value",
            "score_kind",
            "gallery_size",
            "fmr",
            "fpir",
            "capped",
            "reason",
        }
        assert face["threshold"]["kind"] == "max_fpir" and face["threshold"]["score_kind"] == "normalised"
        assert face["threshold"]["fpir"] == pytest.approx(0.01)
        for c in face["candidates"]:
            assert set(c) == {"identity_id", "name", "similarity", "face_id", "normalised_score"}
            assert isinstance(c["normalised_score"], float)
    assert rows[1]["faces"][0]["match"] is None  # the stranger
    assert cli(["identify", "--max-fmr", "1e-6", "--largest-only", "--target", server.target, photos[0]]) == 0
    assert "normalised" in capsys.readouterr().out


def test_small_gallery_decides_on_raw_cosine(
    calibrated_bundle: Path, people: dict[str, list[Path]], tmp_path: Path
) -> None:
    enrolled, strangers = split(people)
    srv = start_server(calibrated_bundle, tmp_path / "index", tmp_path / "logs")  # no published version
    try:
        with srv.client() as c:
            for name in enrolled[:2]:
                c.enroll(name, people[name][:3], use_largest_face=True)
            r = c.identify(people[enrolled[0]][3], largest_only=True, max_fpir=0.01)
            t = r.threshold
            assert (t.kind, t.score_kind, t.gallery_size) == ("max_fpir", "raw", 2)
            assert "below the normalised calibration" in t.reason and t.fmr is not None
            assert r.faces[0].match is not None and r.faces[0].match.identity_id == enrolled[0]
            assert r.faces[0].match.similarity >= t.value
            assert r.faces[0].candidates[0].normalised_score is not None  # reported, though not decided on
            assert c.identify(people[strangers[0]][0], largest_only=True, max_fpir=0.01).faces[0].match is None
            # the default holds the same FPIR as on a large gallery: raw cosine at FMR 1 - (1 - FPIR)^(1/2)
            stats = c.stats()
            promise = default_fpir(calibrated_bundle)
            default = stats["default_threshold"]
            assert stats["default_fpir"] == pytest.approx(promise)
            assert default.score_kind == 1 and default.fpir == pytest.approx(promise)  # RAW
            assert default.fmr == pytest.approx(fmr_for_fpir(promise, 2)) and "default FPIR" in default.reason
            d = c.identify(people[enrolled[1]][3], largest_only=True).threshold
            assert (d.kind, d.score_kind, d.value) == ("default", "raw", pytest.approx(default.value))
    finally:
        assert srv.stop() == 0
