"""Our reader of dlib's serialization format: primitives and whole networks, good and corrupt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import ModelFormatError
from facesearch.nets.dlib_dnn import read_dnn, read_dnn_file
from facesearch.nets.dlib_stream import DlibStream


def _int(value: int) -> bytes:
    """dlib's variable-length integer encoding (serialize.h pack_int)."""
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def test_integers_round_trip_dlib_encoding() -> None:
    values = [0, 1, -1, 127, 128, 255, 256, -300, 2**40, -(2**62)]
    stream = DlibStream(b"".join(_int(v) for v in values))
    assert [stream.int() for _ in values] == values
    stream.expect_end()


def test_float_details_and_strings() -> None:
    # 0.75 = 3 * 2^-2 ; a string is its length then ASCII bytes
    data = _int(3) + _int(-2) + _int(4) + b"con_" + b"1"
    stream = DlibStream(data)
    assert stream.float() == 0.75
    assert stream.expect_string("con_", "fc_") == "con_"
    assert stream.bool() is True


def test_bad_control_byte_names_position() -> None:
    with pytest.raises(ModelFormatError, match="at byte 0: bad integer control byte"):
        DlibStream(b"\x70\x00").int("a version")


def test_truncated_tensor_says_what_was_being_read() -> None:
    data = _int(2) + _int(1) + _int(2) + _int(1) + _int(1) + b"\x00\x00"  # 2 floats declared, half of one given
    with pytest.raises(ModelFormatError, match="file ends while reading conv weights"):
        DlibStream(data, name="x.dat").tensor("conv weights")


def test_unexpected_tag_is_reported() -> None:
    with pytest.raises(ModelFormatError, match="expected 'loss_metric_'"):
        DlibStream(_int(5) + b"hello").expect_string("loss_metric_")


def test_not_a_network_file_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"this is not a dlib network")
    with pytest.raises(ModelFormatError):
        read_dnn_file(str(bad))
    with pytest.raises(ModelFormatError, match="cannot read dlib model file"):
        read_dnn_file(str(tmp_path / "missing.dat"))


def test_resnet_file_parses_to_the_known_architecture(dlib_models_dir: Path) -> None:
    model = read_dnn_file(str(dlib_models_dir / "dlib_face_recognition_resnet_model_v1.dat"))
    assert model.loss.kind == "loss_metric"
    assert model.input.attrs["size"] == (150, 150)
    kinds = model.kinds()
    assert kinds.count("con") == 29 and kinds[-1] == "fc"
    assert model.layers[-1].weights["weight"].shape == (256, 128)


def test_truncated_network_file_fails_with_model_format_error(dlib_models_dir: Path) -> None:
    data = (dlib_models_dir / "mmod_human_face_detector.dat").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 3):
        with pytest.raises(ModelFormatError, match=r"file ends|bad|expected"):
            read_dnn(DlibStream(data[:cut], name="cut.dat"))
    # trailing garbage is not silently accepted either
    with pytest.raises(ModelFormatError, match="trailing bytes"):
        read_dnn(DlibStream(data + b"\x01\x01", name="long.dat"))


def test_bn_layers_fold_into_affine_as_dlib_does(dlib_models_dir: Path) -> None:
    model = read_dnn_file(str(dlib_models_dir / "mmod_human_face_detector.dat"))
    affines = [layer for layer in model.layers if layer.kind == "affine"]
    assert len(affines) == 6
    assert all(a.attrs["from"] == "bn" and np.all(np.isfinite(a.weights["gamma"])) for a in affines)
