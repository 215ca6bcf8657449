"""A reader for dlib's binary serialization format (``dlib/serialize.h``).

dlib writes integers in a variable-length form (a control byte holding the byte
count and sign, then little-endian magnitude bytes), floats as a
``float_details`` pair ``(mantissa: int64, exponent: int16)``, strings and vectors
with an unsigned length prefix, matrices as ``(-nr, -nc)`` then row-major
elements, and DNN tensors as version 2 + ``(n, k, nr, nc)`` + little-endian
float32 data. This module reads those primitives and nothing else; the readers
of whole models (networks, shape predictors) are built on it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from facesearch.errors import ModelFormatError

_Int = int  # the reader has methods named int/float/bool; annotations use these aliases
_FLOAT_INF = 32000
_FLOAT_NINF = 32001
_FLOAT_NAN = 32002


class DlibStream:
    """Sequential reader over the bytes of one dlib-serialized file."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self._data = data
        self._pos = 0
        self.name = name

    @classmethod
    def from_file(cls, path: str | Path) -> DlibStream:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelFormatError(f"cannot read dlib model file {path}: {err}") from err
        return cls(data, name=str(path))

    # -- position ---------------------------------------------------------------
    @property
    def pos(self) -> _Int:
        return self._pos

    @property
    def remaining(self) -> _Int:
        return len(self._data) - self._pos

    def peek(self, n: _Int) -> bytes:
        """The next ``n`` bytes (fewer at the end), without consuming them."""
        return self._data[self._pos : self._pos + n]

    def fail(self, what: str, at: _Int | None = None) -> ModelFormatError:
        return ModelFormatError(f"{self.name}: at byte {self._pos if at is None else at}: {what}")

    def _take(self, n: _Int, what: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self.fail(f"file ends while reading {what} (needs {n} bytes, {self.remaining} left)")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    # -- primitives -------------------------------------------------------------
    def int(self, what: str = "an integer") -> _Int:
        """A signed or unsigned dlib integer (the two share one encoding)."""
        start = self._pos
        control = self._take(1, what)[0]
        negative = bool(control & 0x80)
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x} while reading {what}", at=start)
        value = int.from_bytes(self._take(size, what), "little")
        return -value if negative else value

    def float(self, what: str = "a float") -> float:
        """A float written as ``float_details`` (mantissa, exponent)."""
        if self.remaining and self._data[self._pos] & 0x70:
            raise self.fail(f"old ASCII float encoding is not supported while reading {what}")
        mantissa = self.int(what)
        exponent = self.int(what)
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def bool(self, what: str = "a bool") -> bool:
        ch = self._take(1, what)
        if ch == b"1":
            return True
        if ch == b"0":
            return False
        raise self.fail(f"bad bool byte {ch!r} while reading {what}")

    def byte(self, what: str = "a byte") -> _Int:
        return self._take(1, what)[0]

    def string(self, what: str = "a string") -> str:
        n = self.int(f"length of {what}")
        raw = self._take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as err:
            raise self.fail(f"non-ASCII bytes in {what}") from err

    def expect_string(self, *expected: str) -> str:
        """Read a string that must be one of ``expected`` (a layer or object tag)."""
        start = self._pos
        try:
            got = self.string(f"tag {expected[0]!r}")
        except ModelFormatError:
            self._pos = start
            raise self.fail(f"expected tag {' or '.join(map(repr, expected))}") from None
        if got not in expected:
            raise ModelFormatError(
                f"{self.name}: at byte {start}: expected {' or '.join(map(repr, expected))}, found {got!r}"
            )
        return got

    def expect_int(self, expected: _Int | tuple[_Int, ...], what: str) -> _Int:
        allowed = expected if isinstance(expected, tuple) else (expected,)
        got = self.int(what)
        if got not in allowed:
            raise self.fail(f"expected {what} in {allowed}, found {got}")
        return got

    def matrix(self, what: str = "a matrix") -> np.ndarray:
        """A ``dlib::matrix<float|double>`` as a float64 array of shape (nr, nc)."""
        nr = self.int(f"rows of {what}")
        nc = self.int(f"columns of {what}")
        if nr > 0 or nc > 0:
            raise self.fail(f"old-style matrix header ({nr}, {nc}) in {what}")
        nr, nc = -nr, -nc
        values = [self.float(what) for _ in range(nr * nc)]
        return np.asarray(values, dtype=np.float64).reshape(nr, nc)

    def tensor(self, what: str = "a tensor") -> np.ndarray:
        """A ``dlib::resizable_tensor`` as float32 of shape (n, k, nr, nc)."""
        self.expect_int(2, f"version of {what}")
        n, k, nr, nc = (self.int(f"shape of {what}") for _ in range(4))
        if min(n, k, nr, nc) < 0:
            raise self.fail(f"negative tensor shape {(n, k, nr, nc)} in {what}")
        count = n * k * nr * nc
        raw = self._take(4 * count, what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(n, k, nr, nc)

    def alias_tensor(self, what: str = "an alias tensor") -> tuple[_Int, _Int, _Int, _Int]:
        self.expect_int(1, f"version of {what}")
        n, k, nr, nc = (self.int(f"shape of {what}") for _ in range(4))
        return (n, k, nr, nc)

    def expect_end(self) -> None:
        if self.remaining:
            raise self.fail(f"{self.remaining} unexpected trailing bytes")
