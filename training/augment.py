"""Training augmentations on uint8 chips (torchvision.transforms.v2), one random draw per chip.

Flip, colour jitter, a small affine (rotation, shift, scale), Gaussian blur, random grayscale:
the variation between cameras that an aligned chip still shows. Randomness comes from torch's
global generator, which the loop seeds per batch, so a batch's augmentations depend only on
(seed, epoch, step) and a resumed run draws the same ones.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def chip_augmentation() -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03)], p=0.8),
            v2.RandomAffine(degrees=8.0, translate=(0.04, 0.04), scale=(0.95, 1.05)),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.2),
            v2.RandomGrayscale(p=0.1),
        ]
    )


def augment_batch(chips: torch.Tensor, transform: v2.Compose) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, H, W) float32 0..255, each chip with its own random draw."""
    return torch.stack([transform(chip) for chip in chips]).to(torch.float32)
