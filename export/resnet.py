"""dlib's face recognition ResNet (150x150 RGB chip -> 128-d descriptor) to ONNX.

The graph takes uint8 RGB chips NHWC (what the aligner produces) and does dlib's
input normalisation inside, so the runtime feeds chips as they are. The output is
dlib's raw descriptor (not normalised); the runtime L2-normalises it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.onnx_write import OPSET, export_onnx
from facesearch.errors import ModelFormatError
from facesearch.nets.dlib_architectures import match_plan, resnet_plan
from facesearch.nets.dlib_dnn import DnnModel, read_dnn_file
from facesearch.nets.dlib_torch import DlibNet, RgbInput

INPUT_NAME = "chips"
OUTPUT_NAME = "descriptors"


def build_embedder(model: DnnModel) -> torch.nn.Sequential:
    if model.loss.kind != "loss_metric" or model.input.kind != "input_rgb_image_sized":
        raise ModelFormatError(
            f"not a dlib metric-learning ResNet: loss {model.loss.kind!r}, input {model.input.kind!r}"
        )
    body = DlibNet(match_plan(model, resnet_plan(), "dlib face recognition ResNet"))
    return torch.nn.Sequential(RgbInput(model.input.attrs["avg_rgb"]), body).eval()


def write_chip_embedder_onnx(
    net: torch.nn.Module, size: int, out_path: Path, *, extra_metadata: dict[str, str] | None = None
) -> int:
    """Export a chip embedder (uint8 NHWC RGB chips in, raw descriptors out, dynamic batch) to
    ``out_path`` with the embedder I/O contract every bundle shares; returns the embedding dim."""
    example = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8))
    with torch.no_grad():
        dim = int(net(example).shape[1])
    metadata = {
        "facesearch.kind": "embedder",
        "facesearch.input": "uint8 NHWC RGB chip",
        "facesearch.chip_size": str(size),
        "facesearch.embedding_dim": str(dim),
        **(extra_metadata or {}),
    }
    export_onnx(
        net,
        example,
        out_path,
        input_name=INPUT_NAME,
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        metadata=metadata,
    )
    return dim


def export_embedder(dat_path: Path, out_path: Path) -> dict[str, Any]:
    """Convert ``dlib_face_recognition_resnet_model_v1.dat``; returns the manifest section."""
    model = read_dnn_file(str(dat_path))
    net = build_embedder(model)
    size = tuple(model.input.attrs["size"])
    avg = [float(v) for v in model.input.attrs["avg_rgb"]]
    dim = write_chip_embedder_onnx(net, int(size[0]), out_path)
    return {
        "file": out_path.name,
        "source": dat_path.name,
        "architecture": "dlib ResNet metric network (29 conv layers), loss_metric",
        "opset": OPSET,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "shape": ["batch", *size, 3]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", dim]},
        "colour_order": "RGB",
        "normalisation": {"mean_rgb": avg, "divide_by": 256.0, "applied_in_graph": True},
        "embedding_dim": dim,
        "loss_metric": {"margin": model.loss.attrs["margin"], "distance_threshold": model.loss.attrs["dist_thresh"]},
    }
