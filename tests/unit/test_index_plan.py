"""Pure sizing: sizes, index choice from n and the memory budget, failing early with the knob."""

from __future__ import annotations

import pytest

from facesearch.errors import InvalidInputError, MemoryBudgetError
from indexer.plan import IndexOptions, choose_nlist, plan_index
from indexer.sizes import format_size, parse_size

G = 1 << 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 * G),
        ("512M", 512 << 20),
        ("1.5G", int(1.5 * G)),
        ("64k", 64 << 10),
        ("2GiB", 2 * G),
        ("100", 100),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "eight", "-1G", "0"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_size(text)


def test_format_size_round_trips_roughly() -> None:
    assert format_size(3 * G) == "3.00G"
    assert parse_size(format_size(1234567890)) == pytest.approx(1234567890, rel=0.01)


def test_small_gallery_is_exact_flat() -> None:
    plan = plan_index(10_000, 128, 1 * G)
    assert plan.kind == "flat" and plan.factory == "IDMap,Flat" and plan.nlist == 0


def test_nlist_grows_with_sqrt_n() -> None:
    assert choose_nlist(1_000_000) == 1024
    assert choose_nlist(10_000_000) == 4096
    assert choose_nlist(100_000_000) == 8192
    assert choose_nlist(60_000) == 256
    assert choose_nlist(10) == 256


def test_million_faces_with_room_get_exact_reranking() -> None:
    plan = plan_index(1_000_000, 128, 8 * G)
    assert plan.kind == "ivf" and plan.nlist == 1024 and plan.refine == "flat"
    assert plan.factory == "IVF1024,PQ64x4fs" and not plan.hnsw_quantizer
    assert plan.peak_bytes <= 8 * G


def test_tighter_budget_picks_a_smaller_reranking_store() -> None:
    roomy = plan_index(10_000_000, 128, 12 * G)
    middle = plan_index(10_000_000, 128, 5 * G)
    tight = plan_index(10_000_000, 128, 3 * G)
    assert roomy.refine == "flat"
    assert middle.refine == "fp16" and tight.refine == "sq8" and tight.nlist == 4096
    assert tight.index_bytes < 2 * G  # the 10M target: resident index under 2 GB
    assert tight.peak_bytes <= 3 * G


def test_budget_too_small_fails_early_naming_the_knob() -> None:
    with pytest.raises(MemoryBudgetError, match="--memory-budget") as info:
        plan_index(10_000_000, 128, 2 * G)
    assert info.value.reason == "MEMORY_BUDGET"


def test_options_override_and_validate() -> None:
    opts = IndexOptions.parse("nlist=1024,refine=fp16,queries=200,target_recall_at_1=0.99")
    plan = plan_index(200_000, 128, 8 * G, opts)
    assert plan.nlist == 1024 and plan.refine == "fp16"
    assert opts.queries == 200 and opts.target_recall_at_1 == 0.99
    for bad in ("nlist=1000", "refine=pq", "bogus=1", "queries=x"):
        with pytest.raises(InvalidInputError):
            IndexOptions.parse(bad)


def test_nlist_is_capped_by_training_points() -> None:
    plan = plan_index(60_000, 128, 8 * G, IndexOptions(flat_max=1000, nlist=65536))
    assert plan.nlist * 39 <= 60_000
