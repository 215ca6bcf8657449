"""Margin heads: the target class's logit is penalised by the margin (known values); others are not."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="training needs torch (the export extra)")
pytest.importorskip("torchvision", reason="training needs torchvision")

from training.heads import MarginHead  # noqa: E402


def _head(kind: str, margin: float, scale: float) -> MarginHead:
    head = MarginHead(kind, 2, 2, margin=margin, scale=scale)
    head.init_from_centres(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    return head


def _emb(angle: float) -> torch.Tensor:
    return torch.tensor([[math.cos(angle), math.sin(angle)]])


def test_cosface_known_values() -> None:
    head = _head("cosface", 0.35, 30.0)
    logits, cos = head(_emb(math.pi / 3), torch.tensor([0]))
    assert cos[0, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert logits[0, 0].item() == pytest.approx(30.0 * (0.5 - 0.35), abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(30.0 * math.cos(math.pi / 6), abs=1e-4)  # not the target


def test_arcface_known_values() -> None:
    head = _head("arcface", 0.5, 64.0)
    logits, _ = head(_emb(math.pi / 3), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64.0 * math.cos(math.pi / 3 + 0.5), abs=1e-3)
    assert logits[0, 1].item() == pytest.approx(64.0 * math.cos(math.pi / 6), abs=1e-3)
    # past pi - m the logit continues as cos - m sin(m) (insightface's monotonic fallback)
    angle = math.pi - 0.2
    logits, _ = head(_emb(angle), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64.0 * (math.cos(angle) - 0.5 * math.sin(0.5)), abs=1e-3)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_lowers_only_the_target_logit(kind: str) -> None:
    torch.manual_seed(0)
    head = MarginHead(kind, 16, 5, margin=0.3, scale=10.0)
    emb = torch.randn(8, 16)
    labels = torch.arange(8) % 5
    logits, cos = head(emb, labels)
    plain = 10.0 * cos
    target = torch.nn.functional.one_hot(labels, 5).bool()
    assert torch.all(logits[target] < plain[target])
    assert torch.allclose(logits[~target], plain[~target])
    zero = MarginHead(kind, 16, 5, margin=0.0, scale=10.0)
    zero.load_state_dict(head.state_dict())
    assert torch.allclose(zero(emb, labels)[0], plain, atol=1e-5)
