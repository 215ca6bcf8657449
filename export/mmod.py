"""Export dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) to ONNX.

The graph is the network body only: input ``input`` float32 NCHW ``(batch, 3, H, W)`` holding
dlib's tiled image pyramid *already normalised* (``(pixel - avg_rgb) / 256``, padding 0);
output ``scores`` float32 ``(batch, 1, h, w)``, the detector window's score map, ~1/8 the size.
The pyramid is not in the graph because dlib resizes the normalised float levels with its own
bilinear arithmetic and pads with 0 (the mean colour); :mod:`facesearch.vision.pyramid` rebuilds that
tensor exactly, then :mod:`facesearch.vision.detector` turns scores into boxes.

The returned manifest section records everything that runtime needs (normalisation, pyramid,
window, NMS, the output-to-input mapping derived from the layers), and the ONNX file carries the
same facts as ``metadata_props``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from export.onnx_write import OPSET, export_onnx
from facesearch.bundle.manifest import DetectorVariant
from facesearch.errors import ModelFormatError
from facesearch.nets.dlib_architectures import Op, match_plan, mmod_plan
from facesearch.nets.dlib_dnn import DnnLayer, DnnModel, read_dnn_file
from facesearch.nets.dlib_torch import DlibNet
from facesearch.vision.pyramid import build_pyramid_tensor, tiled_pyramid_layout

INPUT_NAME = "input"
OUTPUT_NAME = "scores"
PREPROCESSING_VERSION = "dlib-mmod-tiled-pyramid-v1"
_MAX_EXPORT_DIFF = 1e-4
CHANNEL_MULTIPLE = 16


def output_to_input_mapping(model: DnnModel) -> tuple[int, int]:
    """``output_tensor_to_input_tensor`` as ``input = stride * output + offset`` (per axis).

    dlib's visitor walks from the top layer down, sending a point through each ``con`` layer's
    ``map_output_to_input``: ``p -> p * stride - padding + kernel // 2`` (affine and relu leave it
    alone). For the face detector: three 5x5 stride-2 unpadded convolutions give ``8 p + 14``.
    """
    stride, offset = 1, 0
    for layer in reversed(model.layers):
        if layer.kind in ("max_pool", "avg_pool"):
            raise ModelFormatError("the MMOD detector export expects no pooling layers")
        if layer.kind != "con":
            continue
        (sy, sx), (py, px), (ky, kx) = layer.attrs["stride"], layer.attrs["padding"], layer.attrs["kernel"]
        if (sy, py, ky) != (sx, px, kx):
            raise ModelFormatError(f"non-square con layer {layer.attrs}: the mapping would differ per axis")
        stride, offset = stride * sx, offset * sx - px + kx // 2
    return stride, offset


def min_input_size(model: DnnModel) -> int:
    """The smallest tensor side for which every layer still has at least one output row."""
    for n in range(1, 10_000):
        size = n
        for layer in model.layers:
            if layer.kind == "con":
                k, s, p = layer.attrs["kernel"][0], layer.attrs["stride"][0], layer.attrs["padding"][0]
                size = (size + 2 * p - k) // s + 1 if size + 2 * p >= k else 0
        if size >= 1:
            return n
    raise ModelFormatError("the MMOD network needs an input over 10000 pixels across")


def _manifest(model: DnnModel, dat_path: Path) -> dict[str, Any]:
    loss, inp = model.loss, model.input
    if loss.kind != "loss_mmod" or inp.kind != "input_rgb_image_pyramid":
        raise ModelFormatError(f"{dat_path}: not an MMOD detector ({loss.kind} over {inp.kind})")
    if loss.attrs["use_bounding_box_regression"]:
        raise ModelFormatError(f"{dat_path}: bounding-box regression MMOD models are not supported")
    windows = loss.attrs["detector_windows"]
    if len(windows) != 1:
        raise ModelFormatError(f"{dat_path}: {len(windows)} detector windows; the face detector has one")
    stride, offset = output_to_input_mapping(model)
    iou, covered = loss.attrs["overlaps_nms"]
    return {
        "kind": "dlib_mmod_detector",
        "source": {"file": dat_path.name, "sha256": hashlib.sha256(dat_path.read_bytes()).hexdigest()},
        "preprocessing_version": PREPROCESSING_VERSION,
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "colour_order": "RGB",
            "dims": ["batch", 3, "height", "width"],
            "content": "tiled image pyramid, normalised, padding 0",
            "normalisation": {
                "avg_rgb": [float(v) for v in inp.attrs["avg_rgb"]],
                "divisor": 256.0,
                "formula": "(float32(pixel) - float32(avg)) / 256",
            },
        },
        "output": {
            "name": OUTPUT_NAME,
            "dims": ["batch", 1, "out_height", "out_width"],
            "to_input": {"stride": stride, "offset": offset, "formula": "input_xy = stride * output_xy + offset"},
            "min_input_size": min_input_size(model),
        },
        "pyramid": {
            "type": "pyramid_down<6>",
            "rate_down": 6,
            "padding": int(inp.attrs["pyramid_padding"]),
            "outer_padding": int(inp.attrs["pyramid_outer_padding"]),
            "padding_value": 0.0,
            "min_level_rows": 5,
            "resize": "dlib resize_image bilinear (align corners), float32 levels",
        },
        "upsample": {"type": "pyramid_up with pyramid_down<2>", "default": 0},
        "detector_window": {"width": int(windows[0][0]), "height": int(windows[0][1]), "label": windows[0][2]},
        "nms": {"iou": float(iou), "percent_covered": float(covered)},
        "adjust_threshold": 0.0,
        "box_convention": "(x1, y1, x2, y2) = (left, top, right + 1, bottom + 1) of dlib's inclusive rect",
    }


def pad_channels(paired: list[tuple[Op, DnnLayer]], multiple: int) -> list[tuple[Op, DnnLayer]]:
    """Give every hidden ``con`` layer a multiple of ``multiple`` filters, the extra ones all zero.

    The extra filters have zero weights and bias, their affine rows zero scale and shift, so after
    relu they are exactly 0, and the next layer's weights for them are zero: the network computes
    the same function. onnxruntime's blocked (NCHWc) convolutions need channel counts that are a
    multiple of the SIMD block (16 with AVX-512, 8 with AVX2); the detector's 45-channel layers
    otherwise fall back to slower plain convolutions (~10% of the detector's time).
    """
    out: list[tuple[Op, DnnLayer]] = []
    extra_in = 0
    last_con = max(i for i, (_, layer) in enumerate(paired) if layer.kind == "con")
    for i, (op, layer) in enumerate(paired):
        padded = layer
        if layer.kind == "con":
            weight, bias = layer.weights["weight"], layer.weights["bias"]
            extra_out = 0 if i == last_con else (-weight.shape[0]) % multiple
            weight = np.pad(weight, ((0, extra_out), (0, extra_in), (0, 0), (0, 0)))
            padded = DnnLayer(
                "con",
                {**layer.attrs, "num_filters": weight.shape[0]},
                {"weight": weight, "bias": np.pad(bias, (0, extra_out))},
            )
            extra_in = extra_out
        elif layer.kind == "affine":
            padded = DnnLayer("affine", layer.attrs, {k: np.pad(v, (0, extra_in)) for k, v in layer.weights.items()})
        elif layer.kind not in ("relu", "marker"):
            raise ModelFormatError(f"cannot pad channels through a {layer.kind!r} layer")
        out.append((op, padded))
    return out


class ShiftSumConv(nn.Module):
    """A stride-1 convolution with ONE output channel, as a 1x1 convolution then shifted sums.

    ``out[y, x] = b + sum_{dy, dx} sum_c w[c, dy, dx] in[c, y + dy - p, x + dx - p]``: the 1x1
    convolution computes every tap's channel sum ``t[dy * k + dx]`` at once (an efficient GEMM),
    then the taps are shifted into place and added, first along x then along y. onnxruntime
    would otherwise run the detector's 45->1 9x9 scorer as a 16-output blocked convolution,
    15/16 of it wasted: a quarter of the whole network's time. Same function, summed in another
    order (differences ~1e-6).
    """

    bias: torch.Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        k = conv.kernel_size[0]
        if (
            conv.out_channels != 1
            or conv.stride != (1, 1)
            or conv.kernel_size != (k, k)
            or conv.padding != (k // 2, k // 2)
        ):
            raise ModelFormatError(f"ShiftSumConv needs a 1-output, stride-1, 'same' square conv, got {conv}")
        self.k, self.p = k, k // 2
        self.taps = nn.Conv2d(conv.in_channels, k * k, 1, bias=False)
        weight = conv.weight.data[0].permute(1, 2, 0)  # (k, k, c): tap-major
        self.taps.weight.data.copy_(weight.reshape(k * k, conv.in_channels, 1, 1))
        assert conv.bias is not None
        self.register_buffer("bias", conv.bias.data.reshape(1, 1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, p = self.k, self.p
        taps = F.pad(self.taps(x), (p, p, p, p))  # (n, k*k, H + 2p, W + 2p), channel = dy * k + dx
        rows = taps[:, 0::k, :, 0 : -2 * p]  # dx = 0 for every dy: (n, k, H + 2p, W)
        for dx in range(1, k):
            rows = rows + taps[:, dx::k, :, dx : (dx - 2 * p) or None]
        out = rows[:, 0:1, 0 : -2 * p, :]
        for dy in range(1, k):
            out = out + rows[:, dy : dy + 1, dy : (dy - 2 * p) or None, :]
        return out + self.bias


def build_torch_detector(dat_path: Path, fast: bool = False) -> tuple[torch.nn.Module, DnnModel]:
    """The dlib network as a torch module; ``fast``: the same function arranged for onnxruntime.

    ``fast`` pads hidden layers to 16 channels (:func:`pad_channels`) and computes the final
    scorer as a :class:`ShiftSumConv`; together ~1.4x faster in onnxruntime on AVX-512 CPUs.
    """
    model = read_dnn_file(str(dat_path))
    paired = match_plan(model, mmod_plan(), "mmod")
    if fast:
        paired = pad_channels(paired, CHANNEL_MULTIPLE)
    net = DlibNet(paired).eval()
    if fast:
        last = net.layers[-1]
        if not isinstance(last, nn.Conv2d):
            raise ModelFormatError(f"the MMOD network should end with a plain convolution, not {last}")
        net.layers[-1] = ShiftSumConv(last)
    return net, model


def verify_onnx(net: torch.nn.Module, onnx_bytes: bytes, tensors: list[np.ndarray]) -> float:
    """Max |torch - onnxruntime| over the score maps of ``tensors`` (NCHW float32 inputs)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in tensors:
            ref = net(torch.from_numpy(x)).numpy()
            got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            if ref.shape != got.shape:
                raise ModelFormatError(f"onnx output shape {got.shape} != torch {ref.shape} for input {x.shape}")
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def verification_inputs(manifest: dict[str, Any]) -> list[np.ndarray]:
    """Seeded random photos-sized inputs, tiled as the detector will tile them."""
    rng = np.random.default_rng(20240611)
    pyr = manifest["pyramid"]
    r, g, b = (float(v) for v in manifest["input"]["normalisation"]["avg_rgb"])
    out = []
    for h, w in ((96, 80), (150, 201)):
        img = rng.integers(0, 256, size=(1, 3, h, w), dtype=np.uint8)
        layout = tiled_pyramid_layout(h, w, pyr["rate_down"], pyr["padding"], pyr["outer_padding"])
        out.append(build_pyramid_tensor(img, (r, g, b), layout))
    out.append(np.concatenate([out[0], out[0][:, :, ::-1].copy()], axis=0))  # batch of 2
    return out


def export_detector(dat_path: Path, out_path: Path) -> dict[str, Any]:
    """Convert the dlib MMOD detector at ``dat_path`` into ONNX at ``out_path``; returns its manifest section.

    The exported graph is the dlib network arranged for speed (``build_torch_detector(fast=True)``:
    the same function, summed in another order). Raises :class:`ModelFormatError`
    if the file is not the expected MMOD network, or if onnxruntime disagrees with the unpadded
    torch module by more than 1e-4 on the verification inputs.
    """
    dat_path, out_path = Path(dat_path), Path(out_path)
    reference, model = build_torch_detector(dat_path)
    net, _ = build_torch_detector(dat_path, fast=True)
    manifest = _manifest(model, dat_path)
    manifest["output"]["graph"] = (
        f"dlib network, hidden layers zero-padded to {CHANNEL_MULTIPLE} channels, scorer as 1x1 conv + shifted sums"
    )
    metadata = {
        "facesearch.kind": "detector",
        "facesearch.vision.detector": json.dumps(manifest, sort_keys=True),
        "facesearch.preprocessing_version": PREPROCESSING_VERSION,
        "facesearch.input": "float32 NCHW (batch, 3, H, W), H and W dynamic and >= "
        f"{manifest['output']['min_input_size']}: dlib's tiled image pyramid, "
        "(rgb - avg_rgb) / 256, padding 0",
        "facesearch.output": "float32 (batch, 1, h, w) scores; input_xy = "
        f"{manifest['output']['to_input']['stride']} * xy + "
        f"{manifest['output']['to_input']['offset']}",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(
        net,
        torch.zeros(1, 3, 120, 100),
        out_path,
        input_name=INPUT_NAME,
        output_names=[OUTPUT_NAME],
        dynamic_axes={
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
        },
        metadata=metadata,
    )
    data = out_path.read_bytes()
    diff = verify_onnx(reference, data, verification_inputs(manifest))
    if not diff <= _MAX_EXPORT_DIFF:
        out_path.unlink()
        raise ModelFormatError(f"onnxruntime and torch disagree on the MMOD scores by {diff:.3g}")
    manifest["onnx"] = {
        "file": out_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "opset": OPSET,
        "max_abs_diff_vs_torch": diff,
    }
    manifest["variant"] = DetectorVariant.FLOAT.value  # in the manifest only: the file is unchanged
    return manifest
