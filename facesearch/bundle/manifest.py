"""The model bundle: the directory ``facesearch-export`` writes and everything else loads.

A bundle holds the ONNX detector and embedder, the 5-point landmark arrays and
``manifest.json`` (file sha256s, input conventions, chip geometry, embedding
contract). The *contract id* names what an embedding means: two bundles with the
same contract id produce interchangeable embeddings; the indexer stamps it into
every index and the server refuses an index made under another one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facesearch.errors import BundleError, InvalidInputError
from facesearch.scoring.calibration import DLIB_TOLERANCE_COSINE, Calibration

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "facesearch-model-bundle"
BUNDLE_FORMAT_VERSION = 1
#: Bump when decode/detect/align semantics change in a way that changes embeddings.
PREPROCESSING_VERSION = 1
CALIBRATION_FILE = "calibration.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contract_id(
    model_id: str, embedder_sha256: str, embedding_dim: int, preprocessing_version: int, *, flip_average: bool = False
) -> str:
    """Stable id of the embedding space: model id, embedder digest, d, preprocessing version, and
    whether embeddings average the face with its mirror image (which changes every embedding).

    Bundles without flip averaging keep the id they had before the option existed.
    """
    fields: list[object] = [model_id, embedder_sha256, embedding_dim, preprocessing_version]
    if flip_average:
        fields.append("flip_average")
    text = json.dumps(fields)
    return f"{model_id}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class ModelBundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def contract_id(self) -> str:
        return str(self.manifest["contract_id"])

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding"]["dim"])

    @property
    def flip_average(self) -> bool:
        """Whether an embedding is the normalised mean of the chip's and its mirror image's
        (test-time flip averaging; ``embedding.flip_average`` in the manifest, part of the contract)."""
        value = self.manifest["embedding"].get("flip_average", False)
        if not isinstance(value, bool):
            raise BundleError(f"bundle {self.root}: embedding.flip_average must be true or false, got {value!r}")
        return value

    @property
    def chip_size(self) -> int:
        return int(self.manifest["chip"]["size"])

    @property
    def chip_padding(self) -> float:
        return float(self.manifest["chip"]["padding"])

    @property
    def calibration(self) -> Calibration | None:
        """The decision calibration stored beside the models (``calibration.json``), if any.

        It is written by ``facesearch eval calibrate`` after export and is not part of the
        model files' sha256 list: recalibrating never changes the embedding contract.
        """
        path = self.root / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{path}: unreadable calibration: {err}") from err
        if not isinstance(data, dict):
            raise BundleError(f"{path}: calibration must be a JSON object")
        try:
            return Calibration.from_dict(data)
        except InvalidInputError as err:
            raise BundleError(f"{path}: {err}") from err

    @property
    def default_min_similarity(self) -> float:
        """The identification threshold (cosine) to apply when a request names none."""
        calibration = self.calibration
        return calibration.min_similarity if calibration else DLIB_TOLERANCE_COSINE

    def section(self, name: str) -> dict[str, Any]:
        try:
            value = self.manifest[name]
        except KeyError:
            raise BundleError(f"bundle {self.root}: manifest has no {name!r} section") from None
        if not isinstance(value, dict):
            raise BundleError(f"bundle {self.root}: manifest section {name!r} is not an object")
        return value

    def path(self, section: str) -> Path:
        """The file of a model section (``embedder``, ``detector``, ``landmarks``)."""
        return self.root / str(self.section(section)["file"])

    @classmethod
    def load(cls, root: str | Path, *, verify: bool = True) -> ModelBundle:
        """Read and check a bundle; ``verify`` re-hashes every file against the manifest."""
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(
                f"{root} is not a model bundle: {MANIFEST} is missing "
                "(create one with `facesearch-export dlib --out DIR`)",
                reason="BUNDLE_MISSING",
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{manifest_path}: unreadable manifest: {err}") from err
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{manifest_path}: not a {BUNDLE_FORMAT} manifest")
        if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{manifest_path}: bundle format version {manifest.get('format_version')!r}, "
                f"this facesearch reads {BUNDLE_FORMAT_VERSION}"
            )
        for key in ("model_id", "contract_id", "files", "embedder", "detector", "landmarks", "chip", "embedding"):
            if key not in manifest:
                raise BundleError(f"{manifest_path}: manifest lacks {key!r}")
        bundle = cls(root=root, manifest=manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        files = self.manifest["files"]
        for name, expected in sorted(files.items()):
            path = self.root / name
            if not path.is_file():
                raise BundleError(f"bundle {self.root}: file {name} listed in the manifest is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"bundle {self.root}: {name} has sha256 {actual[:12]}..., manifest says {expected[:12]}... "
                    "(corrupt or modified file; re-export the bundle)",
                    reason="BUNDLE_CHECKSUM",
                )
