"""Where dlib's three public-domain model files come from (the face_recognition_models package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from facesearch.errors import ModelFormatError

SOURCE_PACKAGE = "face_recognition_models"
#: Never the 68-point landmark model: its training data's licence bars commercial use.
DLIB_FILES = {
    "embedder": "dlib_face_recognition_resnet_model_v1.dat",
    "detector": "mmod_human_face_detector.dat",
    "landmarks": "shape_predictor_5_face_landmarks.dat",
}


def default_models_dir() -> Path:
    # Located, not imported: the package's __init__ needs pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFormatError(
            "the face_recognition_models package is not installed (pip install 'facesearch[export]'), "
            "or pass --models-dir"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"
