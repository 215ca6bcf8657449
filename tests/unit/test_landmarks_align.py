"""Unit tests for the landmark model export, the landmark predictor and the face chip.

Everything here runs on small synthetic models and images written in the test; parity
against dlib itself lives in tests/integration/test_parity_landmarks_chips.py.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from export.shape_predictor import export_landmarks, read_shape_predictor
from facesearch.errors import InvalidInputError, ModelFormatError
from facesearch.vision.align import (
    MEAN_FACE_5,
    chip_transform,
    extract_chip,
    face_chip,
    face_chip_details,
    pyramid_down2,
)
from facesearch.vision.landmarks import LandmarkPredictor, sum_in_order

# -- a writer for dlib's serialization format, just enough for shape predictors ---------------


def dlib_int(value: int) -> bytes:
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def dlib_float(value: float) -> bytes:
    fraction, exponent = math.frexp(value)
    return dlib_int(int(fraction * 2**53)) + dlib_int(exponent - 53)


def dlib_column(values: np.ndarray) -> bytes:
    return dlib_int(-len(values)) + dlib_int(-1) + b"".join(dlib_float(float(v)) for v in values)


def shape_predictor_bytes(
    initial: np.ndarray,
    splits: np.ndarray,
    leaves: np.ndarray,
    anchors: np.ndarray,
    deltas: np.ndarray,
    *,
    version: int = 1,
) -> bytes:
    """A dlib ``shape_predictor`` file: splits (C, T, S, 3) rows (idx1, idx2, thresh), leaves
    (C, T, L, 2P), anchors (C, F), deltas (C, F, 2)."""
    out = [dlib_int(version), dlib_column(initial.reshape(-1))]
    out.append(dlib_int(len(splits)))
    for level, level_leaves in zip(splits, leaves, strict=True):
        out.append(dlib_int(len(level)))
        for tree, tree_leaves in zip(level, level_leaves, strict=True):
            out.append(dlib_int(len(tree)))
            for idx1, idx2, thresh in tree:
                out += [dlib_int(int(idx1)), dlib_int(int(idx2)), dlib_float(float(thresh))]
            out.append(dlib_int(len(tree_leaves)))
            out += [dlib_column(leaf) for leaf in tree_leaves]
    out.append(dlib_int(len(anchors)))
    for row in anchors:
        out.append(dlib_int(len(row)) + b"".join(dlib_int(int(a)) for a in row))
    out.append(dlib_int(len(deltas)))
    for row in deltas:
        out.append(dlib_int(len(row)) + b"".join(dlib_float(float(x)) + dlib_float(float(y)) for x, y in row))
    return b"".join(out)


# A non-degenerate 5-point initial shape in box-unit coordinates (float32-exact values).
INITIAL = np.array([[0.25, 0.25], [0.75, 0.25], [0.5, 0.5], [0.375, 0.75], [0.625, 0.75]], dtype=np.float32)


Model = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def random_model(
    rng: np.random.Generator, cascades: int = 3, trees: int = 6, depth: int = 2, features: int = 12
) -> Model:
    s, leaves_per_tree = (1 << depth) - 1, 1 << depth
    idx = rng.integers(0, features, (cascades, trees, s, 2))
    thresh = rng.integers(-60, 60, (cascades, trees, s, 1)) + 0.5
    splits = np.concatenate([idx, thresh], axis=-1)
    leaves = (rng.normal(0, 0.02, (cascades, trees, leaves_per_tree, 10))).astype(np.float32)
    anchors = rng.integers(0, 5, (cascades, features))
    deltas = rng.normal(0, 0.2, (cascades, features, 2)).astype(np.float32)
    return INITIAL, splits, leaves, anchors, deltas


def one_split_model(thresh: float = 80.0) -> Model:
    """One tree with one split: feature 0 (at landmark 0) minus feature 1 (at landmark 1)
    above ``thresh`` moves every x by +0.125, otherwise by -0.125."""
    splits = np.array([[[[0, 1, thresh]]]])
    leaves = np.zeros((1, 1, 2, 10), dtype=np.float32)
    leaves[0, 0, 0, 0::2] = 0.125
    leaves[0, 0, 1, 0::2] = -0.125
    anchors = np.array([[0, 1]])
    deltas = np.zeros((1, 2, 2), dtype=np.float32)
    return INITIAL, splits, leaves, anchors, deltas


def predictor_from(tmp_path: Path, model: Model, name: str = "m") -> LandmarkPredictor:
    dat = tmp_path / f"{name}.dat"
    dat.write_bytes(shape_predictor_bytes(*model))
    out = tmp_path / f"{name}.npz"
    export_landmarks(dat, out)
    return LandmarkPredictor.from_file(out)


# -- export -------------------------------------------------------------------------------------


def test_export_roundtrips_every_number_and_describes_the_model(tmp_path: Path) -> None:
    model = random_model(np.random.default_rng(0), cascades=2, trees=3, depth=2, features=7)
    dat = tmp_path / "sp.dat"
    dat.write_bytes(shape_predictor_bytes(*model))
    manifest = export_landmarks(dat, tmp_path / "landmarks5.npz")
    assert manifest["num_landmarks"] == 5
    assert manifest["cascade_depth"] == 2
    assert manifest["trees_per_level"] == 3
    assert manifest["tree_depth"] == 2
    assert manifest["num_leaves"] == 4
    assert manifest["feature_pool_size"] == 7
    assert manifest["file"] == "landmarks5.npz"
    initial, splits, leaves, anchors, deltas = model
    with np.load(tmp_path / "landmarks5.npz") as z:
        np.testing.assert_array_equal(z["initial_shape"], initial)
        np.testing.assert_array_equal(z["split_idx1"], splits[..., 0])
        np.testing.assert_array_equal(z["split_idx2"], splits[..., 1])
        np.testing.assert_array_equal(z["split_thresh"], splits[..., 2].astype(np.float32))
        np.testing.assert_array_equal(z["leaf_values"], leaves.reshape(2, 3, 4, 5, 2))
        np.testing.assert_array_equal(z["anchor_idx"], anchors)
        np.testing.assert_array_equal(z["deltas"], deltas)
        assert z["split_idx1"].dtype == np.int32 and z["leaf_values"].dtype == np.float32


def test_export_is_byte_reproducible(tmp_path: Path) -> None:
    dat = tmp_path / "sp.dat"
    dat.write_bytes(shape_predictor_bytes(*random_model(np.random.default_rng(1))))
    first = export_landmarks(dat, tmp_path / "a" / "landmarks5.npz")
    second = export_landmarks(dat, tmp_path / "b" / "landmarks5.npz")
    assert (tmp_path / "a" / "landmarks5.npz").read_bytes() == (tmp_path / "b" / "landmarks5.npz").read_bytes()
    assert first["sha256"] == second["sha256"]
    with zipfile.ZipFile(tmp_path / "a" / "landmarks5.npz") as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[: len(b) // 2], "file ends"),
        (lambda b: b + b"\x01\x00", "trailing bytes"),
        (lambda b: dlib_int(2) + b[2:], "expected version 1"),
        (lambda b: b"", "file ends"),
    ],
    ids=["truncated", "trailing", "version", "empty"],
)
def test_corrupt_model_files_raise_model_format_error(
    tmp_path: Path, mutate: Callable[[bytes], bytes], message: str
) -> None:
    good = shape_predictor_bytes(*random_model(np.random.default_rng(2)))
    assert good[:2] == dlib_int(1)
    dat = tmp_path / "bad.dat"
    dat.write_bytes(mutate(good))
    with pytest.raises(ModelFormatError, match=message) as info:
        export_landmarks(dat, tmp_path / "out.npz")
    assert str(dat) in str(info.value)
    assert not (tmp_path / "out.npz").exists()


def test_incomplete_tree_and_bad_indices_are_refused(tmp_path: Path) -> None:
    initial, splits, leaves, anchors, deltas = random_model(np.random.default_rng(3))
    dat = tmp_path / "sp.dat"
    dat.write_bytes(shape_predictor_bytes(initial, splits, leaves[:, :, :3], anchors, deltas))
    with pytest.raises(ModelFormatError, match="complete binary tree"):
        read_shape_predictor(dat)
    bad_splits = splits.copy()
    bad_splits[0, 0, 0, 0] = 99
    dat.write_bytes(shape_predictor_bytes(initial, bad_splits, leaves, anchors, deltas))
    with pytest.raises(ModelFormatError, match="feature 99 of a pool of 12"):
        read_shape_predictor(dat)


def test_export_refuses_a_model_that_is_not_five_point(tmp_path: Path) -> None:
    initial, splits, leaves, anchors, deltas = random_model(np.random.default_rng(4))
    six = np.vstack([initial, [[0.5, 0.875]]]).astype(np.float32)
    dat = tmp_path / "sp.dat"
    dat.write_bytes(shape_predictor_bytes(six, splits, np.concatenate([leaves, leaves[..., :2]], -1), anchors, deltas))
    with pytest.raises(ModelFormatError, match="expected the 5-point landmark model, found 6"):
        export_landmarks(dat, tmp_path / "out.npz")


def test_missing_model_file_raises_model_format_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="cannot read"):
        read_shape_predictor(tmp_path / "nope.dat")
    with pytest.raises(ModelFormatError, match="does not exist"):
        LandmarkPredictor.from_file(tmp_path / "nope.npz")


# -- loading ------------------------------------------------------------------------------------


def test_from_file_refuses_garbage_and_inconsistent_arrays(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFormatError, match="not a readable landmarks"):
        LandmarkPredictor.from_file(junk)
    predictor_from(tmp_path, random_model(np.random.default_rng(5)), "ok")
    with np.load(tmp_path / "ok.npz") as z:
        arrays = {k: z[k] for k in z.files}
    partial = {k: v for k, v in arrays.items() if k != "deltas"}
    with pytest.raises(ModelFormatError, match=r"missing arrays \['deltas'\]"):
        LandmarkPredictor(partial, name="x.npz")
    with pytest.raises(ModelFormatError, match="leaf_values must be"):
        LandmarkPredictor({**arrays, "leaf_values": arrays["leaf_values"][:, :, :2]})
    with pytest.raises(ModelFormatError, match="anchor_idx must lie"):
        LandmarkPredictor({**arrays, "anchor_idx": arrays["anchor_idx"] + 5})
    with pytest.raises(ModelFormatError, match="format version"):
        LandmarkPredictor({**arrays, "format_version": np.array([2])})
    nan_thresh = arrays["split_thresh"].copy()
    nan_thresh[0, 0, 0] = np.nan
    with pytest.raises(ModelFormatError, match="split_thresh must be finite"):
        LandmarkPredictor({**arrays, "split_thresh": nan_thresh})


# -- prediction ---------------------------------------------------------------------------------


def test_box_maps_to_dlib_inclusive_rectangle_and_rounds_half_up(tmp_path: Path) -> None:
    _, splits, leaves, anchors, deltas = random_model(np.random.default_rng(6))
    predictor = predictor_from(tmp_path, (INITIAL, splits, np.zeros_like(leaves), anchors, deltas))
    image = np.zeros((240, 240, 3), dtype=np.uint8)
    # (10, 20, 110, 220) is dlib rectangle(10, 20, 109, 219): spans of 99 and 199 pixels.
    sub = predictor.predict(image, (10, 20, 110, 220), subpixel=True)
    expected = np.stack([10 + 99 * INITIAL[:, 0], 20 + 199 * INITIAL[:, 1]], axis=1)
    np.testing.assert_allclose(sub, expected, rtol=0, atol=1e-4)
    assert sub[0, 0] == pytest.approx(34.75) and sub[2, 0] == pytest.approx(59.5)
    rounded = predictor.predict(image, (10, 20, 110, 220))
    assert rounded.dtype == np.float32 and rounded.shape == (5, 2)
    np.testing.assert_array_equal(rounded, np.floor(expected + 0.5))
    # dlib rounds halves up (floor(x + 0.5)), also below zero: -7.5 -> -7, not -8.
    left = predictor.predict(image, (-10, 0, 1, 101))
    assert left[0, 0] == -7.0


@pytest.mark.parametrize(
    ("pixel", "expected_x"),
    [
        ((255, 0, 0), 37.5),  # grey (255+0+0)//3 = 85 > 80: test true, x += 0.125 (box span 100)
        ((0, 0, 255), 37.5),  # a luma weighting would give blue 29 (< 80) and go the other way
        ((60, 60, 60), 12.5),  # 60 - 0 <= 80: x -= 0.125
        ((0, 0, 0), 12.5),
    ],
)
def test_split_tests_use_dlib_grey_level(tmp_path: Path, pixel: tuple[int, int, int], expected_x: float) -> None:
    predictor = predictor_from(tmp_path, one_split_model(80.0))
    image = np.zeros((120, 120, 3), dtype=np.uint8)
    image[25, 25] = pixel  # landmark 0 at unit (0.25, 0.25) of box (0, 0, 101, 101) -> pixel (25, 25)
    got = predictor.predict(image, (0, 0, 101, 101), subpixel=True)
    assert got[0, 0] == pytest.approx(expected_x)
    assert got[0, 1] == pytest.approx(25.0)


def test_pixels_outside_the_image_read_zero(tmp_path: Path) -> None:
    predictor = predictor_from(tmp_path, one_split_model(80.0))
    # Landmark 1 (feature 1) falls on x = 75: inside a 120-wide image, outside a 50-wide one.
    wide = np.full((120, 120, 3), 200, dtype=np.uint8)
    narrow = np.full((120, 50, 3), 200, dtype=np.uint8)
    assert predictor.predict(wide, (0, 0, 101, 101), subpixel=True)[0, 0] == pytest.approx(12.5)  # 200 - 200
    assert predictor.predict(narrow, (0, 0, 101, 101), subpixel=True)[0, 0] == pytest.approx(37.5)  # 200 - 0


def test_predict_many_matches_single_predictions_and_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    predictor = predictor_from(tmp_path, random_model(rng, cascades=4, trees=8, depth=3, features=20))
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    corners = rng.integers(-20, 100, (70, 2))
    sizes = rng.integers(5, 80, (70, 1))
    boxes = np.hstack([corners, corners + sizes]).astype(float)
    many = predictor.predict_many(image, boxes)
    assert many.shape == (70, 5, 2) and many.dtype == np.float32
    singles = np.stack([predictor.predict(image, tuple(b)) for b in boxes[:6]])
    np.testing.assert_array_equal(many[:6], singles)
    np.testing.assert_array_equal(many[64:], predictor.predict_many(image, boxes[64:]))
    # The trees do move the points: not all equal to the initial shape mapped into the box.
    still = np.floor(boxes[:, None, :2] + (boxes[:, None, 2:] - 1 - boxes[:, None, :2]) * INITIAL + 0.5)
    assert np.abs(many - still).max() > 0
    assert predictor.predict_many(image, np.zeros((0, 4))).shape == (0, 5, 2)


def test_predict_refuses_bad_images_and_boxes(tmp_path: Path) -> None:
    predictor = predictor_from(tmp_path, random_model(np.random.default_rng(8)))
    good = np.zeros((50, 50, 3), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        predictor.predict(good.astype(np.float32), (0, 0, 10, 10))
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        predictor.predict(good[..., 0], (0, 0, 10, 10))
    with pytest.raises(InvalidInputError, match="is empty"):
        predictor.predict(good, (10, 10, 10, 20))
    with pytest.raises(InvalidInputError, match="non-finite"):
        predictor.predict(good, (0, 0, np.nan, 20))


def test_sum_in_order_is_a_strict_left_to_right_float32_sum() -> None:
    rng = np.random.default_rng(9)
    for n in (1, 3):
        start = rng.normal(0, 1, (n, 10)).astype(np.float32)
        terms = (rng.normal(0, 1, (500, n, 10)) * 10.0 ** rng.integers(-4, 3, (500, 1, 1))).astype(np.float32)
        expected = start.copy()
        for term in terms:
            expected = expected + term
        np.testing.assert_array_equal(sum_in_order(start, terms), expected)
        # A pairwise sum is different in the last bits, which is why the order is pinned.
        assert not np.array_equal(
            expected, (start.astype(np.float64) + terms.sum(0, dtype=np.float64)).astype(np.float32)
        )


# -- chips --------------------------------------------------------------------------------------


def similar_landmarks(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (np.array(MEAN_FACE_5) * 100.0) @ rot.T * scale + np.array(shift)


def test_face_chip_samples_a_linear_image_at_the_chip_transform() -> None:
    """Bilinear interpolation reproduces a linear ramp exactly, so every chip pixel must equal
    the ramp at the image point that chip_transform sends to it (up to dlib's truncation)."""
    ys, xs = np.mgrid[0:256, 0:256]
    image = np.stack([xs, ys, 255 - xs], -1).astype(np.uint8)  # three linear ramps
    lm = similar_landmarks(1.0, math.radians(12), (78, 78))  # chip centred at (128, 128), all inside
    chip = face_chip(image, lm)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    a = chip_transform(lm)
    inv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2]
    rr, cc = np.mgrid[0:150, 0:150]
    px = inv[0, 0] * cc + inv[0, 1] * rr + inv[0, 2]
    py = inv[1, 0] * cc + inv[1, 1] * rr + inv[1, 2]
    expected = np.stack([px, py, 255 - px], -1)
    diff = chip.astype(np.float64) - expected
    assert diff.min() >= -1.0 - 1e-6 and diff.max() <= 1e-6  # truncation only ever lowers
    # One step along a chip row is one step along the rotated x axis, (150 s - 1) / 149 long.
    assert px[0, 1] - px[0, 0] == pytest.approx(math.cos(math.radians(12)) * (150 * 1.0 - 1) / 149, rel=1e-6)


def test_chip_transform_is_the_expected_similarity() -> None:
    angle, scale = math.radians(-25), 1.7
    lm = similar_landmarks(scale, angle, (200, 150))
    details = face_chip_details(lm)
    assert details.angle == pytest.approx(angle)
    assert (details.rows, details.cols) == (150, 150)
    a = chip_transform(lm)
    # Template (unit) -> chip pixels: (0.25 + p) / 1.5 * 150; image landmarks are p * 100 * scale.
    template = (0.25 + np.array(MEAN_FACE_5)) / 1.5 * 150
    mapped = lm @ a[:, :2].T + a[:, 2]
    np.testing.assert_allclose(mapped, template, atol=1.0)  # dlib's rect is a pixel narrower than the fit
    # Chip pixels per image pixel: dlib spans the chip's 149 pixel steps over a source
    # rectangle of 150 * scale - 1 pixels (centered_drect's inclusive width).
    assert math.hypot(a[0, 0], a[1, 0]) == pytest.approx(149 / (150 * scale - 1), rel=1e-9)


def test_chip_outside_the_image_is_black_and_sizes_follow_arguments() -> None:
    image = np.full((100, 100, 3), 77, dtype=np.uint8)
    far = similar_landmarks(1.0, 0.0, (1000, 1000))
    assert not face_chip(image, far).any()
    near = similar_landmarks(0.5, 0.3, (20, 20))
    chip = face_chip(image, near, size=80, padding=0.1)
    assert chip.shape == (80, 80, 3)
    values = set(np.unique(chip).tolist())
    assert values <= {0, 76, 77} and 0 in values  # partly off-image; 76 where float sums dip below 77


def test_large_faces_go_through_the_pyramid() -> None:
    image = np.full((1200, 1200, 3), 123, dtype=np.uint8)
    lm = similar_landmarks(6.0, 0.1, (300, 300))  # a ~900 px face for a 150 px chip
    details = face_chip_details(lm)
    assert details.rect[2] - details.rect[0] > 4 * 150
    chip = extract_chip(image, details)
    assert set(np.unique(chip).tolist()) <= {122, 123}


def test_pyramid_down2_matches_dlib_filter() -> None:
    assert pyramid_down2(np.zeros((8, 40, 3), dtype=np.uint8)).shape == (0, 0, 3)
    flat = pyramid_down2(np.full((21, 30, 3), 200, dtype=np.uint8))
    assert flat.shape == (9, 13, 3) and (flat == 200).all()
    impulse = np.zeros((20, 20, 3), dtype=np.uint8)
    impulse[6, 4] = 255
    down = pyramid_down2(impulse)
    # Output (r, c) is centred on input (2r + 2, 2c + 2); weights are 6*6/256 at the centre,
    # 6*4/256 one step away along one axis and 6*1/256 two away, truncated.
    assert down[2, 1, 0] == 255 * 36 // 256
    assert down[2, 0, 0] == down[2, 2, 0] == down[1, 1, 0] == down[3, 1, 0] == 255 * 6 // 256  # 2 away
    assert down[2, 3, 0] == down[4, 1, 0] == 0  # out of reach
    impulse[6, 4] = 0
    impulse[7, 4] = 255
    assert pyramid_down2(impulse)[2, 1, 0] == 255 * 24 // 256


def test_chip_arguments_are_validated() -> None:
    image = np.zeros((50, 50, 3), dtype=np.uint8)
    lm = similar_landmarks(0.3, 0.0, (25, 25))
    with pytest.raises(InvalidInputError, match="5 \\(x, y\\) landmarks"):
        face_chip(image, lm[:4])
    with pytest.raises(InvalidInputError, match="non-finite"):
        face_chip(image, np.where(np.eye(5, 2) > 0, np.nan, lm))
    with pytest.raises(InvalidInputError, match="positive integer"):
        face_chip(image, lm, size=0)
    with pytest.raises(InvalidInputError, match="padding"):
        face_chip(image, lm, padding=-0.1)
    with pytest.raises(InvalidInputError, match="coincide"):
        face_chip(image, np.full((5, 2), 10.0))
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        face_chip(image[..., 0], lm)
