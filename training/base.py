"""The base bundle a run starts from: its identity (for checkpoints) and its dlib source weights."""

from __future__ import annotations

from pathlib import Path

from facesearch.bundle.manifest import MANIFEST, ModelBundle
from facesearch.errors import FaceSearchError, Reason, TrainingError
from facesearch.nets.checkpoint import BaseBundleRef
from facesearch.util.fs import sha256_file


def base_bundle_info(bundle: ModelBundle) -> BaseBundleRef:
    """The ``base_bundle`` entry of a checkpoint."""
    return BaseBundleRef(
        path=str(bundle.root),
        contract_id=bundle.contract_id,
        manifest_sha256=sha256_file(bundle.root / MANIFEST),
        flip_average=bundle.flip_average,
    )


def base_dlib_weights(bundle: ModelBundle, models_dir: Path | None = None) -> Path:
    """The dlib ``.dat`` the bundle's embedder was converted from, checked against the manifest's sha256.

    ``models_dir`` defaults to the installed face_recognition_models package (where
    ``facesearch-export dlib`` reads it).
    """
    name = str(bundle.manifest.get("embedder", {}).get("source", ""))
    expected = bundle.manifest.get("source", {}).get("files", {}).get(name)
    if not name.endswith(".dat") or not expected:
        raise TrainingError(
            f"bundle {bundle.root} was not exported from dlib's .dat files (embedder source {name!r}): "
            "--arch dlib_resnet fine-tunes a `facesearch-export dlib` bundle",
            reason=Reason.BASE_WEIGHTS,
        )
    if models_dir is None:
        from facesearch.nets.dlib_sources import default_models_dir  # noqa: PLC0415 (only for dlib_resnet)

        try:
            models_dir = default_models_dir()
        except FaceSearchError as err:
            raise TrainingError(f"cannot find the base weights {name}: {err}", reason=Reason.BASE_WEIGHTS) from err
    path = models_dir / name
    if not path.is_file():
        raise TrainingError(f"base weights {name} not found in {models_dir}", reason=Reason.BASE_WEIGHTS)
    actual = sha256_file(path)
    if actual != expected:
        raise TrainingError(
            f"{path} has sha256 {actual[:12]}..., the bundle {bundle.root} was made from {expected[:12]}... "
            "(a different face_recognition_models version?)",
            reason=Reason.BASE_WEIGHTS,
        )
    return path
