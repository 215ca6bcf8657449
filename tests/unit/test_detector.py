"""The MMOD detector's pieces: dlib's resize, pyramid layout, box mapping, NMS, and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import BundleError, InvalidInputError, ModelFormatError
from facesearch.vision.detector import Detection, FaceDetector, upsample_for_min_face
from facesearch.vision.nms import box_overlaps, greedy_nms
from facesearch.vision.pyramid import (
    build_pyramid_tensor,
    lround,
    pyramid2_rect_down,
    pyramid_up_size,
    resize_float_planes,
    resize_rgb_u8,
    tiled_pyramid_layout,
    tiled_pyramid_to_image,
)

DLIB_NMS = (0.3382761351109955, 1.0)  # the detector file's overlaps_nms


# --- dlib's bilinear resize, bit for bit -------------------------------------------------------

RESIZE_SHAPES = [(501, 502), (208, 208), (173, 150), (17, 9), (5, 4), (3, 77), (1, 1), (300, 123)]


@pytest.mark.parametrize(("out_h", "out_w"), RESIZE_SHAPES)
def test_rgb_resize_is_bit_exact_with_dlib(out_h: int, out_w: int) -> None:
    dlib = pytest.importorskip("dlib", reason="dlib-bin is the reference (test extra)")
    rng = np.random.default_rng(out_h * 1000 + out_w)
    image = rng.integers(0, 256, size=(61, 83, 3), dtype=np.uint8)
    ours = resize_rgb_u8(image, out_h, out_w)
    assert ours.shape == (out_h, out_w, 3)
    np.testing.assert_array_equal(ours, dlib.resize_image(image, out_h, out_w))


@pytest.mark.parametrize(("out_h", "out_w"), RESIZE_SHAPES)
def test_float_resize_is_bit_exact_with_dlib(out_h: int, out_w: int) -> None:
    dlib = pytest.importorskip("dlib", reason="dlib-bin is the reference (test extra)")
    rng = np.random.default_rng(out_h * 7 + out_w)
    plane = ((rng.integers(0, 256, size=(250, 250)) - np.float32(117.001)) / 256).astype(np.float32)
    ours = resize_float_planes(plane, out_h, out_w)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, dlib.resize_image(plane, out_h, out_w))


def test_float_resize_treats_leading_axes_as_independent_planes() -> None:
    rng = np.random.default_rng(3)
    planes = rng.standard_normal((2, 3, 40, 30)).astype(np.float32)
    together = resize_float_planes(planes, 33, 25)
    np.testing.assert_array_equal(together[1, 2], resize_float_planes(planes[1, 2], 33, 25))


# --- pyramid geometry ----------------------------------------------------------------------------


def test_pyramid_up_size_follows_dlib_rect_up() -> None:
    assert pyramid_up_size(250, 250) == (501, 502)
    assert pyramid_up_size(360, 480) == (721, 962)


def test_lround_rounds_halves_away_from_zero() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, -2.5001, 0.0])
    np.testing.assert_array_equal(lround(x), [1, 2, 3, -1, -2, 2, -3, 0])


def test_rect_down_inverts_pyramid2_point_up() -> None:
    box = np.array([[10.0, 20.0, 50.0, 70.0]])
    up = (box + np.array([1.25, 0.75, 1.25, 0.75])) * 2
    np.testing.assert_allclose(pyramid2_rect_down(up, 1), box)


def test_tiled_layout_for_a_250px_image() -> None:
    layout = tiled_pyramid_layout(250, 250, 6, 10, 11)
    assert (layout.rows, layout.cols) == (957, 272)  # what the parity tests run through
    sizes = [(r.height, r.width) for r in layout.rects]
    assert sizes[:4] == [(250, 250), (208, 208), (173, 173), (144, 144)]
    assert all(h >= 5 for h, _ in sizes)
    first = layout.rects[0]
    assert (first.left, first.top) == (11, 11)
    for i, a in enumerate(layout.rects):  # inside the tensor, outer padding kept, no overlaps
        assert a.left >= 11 and a.right < layout.cols - 11 and a.top >= 11 and a.bottom < layout.rows - 11
        for b in layout.rects[i + 1 :]:
            assert a.right < b.left or b.right < a.left or a.bottom < b.top or b.bottom < a.top


def test_tiled_layout_of_an_empty_image_is_empty() -> None:
    layout = tiled_pyramid_layout(0, 10, 6, 10, 11)
    assert layout.rects == () and (layout.rows, layout.cols) == (0, 0)


def test_pyramid_tensor_pads_with_zero_and_normalises_level0() -> None:
    image = np.full((1, 3, 40, 30), 200, dtype=np.uint8)
    avg = (122.78199768066406, 117.0009994506836, 104.2979965209961)
    layout = tiled_pyramid_layout(40, 30, 6, 10, 11)
    tensor = build_pyramid_tensor(image, avg, layout)
    assert tensor.shape == (1, 3, layout.rows, layout.cols)
    r0 = layout.rects[0]
    expected = (np.float32(200) - np.float32(avg[1])) / np.float32(256)
    assert tensor[0, 1, r0.top, r0.left] == expected
    mask = np.zeros(tensor.shape[2:], dtype=bool)
    for r in layout.rects:
        mask[r.top : r.bottom + 1, r.left : r.right + 1] = True
    assert not tensor[0][:, ~mask].any()  # padding is the mean colour, i.e. 0


def test_tiled_to_image_maps_level_k_up_by_1_2_per_level() -> None:
    layout = tiled_pyramid_layout(250, 250, 6, 10, 11)
    r1 = layout.rects[1]
    cx, cy = r1.left + 100, r1.top + 100
    box = np.array([[cx - 39.5, cy - 39.5, cx + 39.5, cy + 39.5]])
    mapped = tiled_pyramid_to_image(layout, box)
    np.testing.assert_allclose(mapped, (np.array([[60.5, 60.5, 139.5, 139.5]]) * 1.2 + 0.3))


# --- NMS semantics -------------------------------------------------------------------------------


def test_identical_boxes_suppress_each_other() -> None:
    rects = np.array([[0, 0, 79, 79], [0, 0, 79, 79]])
    np.testing.assert_array_equal(greedy_nms(rects, *DLIB_NMS), [0])


def test_nms_overlap_is_measured_against_the_enclosing_box_not_the_union() -> None:
    a = np.array([0, 0, 99, 99])
    b = np.array([[27, 27, 126, 126]])  # inner 73^2: /union = 0.363, /enclosing box 127^2 = 0.330
    assert not box_overlaps(a, b, *DLIB_NMS)[0]
    np.testing.assert_array_equal(greedy_nms(np.vstack([a, b]), *DLIB_NMS), [0, 1])
    closer = np.array([[26, 26, 125, 125]])  # 74^2 / 126^2 = 0.345 > 0.338
    assert box_overlaps(a, closer, *DLIB_NMS)[0]


def test_nms_is_greedy_in_score_order() -> None:
    # A overlaps B, B overlaps C, A does not overlap C: B goes, so C stays.
    rects = np.array([[0, 0, 99, 99], [40, 0, 139, 99], [80, 0, 179, 99]])
    np.testing.assert_array_equal(greedy_nms(rects, *DLIB_NMS), [0, 2])


def test_touching_boxes_do_not_overlap_and_percent_covered_applies() -> None:
    a = np.array([0, 0, 9, 9])
    assert not box_overlaps(a, np.array([[10, 0, 19, 9]]), 0.0, 1.0)[0]  # no shared pixel
    assert box_overlaps(a, np.array([[9, 0, 18, 9]]), 0.0, 1.0)[0]  # one shared column
    inside = np.array([[2, 2, 4, 4]])
    assert not box_overlaps(a, inside, 0.5, 1.0)[0]  # 9/100 of the hull; nothing covers > 100%
    assert box_overlaps(a, inside, 0.5, 0.9)[0]  # but it is covered 100% > 90%


def test_nms_of_nothing_is_nothing() -> None:
    assert greedy_nms(np.zeros((0, 4), dtype=np.int64), *DLIB_NMS).size == 0


# --- min face -> upsample ----------------------------------------------------------------------


@pytest.mark.parametrize(("min_face", "upsample"), [(200, 0), (80, 0), (79, 1), (40, 1), (39, 2), (20, 2), (19, 3)])
def test_upsample_for_min_face(min_face: int, upsample: int) -> None:
    assert upsample_for_min_face(min_face) == upsample


def test_upsample_for_min_face_rejects_nonsense() -> None:
    with pytest.raises(InvalidInputError):
        upsample_for_min_face(0)


# --- the detector on images without faces --------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    pytest.importorskip("torch", reason="exporting the detector needs the export extra (torch)")
    from export.mmod import export_detector
    from facesearch.nets.dlib_sources import default_models_dir

    try:
        dat = default_models_dir() / "mmod_human_face_detector.dat"
    except ModelFormatError as err:
        pytest.skip(str(err))
    out = tmp_path_factory.mktemp("mmod") / "detector.onnx"
    return out, export_detector(dat, out)


@pytest.fixture(scope="module")
def detector(exported: tuple[Path, dict]) -> FaceDetector:
    path, section = exported
    return FaceDetector.from_onnx(path, section, intra_op_threads=1)


@pytest.mark.parametrize("upsample", [0, 1])
def test_noise_and_flat_grey_have_no_faces(detector: FaceDetector, upsample: int) -> None:
    noise = np.random.default_rng(11).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    grey = np.full((120, 160, 3), 128, dtype=np.uint8)
    assert detector.detect(noise, upsample=upsample) == []
    assert detector.detect(grey, upsample=upsample) == []


@pytest.mark.parametrize("shape", [(20, 20, 3), (1, 1, 3), (5, 300, 3), (0, 0, 3), (20, 20)])
def test_tiny_and_empty_images_give_no_faces(detector: FaceDetector, shape: tuple[int, ...]) -> None:
    assert detector.detect(np.full(shape, 90, dtype=np.uint8)) == []


def test_low_threshold_returns_sorted_boxes(detector: FaceDetector) -> None:
    grey = np.full((100, 100, 3), 128, dtype=np.uint8)
    dets = detector.detect(grey, adjust_threshold=-10.0)
    assert dets, "at threshold -10 every window counts"
    assert all(isinstance(d, Detection) for d in dets)
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True)
    for d in dets:
        x1, y1, x2, y2 = d.box
        assert x2 > x1 and y2 > y1


def test_bad_inputs_are_rejected(detector: FaceDetector) -> None:
    with pytest.raises(InvalidInputError):
        detector.detect(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(InvalidInputError):
        detector.detect(np.zeros((10, 10, 4), dtype=np.uint8))
    with pytest.raises(InvalidInputError):
        detector.detect(np.zeros((10, 10, 3), dtype=np.uint8), upsample=-1)


def test_manifest_must_match_the_model(exported: tuple[Path, dict]) -> None:
    path, section = exported
    assert FaceDetector.from_onnx(path, None).config == FaceDetector.from_onnx(path, section).config
    bad = json.loads(json.dumps(section))
    bad["pyramid"]["padding"] = 5
    bad["onnx"].pop("sha256")
    with pytest.raises(ModelFormatError):
        FaceDetector.from_onnx(path, bad)
    wrong_hash = json.loads(json.dumps(section))
    wrong_hash["onnx"]["sha256"] = "0" * 64
    with pytest.raises(BundleError):
        FaceDetector.from_onnx(path, wrong_hash)
