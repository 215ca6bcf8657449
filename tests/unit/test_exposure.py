"""Exposure measurement, the overexposure rule and the normalising curve (facesearch.vision.exposure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import InvalidInputError
from facesearch.vision import exposure as ex
from facesearch.vision.decode import DecodeLimits, load_image
from facesearch.vision.pipeline import PipelineConfig


def _overexpose(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img.astype(np.float32) * 1.9 + 30), 0, 255).astype(np.uint8)


def test_measure_flat_and_half_saturated() -> None:
    flat = np.full((100, 120, 3), 200, np.uint8)
    e = ex.measure_exposure(flat)
    assert e.mean_luma == pytest.approx(200.0, abs=0.01)
    assert e.black_luma == pytest.approx(200.0, abs=0.01)
    assert e.saturated == 0.0
    half = flat.copy()
    half[:50, :, 0] = 255  # one channel at 255 is enough to count a pixel as saturated
    assert ex.measure_exposure(half).saturated == pytest.approx(0.5, abs=0.02)


def test_measure_uses_a_subsample_of_a_large_photo() -> None:
    big = np.zeros((2000, 3000, 3), np.uint8)
    big[::2] = 255  # every other row white: a subsample with an even step would see only one kind
    e = ex.measure_exposure(big)
    assert 0.0 <= e.saturated <= 1.0 and 0.0 <= e.mean_luma <= 255.0


def test_overexposure_rule() -> None:
    assert ex.is_overexposed(ex.Exposure(mean_luma=ex.OVEREXPOSED_MEAN_LUMA, black_luma=30.0, saturated=0.0))
    assert not ex.is_overexposed(ex.Exposure(mean_luma=ex.OVEREXPOSED_MEAN_LUMA - 1, black_luma=0.0, saturated=0.0))
    many = ex.OVEREXPOSED_SATURATED
    assert ex.is_overexposed(ex.Exposure(mean_luma=ex.OVEREXPOSED_SATURATED_MIN_LUMA, black_luma=0.0, saturated=many))
    # a dark photo with a bright window (many saturated pixels, a low mean) is not overexposed
    dark = ex.Exposure(mean_luma=ex.OVEREXPOSED_SATURATED_MIN_LUMA - 1, black_luma=0.0, saturated=0.5)
    assert not dark.overexposed


def test_on_real_photos_flashed_ones_count_as_overexposed_and_few_clean_ones_do(lfw_dir: Path) -> None:
    """On the fixture photos: a few bright clean photos (white backgrounds) count as overexposed,
    which costs them nothing unless they show no face (the rescue runs only then); nearly all of
    their x1.9+30 versions do."""
    photos = [load_image(p, DecodeLimits()) for p in sorted((lfw_dir / "images").glob("*/*.jpg"))]
    clean = np.mean([ex.measure_exposure(p).overexposed for p in photos])
    flashed = np.mean([ex.measure_exposure(_overexpose(p)).overexposed for p in photos])
    assert clean <= 0.08, clean
    assert flashed == 1.0, flashed  # 0.95 with the earlier limits (saturated >= 0.2, mean >= 100)


def test_curve_darkens_monotonically_to_the_target() -> None:
    e = ex.Exposure(mean_luma=200.0, black_luma=30.0, saturated=0.5)
    lut = ex.exposure_curve(e)
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert np.all(np.diff(lut.astype(int)) >= 0)
    assert np.all(lut <= np.arange(256))  # never brightens
    assert lut[30] == 0 and lut[255] == 255  # the black point goes to 0, white stays white
    assert abs(int(lut[200]) - ex.TARGET_MEAN_LUMA) <= 1  # the mean lands on the target


def test_curve_never_brightens_a_dark_photo() -> None:
    lut = ex.exposure_curve(ex.Exposure(mean_luma=40.0, black_luma=0.0, saturated=0.0))
    assert np.array_equal(lut, np.arange(256, dtype=np.uint8))  # gamma 1: the identity


def test_normalise_brings_an_overexposed_photo_back_and_keeps_the_input(lfw_images: list[Path]) -> None:
    photo = _overexpose(load_image(lfw_images[0], DecodeLimits()))
    before = photo.copy()
    out = ex.normalise_exposure(photo)
    assert np.array_equal(photo, before)
    assert out.shape == photo.shape and out.dtype == np.uint8
    seen, after = ex.measure_exposure(photo), ex.measure_exposure(out)
    assert seen.overexposed
    assert after.mean_luma < seen.mean_luma - 60
    assert after.black_luma < 1.0  # the lifted shadows are black again


def test_rescue_copies_darker_then_equalised_each_made_when_asked(lfw_images: list[Path]) -> None:
    photo = _overexpose(load_image(lfw_images[0], DecodeLimits()))
    exposure = ex.measure_exposure(photo)
    copies = ex.rescue_copies(photo, exposure)
    darker = next(copies)
    assert np.array_equal(darker, ex.normalise_exposure(photo, exposure))
    equalised = next(copies)
    assert np.array_equal(equalised, ex.equalise_luminance(darker))
    assert not np.array_equal(equalised, darker) and equalised.shape == photo.shape
    assert next(copies, None) is None


def test_equalising_keeps_a_flat_image_flat_and_its_colour() -> None:
    flat = np.full((64, 64, 3), (90, 60, 40), np.uint8)
    out = ex.equalise_luminance(flat)
    assert out.dtype == np.uint8 and out.shape == flat.shape
    assert np.ptp(out.reshape(-1, 3), axis=0).max() <= 1  # still flat
    assert out[0, 0, 0] > out[0, 0, 1] > out[0, 0, 2]  # still the same hue order


def test_bad_layouts_are_refused() -> None:
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8)):
        with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
            ex.measure_exposure(bad)
        with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
            ex.normalise_exposure(bad)


def test_rescue_is_on_by_default_and_off_in_the_parity_mode() -> None:
    assert PipelineConfig().rescues_exposure
    assert not PipelineConfig(detect_pixels=None).rescues_exposure  # dlib parity stays exactly dlib's
    assert PipelineConfig(detect_pixels=None, exposure_rescue=True).rescues_exposure
    assert not PipelineConfig(exposure_rescue=False).rescues_exposure
