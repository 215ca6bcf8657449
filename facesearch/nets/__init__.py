"""Torch only: dlib's serialization readers, torch networks that compute what dlib's do, training
backbones and the checkpoint format. Imported by ``export`` and ``training`` alone; serving and
indexing never import torch.

Layer: torch. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api) > reasons.

Modules (and the tests that cover them):

- ``backbones``: Embedding backbones for training: the converted dlib ResNet (fine-tuning) or a
  torchvision ResNet. Tests: ``tests/integration/test_training_tiny_run.py``,
  ``tests/unit/test_training_checkpoint.py``.
- ``checkpoint``: Training checkpoints: one ``torch.save`` dict per epoch, written atomically,
  refused on mismatch. Tests: ``tests/integration/test_training_export.py``,
  ``tests/integration/test_training_tiny_run.py``, ``tests/unit/test_manifests.py``,
  ``tests/unit/test_training_checkpoint.py``.
- ``dlib_architectures``: The two dlib network definitions we convert, as flat bottom-up op plans.
  Tests: through its callers.
- ``dlib_dnn``: Read a serialized dlib DNN (``dlib/dnn/core.h`` + ``layers.h`` + ``input.h`` +
  ``loss.h``). Tests: ``tests/unit/test_dlib_readers.py``,
  ``tests/unit/test_training_checkpoint.py``.
- ``dlib_sources``: Where dlib's three public-domain model files come from (the
  face_recognition_models package). Tests: ``tests/integration/test_parity_detector.py``,
  ``tests/unit/test_detector.py``.
- ``dlib_stream``: A reader for dlib's binary serialization format (``dlib/serialize.h``). Tests:
  ``tests/unit/test_dlib_readers.py``.
- ``dlib_torch``: PyTorch modules that compute exactly what a dlib network computes. Tests: through
  its callers.
"""

from __future__ import annotations

from facesearch.nets.backbones import (
    Backbone,
    build_backbone,
    freeze_stages,
    initial_backbone,
    set_train_mode,
)
from facesearch.nets.checkpoint import (
    BEST,
    LAST,
    REQUIRED_KEYS,
    BaseBundleRef,
    BestEpoch,
    Checkpoint,
    TrainingData,
    capture_rng_state,
    check_resume,
    fingerprint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from facesearch.nets.dlib_architectures import (
    Op,
    match_plan,
    mmod_plan,
    resnet_plan,
)
from facesearch.nets.dlib_dnn import (
    DnnLayer,
    DnnModel,
    read_dnn,
    read_dnn_file,
)
from facesearch.nets.dlib_sources import (
    DLIB_FILES,
    SOURCE_PACKAGE,
    default_models_dir,
)
from facesearch.nets.dlib_stream import DlibStream
from facesearch.nets.dlib_torch import (
    DlibNet,
    RgbInput,
)

__all__ = [
    "BEST",
    "DLIB_FILES",
    "LAST",
    "REQUIRED_KEYS",
    "SOURCE_PACKAGE",
    "Backbone",
    "BaseBundleRef",
    "BestEpoch",
    "Checkpoint",
    "DlibNet",
    "DlibStream",
    "DnnLayer",
    "DnnModel",
    "Op",
    "RgbInput",
    "TrainingData",
    "build_backbone",
    "capture_rng_state",
    "check_resume",
    "default_models_dir",
    "fingerprint",
    "freeze_stages",
    "initial_backbone",
    "load_checkpoint",
    "match_plan",
    "mmod_plan",
    "prune_checkpoints",
    "read_dnn",
    "read_dnn_file",
    "resnet_plan",
    "restore_rng_state",
    "save_checkpoint",
    "set_train_mode",
]
