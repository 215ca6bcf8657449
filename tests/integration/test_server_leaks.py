"""No gallery leaks through Identify, with scoped tokens on a real server (issue 13): a caller with the
``identify`` scope sees no candidate below the decision threshold (a stranger's reply names nobody),
an operator whose token holds the opt-in ``candidates`` scope sees the ranked candidates below it
(rounded), and neither may loosen the threshold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from server.auth import new_secret, token_line
from server.principal import Scope
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, start_server
from tests.integration.test_server_bounds import reason_of

pytestmark = pytest.mark.slow

ENROLLED = 6


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    return {"app": new_secret(), "ops": new_secret()}


@pytest.fixture(scope="module")
def server(
    server_bundle: Path,
    tmp_path_factory: pytest.TempPathFactory,
    people: dict[str, list[Path]],
    secrets: dict[str, str],
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("leaks")
    tokens = tmp / "tokens"
    tokens.write_text(
        token_line("app", [Scope.IDENTIFY, Scope.ENROLL], secrets["app"])
        + "\n"
        + token_line("ops", [Scope.IDENTIFY, Scope.CANDIDATES], secrets["ops"])
        + "\n"
    )
    srv = start_server(server_bundle, tmp / "index", tmp / "logs", env={"FACESEARCH_AUTH_TOKENS_FILE": str(tokens)})
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.FaceSearchStub(channel)
            for name in list(people)[:ENROLLED]:
                request = pb.EnrollRequest(
                    identity_id=name,
                    images=[pb.EnrollImage(image=people[name][0].read_bytes())],
                    use_largest_face=True,
                )
                stub.Enroll(request, timeout=120, metadata=(("authorization", f"Bearer {secrets['app']}"),))
        yield srv
    finally:
        assert srv.stop() == 0


def _identify(srv: ServerProcess, secret: str, request: pb.IdentifyRequest) -> pb.IdentifyResponse:
    with grpc.insecure_channel(srv.target) as channel:
        return pb_grpc.FaceSearchStub(channel).Identify(
            request, timeout=120, metadata=(("authorization", f"Bearer {secret}"),)
        )


def test_candidates_below_the_threshold_only_for_the_candidates_scope(
    server: ServerProcess, secrets: dict[str, str], people: dict[str, list[Path]]
) -> None:
    stranger = people[list(people)[ENROLLED]][1].read_bytes()
    request = pb.IdentifyRequest(image=stranger, top_k=100, faces=pb.LARGEST_FACE)
    app = _identify(server, secrets["app"], request)
    assert not app.faces[0].HasField("match") and list(app.faces[0].candidates) == []
    ops = _identify(server, secrets["ops"], request)
    shown = ops.faces[0].candidates
    assert not ops.faces[0].HasField("match")
    assert {c.identity_id for c in shown} == set(list(people)[:ENROLLED])  # everyone, ranked, below the threshold
    assert all(c.similarity < ops.threshold.value for c in shown)
    assert [c.similarity for c in shown] == sorted((c.similarity for c in shown), reverse=True)
    assert all(abs(c.similarity * 1000 - round(c.similarity * 1000)) < 1e-3 for c in shown)  # rounded


def test_no_caller_may_loosen_the_threshold(
    server: ServerProcess, secrets: dict[str, str], people: dict[str, list[Path]]
) -> None:
    stranger = people[list(people)[ENROLLED]][1].read_bytes()
    for who in ("app", "ops"):
        with pytest.raises(grpc.RpcError) as err:
            _identify(server, secrets[who], pb.IdentifyRequest(image=stranger, min_similarity=-1.0))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err.value) == "THRESHOLD_BELOW_FLOOR"
