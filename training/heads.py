"""Margin softmax heads over the training identities: ArcFace and CosFace.

Both hold one unit vector per class; a sample's logits are ``scale * cos(theta_j)`` between
its L2-normalised embedding and each class vector, except the target class, which is penalised:

- ArcFace (additive angular margin): ``scale * cos(theta_y + margin)``; where ``theta_y + margin``
  would pass pi the logit continues as ``cos(theta_y) - margin * sin(margin)`` (monotonic, as in
  insightface).
- CosFace (additive cosine margin): ``scale * (cos(theta_y) - margin)``.

Cross-entropy on these logits is the training loss; at inference only the backbone is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from facesearch.errors import InvalidInputError


class MarginHead(nn.Module):
    def __init__(self, kind: str, embedding_dim: int, num_classes: int, *, margin: float, scale: float) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise InvalidInputError(f"unknown head {kind!r} (arcface or cosface)")
        self.kind = kind
        self.margin = float(margin)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    @torch.no_grad()
    def init_from_centres(self, centres: torch.Tensor) -> None:
        """Start each class vector at its identity's mean embedding (fine-tuning: a sensible first loss)."""
        self.weight.copy_(F.normalize(centres.to(self.weight.dtype), dim=1))

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) cosine between each embedding and each class vector (no margin)."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = cos.gather(1, labels.view(-1, 1))
        if self.kind == "cosface":
            penalised = target - self.margin
        else:
            m = self.margin
            sin = torch.sqrt((1.0 - target * target).clamp(min=1e-12))
            phi = target * math.cos(m) - sin * math.sin(m)
            penalised = torch.where(target > math.cos(math.pi - m), phi, target - math.sin(math.pi - m) * m)
        return self.scale * cos.scatter(1, labels.view(-1, 1), penalised)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled margin logits for the loss, plain cosines for accuracy)."""
        cos = self.cosines(embeddings)
        return self.margin_logits(cos, labels), cos
