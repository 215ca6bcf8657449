"""Embedding backbones for training: the converted dlib ResNet (fine-tuning) or a torchvision ResNet.

Contract of every backbone built here (helper code, export and evaluation rely on it):

- ``forward`` takes float32 ``(N, 3, 150, 150)`` RGB chips, NCHW, values 0..255 (the bundle's
  aligned uint8 chips, as floats) and returns ``(N, embedding_dim)`` float32 *raw* embeddings
  (not L2-normalised). Input normalisation lives inside the module.
- ``arch`` is a JSON-serialisable dict that fully describes the module:
  ``build_backbone(arch)`` gives a module with the right shapes to load a trained
  ``state_dict`` into, without rereading the base weights.

Architectures (``arch["kind"]``):

- ``dlib_resnet``: dlib's face recognition ResNet rebuilt with :mod:`facesearch.nets.dlib_torch`.
  ``arch["layers"]`` restates every layer's attributes and weight shapes (from the ``.dat``);
  :func:`dlib_resnet_arch` reads them and :func:`build_backbone` with ``init_from=DAT`` copies
  the weights. Stages (for freezing): stage 0 is the stem (7x7 conv, affine, relu, max pool),
  stages 1..5 the five residual levels from the input up (dlib's ``alevel4`` 3x32 filters,
  ``alevel3`` 4x64, ``alevel2`` 3x128, ``alevel1`` 3x256, ``alevel0`` 1x256), and the final
  global average pool + 128-d fc. dlib's ``affine`` layers are frozen batch norms (buffers,
  never trained).
- ``resnet18`` / ``resnet50``: torchvision ResNets from scratch (no pretrained weights), the
  final fc giving ``arch["embedding_dim"]`` outputs (default 128); input scaled to 0..1 and
  ImageNet-normalised inside. Stage 0 is the stem (conv1, bn1), stages 1..4 ``layer1..layer4``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facesearch.errors import InvalidInputError, Reason, TrainingError
from facesearch.nets.dlib_architectures import match_plan, resnet_plan
from facesearch.nets.dlib_dnn import DnnLayer, DnnModel, read_dnn_file
from facesearch.nets.dlib_torch import DlibNet

ARCH_KINDS = ("dlib_resnet", "resnet18", "resnet50")
CHIP_SIZE = 150
DEFAULT_EMBEDDING_DIM = 128
#: dlib's residual levels from the input up: (blocks, first block downsamples).
DLIB_LEVELS = ((3, False), (4, True), (3, True), (3, True), (1, True))
DLIB_STEM_OPS = 4  # con, affine, relu, max_pool
_DOWN_BLOCK_OPS = 11
_BLOCK_OPS = 8
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ChipNormalise(nn.Module):
    """``(x - mean) / divide_by`` per RGB channel on NCHW float chips (0..255)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean_rgb: tuple[float, float, float], divide_by: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(divide_by, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class Backbone(nn.Module):
    """``norm`` then ``body``; ``stages()`` lists the parameter groups that ``--freeze-stages`` counts."""

    def __init__(
        self, arch: dict[str, Any], norm: nn.Module, body: nn.Module, stage_of_module: list[tuple[int, nn.Module]]
    ) -> None:
        super().__init__()
        self.kind = str(arch["kind"])
        self.embedding_dim = int(arch["embedding_dim"])
        self.norm = norm
        self.body = body
        self._stage_of_module = stage_of_module  # plain list: not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x))

    @property
    def num_stages(self) -> int:
        """Freezable stages: the stem plus the residual stages (the final pool + fc is never counted)."""
        return 1 + max(stage for stage, _ in self._stage_of_module if stage >= 0)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        return [module for s, module in self._stage_of_module if s == stage]


def freeze_stages(backbone: Backbone, n: int) -> list[str]:
    """Freeze the stem and the first ``n`` residual stages (``n=0`` trains everything).

    Returns the names of the parameters left trainable. Frozen batch-norm layers must also be
    kept in eval mode while training: see :func:`set_train_mode`.
    """
    if not 0 <= n < backbone.num_stages:
        raise InvalidInputError(
            f"--freeze-stages {n}: {backbone.kind} has {backbone.num_stages - 1} residual stages "
            f"(use 0..{backbone.num_stages - 1}; {backbone.num_stages - 1} trains only the final fc)"
        )
    for p in backbone.parameters():
        p.requires_grad_(True)
    if n > 0:
        for stage in range(n + 1):
            for module in backbone.stage_modules(stage):
                for p in module.parameters():
                    p.requires_grad_(False)
    return [name for name, p in backbone.named_parameters() if p.requires_grad]


def set_train_mode(backbone: Backbone, training: bool) -> None:
    """Train mode for trainable parts only: frozen modules (no trainable parameter) stay in eval mode."""
    backbone.train(training)
    if training:
        for module in backbone.modules():
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


# ---------------------------------------------------------------------------------------------- dlib


def _layer_spec(layer: DnnLayer) -> dict[str, Any]:
    attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in layer.attrs.items()}
    return {"kind": layer.kind, "attrs": attrs, "shapes": {k: list(v.shape) for k, v in layer.weights.items()}}


def dlib_resnet_arch(model: DnnModel) -> dict[str, Any]:
    """The complete ``arch`` of dlib's face ResNet as read from its ``.dat`` (shapes, not weights)."""
    paired = match_plan(model, resnet_plan(), "dlib face recognition ResNet")
    layers = [_layer_spec(layer) for _, layer in paired]
    dim = int(paired[-1][1].attrs["num_outputs"])
    return {
        "kind": "dlib_resnet",
        "embedding_dim": dim,
        "chip_size": int(model.input.attrs["size"][0]),
        "input_mean_rgb": [float(v) for v in model.input.attrs["avg_rgb"]],
        "input_divide_by": 256.0,
        "layers": layers,
    }


def _dlib_op_stages(n_ops: int) -> list[int]:
    """Stage of each op of :func:`resnet_plan`: 0 stem, 1..5 residual levels, -1 pool + fc."""
    stages = [0] * DLIB_STEM_OPS
    for level, (count, first_down) in enumerate(DLIB_LEVELS, start=1):
        stages += [level] * ((_DOWN_BLOCK_OPS if first_down else _BLOCK_OPS) + _BLOCK_OPS * (count - 1))
    stages += [-1, -1]
    if len(stages) != n_ops:
        raise TrainingError(f"dlib ResNet plan has {n_ops} ops, the stage map {len(stages)}", reason=Reason.ARCH)
    return stages


def _build_dlib(arch: dict[str, Any], init: DnnModel | None) -> Backbone:
    plan = resnet_plan()
    specs = arch["layers"]
    if len(specs) != len(plan):
        raise TrainingError(f"arch has {len(specs)} dlib layers, the ResNet plan {len(plan)}", reason=Reason.ARCH)
    if init is not None:
        paired = match_plan(init, plan, "dlib face recognition ResNet")
        for i, ((_, layer), spec) in enumerate(zip(paired, specs, strict=True)):
            if _layer_spec(layer) != spec:
                raise TrainingError(f"dlib weights disagree with the arch at layer {i}", reason=Reason.ARCH)
    else:
        layers = [
            DnnLayer(
                spec["kind"],
                dict(spec["attrs"]),
                {k: np.zeros(shape, np.float32) for k, shape in spec["shapes"].items()},
            )
            for spec in specs
        ]
        paired = list(zip(plan, layers, strict=True))
    body = DlibNet(paired)
    stages = _dlib_op_stages(len(plan))
    stage_of_module = [(stages[op_i], body.layers[idx]) for op_i, idx in enumerate(body.index) if idx >= 0]
    mean = tuple(float(v) for v in arch["input_mean_rgb"])
    div = float(arch["input_divide_by"])
    norm = ChipNormalise((mean[0], mean[1], mean[2]), (div, div, div))
    return Backbone(arch, norm, body, stage_of_module)


# ---------------------------------------------------------------------------------------- torchvision


def torchvision_arch(kind: str, embedding_dim: int = DEFAULT_EMBEDDING_DIM) -> dict[str, Any]:
    if kind not in ("resnet18", "resnet50"):
        raise InvalidInputError(f"unknown torchvision architecture {kind!r}")
    return {
        "kind": kind,
        "embedding_dim": int(embedding_dim),
        "chip_size": CHIP_SIZE,
        "input_mean_rgb": [255.0 * m for m in _IMAGENET_MEAN],
        "input_divide_by": [255.0 * s for s in _IMAGENET_STD],
    }


def _build_torchvision(arch: dict[str, Any]) -> Backbone:
    import torchvision  # noqa: PLC0415 (torchvision only where a torchvision backbone is asked for)

    factory = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}[arch["kind"]]
    body = factory(weights=None, num_classes=int(arch["embedding_dim"]))
    stage_of_module: list[tuple[int, nn.Module]] = [(0, body.conv1), (0, body.bn1)]
    stage_of_module += [(i, getattr(body, f"layer{i}")) for i in range(1, 5)]
    stage_of_module.append((-1, body.fc))
    mean = [float(v) for v in arch["input_mean_rgb"]]
    std = [float(v) for v in arch["input_divide_by"]]
    norm = ChipNormalise((mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))
    return Backbone(arch, norm, body, stage_of_module)


# --------------------------------------------------------------------------------------------- public


def build_backbone(arch: dict[str, Any], *, init_from: Path | None = None) -> Backbone:
    """Build the module ``arch`` describes.

    Without ``init_from`` the weights are placeholders (zeros for ``dlib_resnet``, torch's
    default init for torchvision): load a checkpoint's ``model_state`` into it. ``init_from``
    (``dlib_resnet`` only) is the dlib ``.dat`` whose weights start a fine-tuning run.
    """
    kind = arch.get("kind")
    if kind not in ARCH_KINDS:
        raise InvalidInputError(f"unknown architecture {kind!r} (one of {', '.join(ARCH_KINDS)})")
    if kind == "dlib_resnet":
        init = read_dnn_file(str(init_from)) if init_from is not None else None
        return _build_dlib(arch, init)
    if init_from is not None:
        raise InvalidInputError(f"{kind} trains from scratch: no init_from")
    return _build_torchvision(arch)


def initial_backbone(
    kind: str, *, dlib_dat: Path | None = None, embedding_dim: int = DEFAULT_EMBEDDING_DIM
) -> tuple[dict[str, Any], Backbone]:
    """``(arch, module)`` at the start of a run: dlib weights from ``dlib_dat``, or a fresh torchvision net."""
    if kind == "dlib_resnet":
        if dlib_dat is None:
            raise TrainingError("dlib_resnet needs the base bundle's dlib .dat weights", reason=Reason.BASE_WEIGHTS)
        model = read_dnn_file(str(dlib_dat))
        arch = dlib_resnet_arch(model)
        return arch, _build_dlib(arch, model)
    arch = torchvision_arch(kind, embedding_dim)
    return arch, _build_torchvision(arch)
