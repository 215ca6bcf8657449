"""Request validation and opaque page tokens at the protobuf edge."""

from __future__ import annotations

import pytest

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.errors import InvalidInputError
from server import convert


def test_page_tokens_round_trip_and_are_opaque() -> None:
    token = convert.encode_page_token("alice/ü")
    assert "alice" not in token
    assert convert.decode_page_token(token) == "alice/ü"
    assert convert.decode_page_token("") == ""
    for bad in ("nope", "e30", convert.encode_page_token("x")[:-2] + "!!"):
        with pytest.raises(InvalidInputError) as err:
            convert.decode_page_token(bad)
        assert err.value.reason == "BAD_PAGE_TOKEN"


def test_identify_query_defaults_and_limits() -> None:
    q = convert.identify_query(pb.IdentifyRequest(image=b"x"))
    assert q.top_k == 5 and q.min_similarity is None and not q.largest_only
    q = convert.identify_query(pb.IdentifyRequest(image=b"x", top_k=3, min_similarity=0.0, faces=pb.LARGEST_FACE))
    assert q.top_k == 3 and q.min_similarity == 0.0 and q.largest_only  # an explicit 0.0 is kept
    assert q.max_fpir is None and q.max_fmr is None
    q = convert.identify_query(
        pb.IdentifyRequest(image=b"x", max_false_positive_identification_rate=0.01, max_false_match_rate=1e-5)
    )
    assert q.max_fpir == 0.01 and q.max_fmr == 1e-5 and q.min_similarity is None
    with pytest.raises(InvalidInputError):
        convert.identify_query(pb.IdentifyRequest(image=b"x", top_k=101))
    with pytest.raises(InvalidInputError) as err:
        convert.identify_query(pb.IdentifyRequest())
    assert err.value.reason == "IMAGE_EMPTY"


@pytest.mark.parametrize("bad", ["", "a\x00b", "tab\there", "x" * 257])
def test_identity_ids_are_validated(bad: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        convert.identity_id(bad)
    assert err.value.reason == "BAD_IDENTITY_ID"


def test_verify_needs_a_reference() -> None:
    with pytest.raises(InvalidInputError) as err:
        convert.verify_query(pb.VerifyRequest(image=b"x"))
    assert err.value.reason == "NO_REFERENCE"
    q = convert.verify_query(pb.VerifyRequest(image=b"x", identity_id="bob"))
    assert q.identity_id == "bob" and q.reference_image is None


def test_enroll_metadata_limits() -> None:
    req = pb.EnrollRequest(
        identity_id="a", images=[pb.EnrollImage(image=b"x")], metadata={f"k{i}": "v" for i in range(65)}
    )
    with pytest.raises(InvalidInputError) as err:
        convert.enroll_query(req)
    assert err.value.reason == "BAD_METADATA"
