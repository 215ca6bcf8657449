"""Our ONNX conversion of MediaPipe's BlazeFace against TFLite's own interpreter (ai-edge-litert).

Both models read the same real photos (lfw-dev fixtures and the group photos, resized to the
models' input); raw regressors and logits must agree to float noise, and the faces they find
(score > 0.5) are the same anchors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from export.blazeface import BlazeFaceRange, convert, find_blazeface
from facesearch.errors import ModelFormatError

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is the TFLite reference (test extra)")

MAX_ABS_DIFF = 2e-3


def _photos(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths])


@pytest.mark.parametrize("which", list(BlazeFaceRange))
def test_onnx_matches_tflite_interpreter(
    which: BlazeFaceRange, lfw_images: list[Path], group_photos: list[Path]
) -> None:
    try:
        src = find_blazeface(which)
    except ModelFormatError as err:
        pytest.skip(str(err))
    session = ort.InferenceSession(
        convert(src.path.read_bytes(), metadata={}).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ref = litert.Interpreter(model_path=str(src.path))
    ref.allocate_tensors()
    size = int(ref.get_input_details()[0]["shape"][1])
    images = _photos(group_photos + lfw_images[:12], size)
    reg, cls = session.run(None, {"image": images})  # batched: the ONNX batch axis is dynamic
    faces = 0
    for i, img in enumerate(images):
        ref.set_tensor(ref.get_input_details()[0]["index"], img[None].astype(np.float32) / np.float32(127.5) - 1)
        ref.invoke()
        outs = {o["name"]: ref.get_tensor(o["index"]) for o in ref.get_output_details()}
        ref_reg = next(v for v in outs.values() if v.shape[-1] == 16)[0]
        ref_cls = next(v for v in outs.values() if v.shape[-1] == 1)[0]
        np.testing.assert_allclose(reg[i], ref_reg, atol=MAX_ABS_DIFF, rtol=0)
        np.testing.assert_allclose(cls[i], ref_cls, atol=MAX_ABS_DIFF, rtol=0)
        np.testing.assert_array_equal(cls[i] > 0, ref_cls > 0)
        faces += int((ref_cls > 0).any())
    assert faces >= len(images) // 2, "the photos should show faces BlazeFace finds"


def test_conversion_is_deterministic() -> None:
    try:
        src = find_blazeface(BlazeFaceRange.SHORT)
    except ModelFormatError as err:
        pytest.skip(str(err))
    data = src.path.read_bytes()
    a = convert(data, metadata={"k": "v"}).SerializeToString(deterministic=True)
    assert a == convert(data, metadata={"k": "v"}).SerializeToString(deterministic=True)
