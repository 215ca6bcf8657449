"""Convert dlib's 5-point ``shape_predictor`` into one plain ``landmarks5.npz``.

dlib's landmark model is a cascade of gradient-boosted regression-tree forests
(Kazemi & Sullivan 2014). Its serialized form (``dlib/image_processing/shape_predictor.h``)
is::

    int version (== 1)
    matrix<float,0,1> initial_shape           # x0, y0, x1, y1, ... in box-unit coordinates
    vector<vector<regression_tree>> forests   # [cascade][tree]
        regression_tree = vector<split_feature> splits, vector<matrix<float,0,1>> leaf_values
        split_feature   = unsigned long idx1, unsigned long idx2, float thresh
    vector<vector<unsigned long>> anchor_idx  # [cascade][feature] nearest landmark
    vector<vector<vector<float,2>>> deltas    # [cascade][feature] offset from that landmark

We read it with :mod:`facesearch.nets.dlib_stream` and store the same numbers as dense,
uniformly shaped float32/int32 arrays, so the runtime (:mod:`facesearch.vision.landmarks`)
needs numpy and nothing from dlib. Every value is copied bit-for-bit (dlib's floats
are float32 at heart), which is what lets the runtime reproduce dlib exactly.

The ``.npz`` is written by hand as a stored (uncompressed) zip with fixed member
timestamps and attributes: ``np.savez`` stamps the wall clock into the zip, and an
artifact whose sha256 goes into a bundle manifest must be byte-reproducible.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import ModelFormatError
from facesearch.nets.dlib_stream import DlibStream
from facesearch.util.fs import write_atomic

FORMAT_NAME = "facesearch-landmarks"
FORMAT_VERSION = 1
# The arrays a landmarks file holds, in the order they are written (the order is part of
# the byte-reproducibility promise, so it is fixed here rather than taken from a dict).
ARRAY_NAMES = (
    "format_version",
    "initial_shape",
    "split_idx1",
    "split_idx2",
    "split_thresh",
    "leaf_values",
    "anchor_idx",
    "deltas",
)
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# A sanity ceiling on any count read from the file, so a corrupt length fails with a
# message instead of an attempt to allocate terabytes.
_MAX_COUNT = 10_000_000


@dataclass(frozen=True, slots=True)
class ShapePredictorArrays:
    """A shape predictor as dense arrays (C cascades, T trees, S splits, L = S + 1 leaves).

    ``initial_shape`` is (P, 2); ``split_*`` are (C, T, S); ``leaf_values`` is
    (C, T, L, P, 2); ``anchor_idx`` is (C, F) and ``deltas`` (C, F, 2) for F feature
    pixels per cascade.
    """

    initial_shape: np.ndarray
    split_idx1: np.ndarray
    split_idx2: np.ndarray
    split_thresh: np.ndarray
    leaf_values: np.ndarray
    anchor_idx: np.ndarray
    deltas: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "format_version": np.asarray([FORMAT_VERSION], dtype=np.int32),
            "initial_shape": self.initial_shape,
            "split_idx1": self.split_idx1,
            "split_idx2": self.split_idx2,
            "split_thresh": self.split_thresh,
            "leaf_values": self.leaf_values,
            "anchor_idx": self.anchor_idx,
            "deltas": self.deltas,
        }


def _count(stream: DlibStream, what: str) -> int:
    n = stream.int(f"number of {what}")
    if n < 0 or n > _MAX_COUNT:
        raise stream.fail(f"implausible number of {what}: {n}")
    return n


def _column(stream: DlibStream, what: str) -> np.ndarray:
    """A ``matrix<float,0,1>`` as a float32 vector (dlib stores these floats exactly)."""
    m = stream.matrix(what)
    if m.ndim != 2 or m.shape[1] != 1:
        raise stream.fail(f"expected a column vector for {what}, found shape {m.shape}")
    return m[:, 0].astype(np.float32)


def _read_tree(stream: DlibStream, where: str, num_coords: int) -> tuple[np.ndarray, np.ndarray]:
    """One regression tree as (splits (S, 3) float64 [idx1, idx2, thresh], leaves (L, 2P))."""
    num_splits = _count(stream, f"splits in {where}")
    splits = np.empty((num_splits, 3), dtype=np.float64)
    for s in range(num_splits):
        splits[s, 0] = stream.int(f"idx1 of split {s} in {where}")
        splits[s, 1] = stream.int(f"idx2 of split {s} in {where}")
        splits[s, 2] = stream.float(f"thresh of split {s} in {where}")
    num_leaves = _count(stream, f"leaves in {where}")
    if num_leaves != num_splits + 1 or num_leaves & (num_leaves - 1):
        raise stream.fail(
            f"{where} has {num_splits} splits and {num_leaves} leaves; expected a complete binary tree "
            "(leaves a power of two, leaves == splits + 1)"
        )
    leaves = np.empty((num_leaves, num_coords), dtype=np.float32)
    for j in range(num_leaves):
        leaf = _column(stream, f"leaf {j} of {where}")
        if leaf.shape[0] != num_coords:
            raise stream.fail(f"leaf {j} of {where} has {leaf.shape[0]} values, expected {num_coords}")
        leaves[j] = leaf
    return splits, leaves


def read_shape_predictor(path: Path) -> ShapePredictorArrays:
    """Parse a dlib ``shape_predictor`` file; :class:`ModelFormatError` on anything unexpected."""
    stream = DlibStream.from_file(path)
    version = stream.int("shape_predictor version")
    if version != 1:
        raise stream.fail(f"not a dlib shape_predictor: expected version 1 at the start of the file, found {version}")
    initial = _column(stream, "initial_shape")
    if initial.size == 0 or initial.size % 2:
        raise stream.fail(f"initial_shape must hold x, y pairs; found {initial.size} values")
    num_coords = int(initial.size)

    num_cascades = _count(stream, "cascades")
    if num_cascades == 0:
        raise stream.fail("shape_predictor has no cascades")
    forests: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for c in range(num_cascades):
        num_trees = _count(stream, f"trees in cascade {c}")
        forests.append([_read_tree(stream, f"tree {t} of cascade {c}", num_coords) for t in range(num_trees)])

    if _count(stream, "anchor_idx cascades") != num_cascades:
        raise stream.fail("anchor_idx does not have one entry per cascade")
    anchors = [
        [stream.int(f"anchor_idx[{c}][{i}]") for i in range(_count(stream, f"anchors in cascade {c}"))]
        for c in range(num_cascades)
    ]
    if _count(stream, "deltas cascades") != num_cascades:
        raise stream.fail("deltas does not have one entry per cascade")
    deltas = []
    for c in range(num_cascades):
        n = _count(stream, f"deltas in cascade {c}")
        deltas.append([(stream.float(f"deltas[{c}][{i}].x"), stream.float(f"deltas[{c}][{i}].y")) for i in range(n)])
    stream.expect_end()
    return _to_dense(stream.name, initial, forests, anchors, deltas)


def _to_dense(
    name: str,
    initial: np.ndarray,
    forests: list[list[tuple[np.ndarray, np.ndarray]]],
    anchors: list[list[int]],
    deltas: list[list[tuple[float, float]]],
) -> ShapePredictorArrays:
    """Stack the ragged lists into dense arrays, refusing models that are not uniform."""
    num_points = initial.size // 2
    tree_counts = {len(f) for f in forests}
    split_counts = {s.shape[0] for f in forests for s, _ in f}
    feature_counts = {len(a) for a in anchors} | {len(d) for d in deltas}
    if len(tree_counts) != 1 or 0 in tree_counts:
        raise ModelFormatError(f"{name}: cascades have differing or zero tree counts {sorted(tree_counts)}")
    if len(split_counts) != 1:
        raise ModelFormatError(f"{name}: trees have differing depths (split counts {sorted(split_counts)})")
    if len(feature_counts) != 1:
        raise ModelFormatError(f"{name}: cascades have differing feature pool sizes {sorted(feature_counts)}")
    num_features = feature_counts.pop()
    splits = np.stack([np.stack([s for s, _ in f]) for f in forests])  # (C, T, S, 3)
    leaves = np.stack([np.stack([lv for _, lv in f]) for f in forests])  # (C, T, L, 2P)
    idx = splits[..., :2]
    if splits.size and (idx.min() < 0 or idx.max() >= num_features):
        raise ModelFormatError(f"{name}: a split reads feature {int(idx.max())} of a pool of {num_features}")
    anchor = np.asarray(anchors, dtype=np.int64).reshape(len(forests), num_features)
    if anchor.size and (anchor.min() < 0 or anchor.max() >= num_points):
        raise ModelFormatError(f"{name}: anchor_idx names landmark {int(anchor.max())} of {num_points}")
    c, t, leaf_count, _ = leaves.shape
    return ShapePredictorArrays(
        initial_shape=initial.reshape(num_points, 2),
        split_idx1=splits[..., 0].astype(np.int32),
        split_idx2=splits[..., 1].astype(np.int32),
        split_thresh=splits[..., 2].astype(np.float32),
        leaf_values=leaves.reshape(c, t, leaf_count, num_points, 2),
        anchor_idx=anchor.astype(np.int32),
        deltas=np.asarray(deltas, dtype=np.float32).reshape(len(forests), num_features, 2),
    )


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``np.load``) whose bytes depend only on the arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE_TIME)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def export_landmarks(dat_path: Path, out_path: Path) -> dict[str, Any]:
    """Convert ``shape_predictor_5_face_landmarks.dat`` to ``out_path`` (``landmarks5.npz``).

    Returns the bundle-manifest section describing the file. Rerunning on the same input
    writes byte-identical output.
    """
    dat_path, out_path = Path(dat_path), Path(out_path)
    sp = read_shape_predictor(dat_path)
    if sp.initial_shape.shape[0] != 5:
        raise ModelFormatError(
            f"{dat_path}: expected the 5-point landmark model, found {sp.initial_shape.shape[0]} landmarks"
        )
    data = npz_bytes(sp.as_dict())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, data)
    os.chmod(out_path, 0o644)  # whatever the umask, like the other bundle files
    num_cascades, num_trees, num_splits = sp.split_idx1.shape
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "file": out_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "source": dat_path.name,
        "source_sha256": hashlib.sha256(dat_path.read_bytes()).hexdigest(),
        "num_landmarks": int(sp.initial_shape.shape[0]),
        "cascade_depth": int(num_cascades),
        "trees_per_level": int(num_trees),
        "tree_depth": int(num_splits + 1).bit_length() - 1,
        "num_leaves": int(num_splits + 1),
        "feature_pool_size": int(sp.anchor_idx.shape[1]),
    }
