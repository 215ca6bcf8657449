"""PyTorch modules that compute exactly what a dlib network computes.

The module executes an op plan (see :mod:`facesearch.nets.dlib_architectures`) with
dlib's semantics: convolution/pooling padding as stored, ``affine`` as a per-channel
scale and shift, ``add_prev`` zero-padding the smaller tensor (dlib's ``add_to``
semantics when channel counts differ), ``avg_pool`` with a 0x0 window meaning
average over the whole plane. Only ``export/`` imports torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from facesearch.nets.dlib_architectures import Op
from facesearch.nets.dlib_dnn import DnnLayer


class _Affine(nn.Module):
    gamma: torch.Tensor
    beta: torch.Tensor

    def __init__(self, layer: DnnLayer) -> None:
        super().__init__()
        gamma = torch.from_numpy(layer.weights["gamma"].copy())
        beta = torch.from_numpy(layer.weights["beta"].copy())
        self.register_buffer("gamma", gamma.reshape(1, -1, 1, 1))
        self.register_buffer("beta", beta.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


class _Pool(nn.Module):
    def __init__(self, layer: DnnLayer) -> None:
        super().__init__()
        self.kind = layer.kind
        self.kernel = tuple(layer.attrs["kernel"])
        self.stride = tuple(layer.attrs["stride"])
        self.padding = tuple(layer.attrs["padding"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == (0, 0):  # dlib: a 0 window size means the whole plane
            reduce = torch.amax if self.kind == "max_pool" else torch.mean
            return reduce(x, dim=(2, 3), keepdim=True)
        if self.kind == "max_pool":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding)
        # dlib averages over the in-image part of a window only (count_include_pad=False)
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=False)


def _make_module(layer: DnnLayer) -> nn.Module:
    if layer.kind == "con":
        w = torch.from_numpy(layer.weights["weight"].copy())
        conv = nn.Conv2d(
            w.shape[1],
            w.shape[0],
            tuple(layer.attrs["kernel"]),
            tuple(layer.attrs["stride"]),
            tuple(layer.attrs["padding"]),
            bias=True,
        )
        conv.weight.data.copy_(w)
        assert conv.bias is not None
        conv.bias.data.copy_(torch.from_numpy(layer.weights["bias"].copy()))
        if layer.attrs.get("use_relu"):
            return nn.Sequential(conv, nn.ReLU())
        return conv
    if layer.kind == "affine":
        return _Affine(layer)
    if layer.kind == "relu":
        return nn.ReLU()
    if layer.kind in ("max_pool", "avg_pool"):
        return _Pool(layer)
    if layer.kind == "fc":
        w = torch.from_numpy(layer.weights["weight"].copy())  # (in, out), applied as x @ W
        fc = nn.Linear(w.shape[0], w.shape[1], bias=bool(layer.attrs["has_bias"]))
        fc.weight.data.copy_(w.T)
        if fc.bias is not None:
            fc.bias.data.copy_(torch.from_numpy(layer.weights["bias"].copy()))
        return nn.Sequential(nn.Flatten(), fc)
    raise ValueError(f"no torch module for dlib layer kind {layer.kind!r}")


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: elementwise sum; the smaller operand is zero-padded (channels, rows, cols)."""
    if a.shape == b.shape:
        return a + b
    pads = []
    for dim in (3, 2, 1):  # F.pad lists the last dimension first
        pads.append((0, max(0, b.shape[dim] - a.shape[dim]), 0, max(0, a.shape[dim] - b.shape[dim])))
    pa = [p for pair in pads for p in (pair[0], pair[1])]
    pb = [p for pair in pads for p in (pair[2], pair[3])]
    return F.pad(a, pa) + F.pad(b, pb)


class DlibNet(nn.Module):
    """A dlib network body (input normalisation excluded) as a torch module."""

    def __init__(self, paired: list[tuple[Op, DnnLayer]]) -> None:
        super().__init__()
        self.ops: list[Op] = [op for op, _ in paired]
        self.layers = nn.ModuleList()
        self.index: list[int] = []
        for op, layer in paired:
            if op[0] in ("tag", "skip", "add_prev"):
                self.index.append(-1)
            else:
                self.index.append(len(self.layers))
                self.layers.append(_make_module(layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tags: dict[int, torch.Tensor] = {}
        for (kind, arg), idx in zip(self.ops, self.index, strict=True):
            if kind == "tag":
                assert arg is not None
                tags[arg] = x
            elif kind == "skip":
                assert arg is not None
                x = tags[arg]
            elif kind == "add_prev":
                assert arg is not None
                x = _add_prev(x, tags[arg])
            else:
                x = self.layers[idx](x)
        return x


class RgbInput(nn.Module):
    """dlib's input_rgb_image layers: uint8 RGB NHWC -> (pixel - channel mean) / 256, NCHW float."""

    mean: torch.Tensor

    def __init__(self, avg_rgb: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(avg_rgb, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        return (x - self.mean) / 256.0
