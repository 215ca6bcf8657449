"""Error reasons are declared once (facesearch.reasons) and agree with the proto, the error classes
and the one gRPC mapping (server/errors.py); an unknown reason fails loudly; the client keeps what a
server sent."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grpc
import pytest

from facesearch import errors
from facesearch.client.service_client import RpcFailedError, reported_error
from facesearch.errors import ErrorCode, FaceSearchError, InvalidInputError, NotFoundError, Reason
from server.errors import STATUS, reason_status, status_of

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("facesearch", "server", "indexer", "export", "training")
STATUS_NAMES = "|".join(code.name for code in ErrorCode)
NAME = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"
# Raise sites whose class code differs from the reason's, on purpose (see facesearch/reasons.py).
KNOWN_MISMATCHES = {("PreconditionError", "BAD_CONFIG")}


def _proto_comments() -> str:
    lines = [line for p in sorted((REPO / "proto").rglob("*.proto")) for line in p.read_text().splitlines()]
    return " ".join(line.split("//", 1)[1].strip() for line in lines if "//" in line)


def documented_reasons() -> tuple[dict[str, set[str]], set[str]]:
    """``({reason: {status names the proto pairs it with}}, every reason the proto names)``.

    The proto writes ``NOT_FOUND (reason IDENTITY_NOT_FOUND)``, ``FAILED_PRECONDITION
    (NO_CALIBRATION)``, ``INVALID_ARGUMENT with reason IMAGE_TOO_LARGE``, and lists examples as
    ``reason ..., e.g. IMAGE_UNDECODABLE, IDENTITY_NOT_FOUND``.
    """
    text = _proto_comments()
    paired: dict[str, set[str]] = {}
    for status, reason in re.findall(rf"\b({STATUS_NAMES})\s+(?:\((?:reason\s+)?|with reason\s+)({NAME})", text):
        paired.setdefault(reason, set()).add(status)
    named = set(paired) | set(re.findall(rf"\breason\s+({NAME})", text))
    for examples in re.findall(rf"\breason\b[^;]{{0,60}}?e\.g\.\s+((?:{NAME}(?:,\s*)?)+)", text):
        named |= set(re.findall(NAME, examples))
    return paired, named


def test_every_reason_the_proto_documents_exists_with_its_status() -> None:
    paired, named = documented_reasons()
    # the parse finds what the proto says today (so this test cannot pass by finding nothing)
    assert {"IMAGE_TOO_LARGE", "IMAGE_UNDECODABLE", "IDENTITY_NOT_FOUND", "CONTRACT_MISMATCH"} <= named
    assert paired["NO_CALIBRATION"] == {"FAILED_PRECONDITION"} and paired["IDENTITY_EXISTS"] == {"ALREADY_EXISTS"}
    assert sorted(named - set(Reason)) == []
    for reason, statuses in paired.items():
        assert statuses == {Reason(reason).code.name}, reason


def test_every_reason_maps_to_a_grpc_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    for code, status in STATUS.items():
        assert status.name == code.name and status != grpc.StatusCode.OK
    for reason in Reason:
        assert reason_status(reason) == (STATUS[reason.code], reason)
        assert reason.value == reason.name and reason.meaning and "\n" not in reason.meaning
    # a client falling back to a status's name always finds a reason
    assert {s.name for s in grpc.StatusCode if s != grpc.StatusCode.OK} <= set(Reason.__members__)


def test_an_unknown_reason_fails_loudly_and_a_known_string_becomes_the_member() -> None:
    with pytest.raises(ValueError, match="BAD_IMAGE"):
        InvalidInputError("x", reason="BAD_IMAGE")
    with pytest.raises(ValueError):
        Reason("bad_top_k")
    err = InvalidInputError("x", reason="BAD_TOP_K")
    assert err.reason is Reason.BAD_TOP_K and err.reason == "BAD_TOP_K" and f"{err.reason}" == "BAD_TOP_K"
    assert NotFoundError("x").reason is Reason.NOT_FOUND
    assert status_of(NotFoundError("x", reason=Reason.FACE_NOT_FOUND)) == (grpc.StatusCode.NOT_FOUND, "FACE_NOT_FOUND")


def test_each_error_class_default_reason_has_the_class_code() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, FaceSearchError)]
    assert len(classes) > 10
    for cls in classes:
        assert cls.default_reason.code == cls.code, cls.__name__


def _literal_reason(value: ast.expr) -> str | None:
    """``X`` of ``Reason.X``, or of the old spelling ``"X"`` (until every site names a member)."""
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "Reason":
        return value.attr
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    return None


def _raise_sites() -> list[tuple[str, str, str]]:
    """``(class, reason, where)`` of every ``SomeError(..., reason=...)`` naming a literal reason."""
    classes = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, FaceSearchError)}
    sites = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "facesearch/api/" in path.as_posix():
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                    reasons = [_literal_reason(kw.value) for kw in node.keywords if kw.arg == "reason"]
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    sites += [(node.func.id, r, where) for r in reasons if r is not None]
    return sites


def test_every_raise_site_names_a_reason_of_its_class_code() -> None:
    sites = _raise_sites()
    assert len(sites) > 100
    unknown = [where for _, reason, where in sites if reason not in Reason.__members__]
    assert unknown == []
    mismatched = {
        (cls, reason): where
        for cls, reason, where in sites
        if (cls, reason) not in KNOWN_MISMATCHES and getattr(errors, cls).code != Reason[reason].code
    }
    assert mismatched == {}


def test_the_client_keeps_a_servers_reason() -> None:
    known = reported_error(grpc.StatusCode.NOT_FOUND, "gone", "IDENTITY_NOT_FOUND")
    assert isinstance(known, NotFoundError) and known.reason is Reason.IDENTITY_NOT_FOUND
    newer = reported_error(grpc.StatusCode.INVALID_ARGUMENT, "new", "SOME_FUTURE_REASON")
    assert isinstance(newer, InvalidInputError) and newer.reason == "SOME_FUTURE_REASON"
    assert reported_error(grpc.StatusCode.INVALID_ARGUMENT, "x", "").reason is Reason.INVALID_ARGUMENT
    transport = reported_error(grpc.StatusCode.UNAVAILABLE, "down", None)
    assert isinstance(transport, RpcFailedError) and transport.reason is Reason.UNAVAILABLE
