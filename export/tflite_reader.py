"""Our own reader of the TensorFlow Lite flatbuffer format (the few tables a small CNN needs).

Only the ``flatbuffers`` runtime is used (its ``Table`` does the offset arithmetic); the field
numbers below are those of TensorFlow Lite's ``schema.fbs`` (``tflite`` schema version 3):

- Model: version 0, operator_codes 1, subgraphs 2, description 3, buffers 4
- OperatorCode: deprecated_builtin_code 0 (int8), custom_code 1, version 2, builtin_code 3 (int32)
- SubGraph: tensors 0, inputs 1, outputs 2, operators 3, name 4
- Tensor: shape 0, type 1, buffer 2, name 3
- Buffer: data 0 (bytes; large models keep data outside the flatbuffer: offset 1, size 2)
- Operator: opcode_index 0, inputs 1, outputs 2, builtin_options_type 3, builtin_options 4

Constant tensors stored as float16 (MediaPipe's BlazeFace ships its weights so, each followed by a
DEQUANTIZE op) are read as float32. Anything outside this subset raises ``TfliteFormatError``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import flatbuffers.table
import numpy as np
from flatbuffers import number_types as nt

_IDENTIFIER = b"TFL3"


class TfliteFormatError(ValueError):
    """The file is not a TFLite model this reader understands."""


class TensorType(enum.IntEnum):
    FLOAT32 = 0
    FLOAT16 = 1
    INT32 = 2
    UINT8 = 3
    INT64 = 4
    INT8 = 9


_NUMPY_TYPES: dict[TensorType, np.dtype] = {
    TensorType.FLOAT32: np.dtype("<f4"),
    TensorType.FLOAT16: np.dtype("<f2"),
    TensorType.INT32: np.dtype("<i4"),
    TensorType.UINT8: np.dtype("u1"),
    TensorType.INT64: np.dtype("<i8"),
    TensorType.INT8: np.dtype("i1"),
}


class BuiltinOp(enum.IntEnum):
    ADD = 0
    CONCATENATION = 2
    CONV_2D = 3
    DEPTHWISE_CONV_2D = 4
    DEQUANTIZE = 6
    MAX_POOL_2D = 17
    RELU = 19
    RELU6 = 21
    RESHAPE = 22
    RESIZE_BILINEAR = 23
    PAD = 34


class Padding(enum.IntEnum):
    SAME = 0
    VALID = 1


class Activation(enum.IntEnum):
    NONE = 0
    RELU = 1
    RELU_N1_TO_1 = 2
    RELU6 = 3


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type: TensorType
    data: np.ndarray | None  # constant contents (float16 widened to float32), None for activations


@dataclass(frozen=True)
class Operator:
    op: BuiltinOp
    inputs: tuple[int, ...]  # -1 = optional input absent
    outputs: tuple[int, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class TfliteGraph:
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


class _Table:
    """A flatbuffer table with typed field accessors by schema field number."""

    def __init__(self, buf: bytearray, pos: int) -> None:
        self._t = flatbuffers.table.Table(buf, pos)

    def _off(self, field: int) -> int:
        return int(self._t.Offset(4 + 2 * field))

    def scalar(self, field: int, kind: Any, default: int | float | bool = 0) -> Any:
        off = self._off(field)
        return self._t.Get(kind, off + self._t.Pos) if off else default

    def string(self, field: int) -> str:
        off = self._off(field)
        return self._t.String(off + self._t.Pos).decode("utf-8") if off else ""

    def vector_len(self, field: int) -> int:
        off = self._off(field)
        return int(self._t.VectorLen(off)) if off else 0

    def ints(self, field: int, kind: Any = nt.Int32Flags) -> tuple[int, ...]:
        off = self._off(field)
        if not off:
            return ()
        return tuple(int(v) for v in self._t.GetVectorAsNumpy(kind, off))

    def bytes_(self, field: int) -> bytes:
        off = self._off(field)
        if not off:
            return b""
        start = self._t.Vector(off)
        return bytes(self._t.Bytes[start : start + self._t.VectorLen(off)])

    def tables(self, field: int) -> list[_Table]:
        off = self._off(field)
        if not off:
            return []
        start = self._t.Vector(off)
        return [_Table(self._t.Bytes, self._t.Indirect(start + 4 * i)) for i in range(self._t.VectorLen(off))]

    def table(self, field: int) -> _Table | None:
        off = self._off(field)
        if not off:
            return None
        return _Table(self._t.Bytes, self._t.Indirect(off + self._t.Pos))


def _options(op: BuiltinOp, t: _Table | None) -> dict[str, Any]:
    def get(field: int, kind: Any = nt.Int32Flags, default: int = 0) -> int:
        return int(t.scalar(field, kind, default)) if t is not None else default

    u8 = nt.Uint8Flags
    if op == BuiltinOp.CONV_2D:
        return {
            "padding": Padding(get(0, u8)),
            "stride": (get(2, default=1), get(1, default=1)),  # (h, w)
            "activation": Activation(get(3, u8)),
            "dilation": (get(5, default=1), get(4, default=1)),
        }
    if op == BuiltinOp.DEPTHWISE_CONV_2D:
        return {
            "padding": Padding(get(0, u8)),
            "stride": (get(2, default=1), get(1, default=1)),
            "depth_multiplier": get(3, default=1),
            "activation": Activation(get(4, u8)),
            "dilation": (get(6, default=1), get(5, default=1)),
        }
    if op == BuiltinOp.MAX_POOL_2D:
        return {
            "padding": Padding(get(0, u8)),
            "stride": (get(2, default=1), get(1, default=1)),
            "kernel": (get(4, default=1), get(3, default=1)),
            "activation": Activation(get(5, u8)),
        }
    if op == BuiltinOp.ADD:
        return {"activation": Activation(get(0, u8))}
    if op == BuiltinOp.CONCATENATION:
        return {"axis": get(0), "activation": Activation(get(1, u8))}
    if op == BuiltinOp.RESHAPE:
        return {"new_shape": t.ints(0) if t is not None else ()}
    if op == BuiltinOp.RESIZE_BILINEAR:
        return {"align_corners": bool(get(2, nt.BoolFlags)), "half_pixel_centers": bool(get(3, nt.BoolFlags))}
    return {}


def read_tflite(data: bytes) -> TfliteGraph:
    """Parse a .tflite flatbuffer (first subgraph) into plain tensors and operators."""
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise TfliteFormatError("not a TFLite flatbuffer (file identifier TFL3 missing)")
    buf = bytearray(data)
    root = int(flatbuffers.encode.Get(nt.UOffsetTFlags.packer_type, buf, 0))
    model = _Table(buf, root)
    version = model.scalar(0, nt.Uint32Flags)
    if version != 3:
        raise TfliteFormatError(f"TFLite schema version {version}, expected 3")
    opcodes: list[BuiltinOp] = []
    for code in model.tables(1):
        value = max(int(code.scalar(0, nt.Int8Flags)), int(code.scalar(3, nt.Int32Flags)))
        try:
            opcodes.append(BuiltinOp(value))
        except ValueError:
            raise TfliteFormatError(f"unsupported TFLite operator code {value}") from None
    buffers = model.tables(4)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise TfliteFormatError("the model has no subgraph")
    sg = subgraphs[0]
    tensors: list[Tensor] = []
    for i, t in enumerate(sg.tables(0)):
        try:
            ttype = TensorType(int(t.scalar(1, nt.Int8Flags)))
        except ValueError:
            raise TfliteFormatError(f"tensor {i}: unsupported type {t.scalar(1, nt.Int8Flags)}") from None
        shape = t.ints(0)
        bidx = int(t.scalar(2, nt.Uint32Flags))
        raw = buffers[bidx].bytes_(0) if bidx < len(buffers) else b""
        if not raw and bidx < len(buffers) and buffers[bidx].scalar(1, nt.Uint64Flags):
            off = int(buffers[bidx].scalar(1, nt.Uint64Flags))
            raw = data[off : off + int(buffers[bidx].scalar(2, nt.Uint64Flags))]
        arr: np.ndarray | None = None
        if raw:
            arr = np.frombuffer(raw, dtype=_NUMPY_TYPES[ttype]).reshape(shape)
            arr = arr.astype(np.float32) if ttype == TensorType.FLOAT16 else arr.copy()
        tensors.append(Tensor(i, t.string(3), shape, ttype, arr))
    operators: list[Operator] = []
    for o in sg.tables(3):
        op = opcodes[int(o.scalar(0, nt.Uint32Flags))]
        operators.append(Operator(op, o.ints(1), o.ints(2), _options(op, o.table(4))))
    return TfliteGraph(tuple(tensors), sg.ints(1), sg.ints(2), tuple(operators))
