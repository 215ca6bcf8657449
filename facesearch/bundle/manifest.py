"""The model bundle: the directory ``facesearch-export`` writes and everything else loads.

A bundle holds the ONNX detector and embedder, the 5-point landmark arrays and
``manifest.json`` (file sha256s, input conventions, chip geometry, embedding
contract). The *contract id* names what an embedding means: two bundles with the
same contract id produce interchangeable embeddings; the indexer stamps it into
every index and the server refuses an index made under another one.

``manifest.json`` is read into :class:`BundleManifest`, one frozen dataclass per section
(:class:`ModelFile` for ``embedder``/``detector``/``landmarks``, :class:`ChipSpec`,
:class:`EmbeddingSpec`, and for a bundle exported from a training checkpoint
:class:`TrainingRecord` and :class:`ParityReport`). Each section types the fields code reads
and keeps the descriptive rest verbatim, so ``BundleManifest.from_dict(d).to_dict() == d`` for
every manifest and :meth:`BundleManifest.to_json` rewrites a file byte for byte (sorted keys,
two-space indent, one trailing newline).

The detector section names the form of the detector network the bundle runs
(:class:`DetectorVariant`: ``float``, dlib parity, or ``int8``); an int8 bundle keeps the float
model beside it, and :meth:`ModelBundle.detector_model` gives either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from facesearch.errors import BundleError, InvalidInputError, Reason
from facesearch.scoring.calibration import DLIB_TOLERANCE_COSINE, Calibration
from facesearch.util.fs import sha256_file  # also importable from here (tests, bundle users)

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "facesearch-model-bundle"
BUNDLE_FORMAT_VERSION = 1
#: Bump when decode/detect/align semantics change in a way that changes embeddings.
PREPROCESSING_VERSION = 1
CALIBRATION_FILE = "calibration.json"
#: Top-level sections every manifest has.
REQUIRED_SECTIONS = ("model_id", "contract_id", "files", "embedder", "detector", "landmarks", "chip", "embedding")
MODEL_SECTIONS = ("embedder", "detector", "landmarks")


class DetectorVariant(StrEnum):
    """Which form of the face detector's network a bundle runs (``detector.variant``).

    The detector finds the faces; it does not change what an embedding means, so the variant is
    not part of the contract id. A manifest without ``variant`` predates the option: float.
    """

    #: dlib's network in float32: boxes and scores exactly as dlib's CNN detector (the parity mode).
    FLOAT = "float"
    #: The same network quantised to 8 bits (``facesearch-export dlib --detector int8``): faster on
    #: CPUs, boxes that agree with the float detector's within a tolerance. The bundle also holds
    #: the float model (``detector.float_model``), so parity stays selectable.
    INT8 = "int8"


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


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{where} is not an object")
    return value


def _number(data: dict[str, Any], key: str, where: str, kind: type) -> Any:
    """``data[key]`` checked to be a ``kind`` (int, or float which admits an int), unconverted so
    that writing it back gives the same JSON."""
    value = data.get(key)
    ok = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if not ok or isinstance(value, bool):
        raise BundleError(f"{where}.{key} must be a number, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A model section (``embedder``, ``detector``, ``landmarks``): the file, and the exporter's
    description of it (input conventions, graph facts), which the loader of that model reads."""

    file: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model section") -> ModelFile:
        data = _object(data, where)
        if not isinstance(data.get("file"), str):
            raise BundleError(f"{where} names no file")
        return cls(data["file"], {k: v for k, v in data.items() if k != "file"})

    def to_dict(self) -> dict[str, Any]:
        return {**self.details, "file": self.file}


@dataclass(frozen=True, slots=True)
class ChipSpec:
    """The aligned face chip the embedder reads: ``size`` pixels square, ``padding`` around the
    landmarks' box (dlib's ``get_face_chip`` convention), plus how it is described."""

    size: int
    padding: float
    details: dict[str, Any] = field(default_factory=dict)  # landmarks ("5-point"), method

    @classmethod
    def from_dict(cls, data: Any, where: str = "chip") -> ChipSpec:
        data = _object(data, where)
        size, padding = _number(data, "size", where, int), _number(data, "padding", where, float)
        return cls(size, padding, {k: v for k, v in data.items() if k not in ("size", "padding")})

    def to_dict(self) -> dict[str, Any]:
        return {**self.details, "size": self.size, "padding": self.padding}


@dataclass(frozen=True, slots=True)
class EmbeddingSpec:
    """What an embedding is: ``dim`` floats; ``flip_average`` (None when the manifest predates the
    option, which means off) says whether it averages the chip with its mirror image."""

    dim: int
    flip_average: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)  # normalised, metric, score, note

    @classmethod
    def from_dict(cls, data: Any, where: str = "embedding") -> EmbeddingSpec:
        data = _object(data, where)
        flip = data.get("flip_average")
        if flip is not None and not isinstance(flip, bool):
            raise BundleError(f"{where}.flip_average must be true or false, got {flip!r}")
        rest = {k: v for k, v in data.items() if k not in ("dim", "flip_average")}
        return cls(_number(data, "dim", where, int), flip, rest)

    def to_dict(self) -> dict[str, Any]:
        out = {**self.details, "dim": self.dim}
        if self.flip_average is not None:
            out["flip_average"] = self.flip_average
        return out


@dataclass(frozen=True, slots=True)
class ParityReport:
    """torch against onnxruntime on the same chips (a checkpoint export): the largest absolute
    difference, relative to the mean descriptor norm, and the bound it had to meet."""

    chips: int
    max_abs_diff: float
    mean_descriptor_norm: float
    relative: float
    bound_relative: float

    @classmethod
    def from_dict(cls, data: Any, where: str = "parity") -> ParityReport:
        data = _object(data, where)
        kinds = {"chips": int, "max_abs_diff": float, "mean_descriptor_norm": float}
        kinds |= {"relative": float, "bound_relative": float}
        return cls(**{k: _number(data, k, where, kind) for k, kind in kinds.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "chips": self.chips,
            "max_abs_diff": self.max_abs_diff,
            "mean_descriptor_norm": self.mean_descriptor_norm,
            "relative": self.relative,
            "bound_relative": self.bound_relative,
        }


@dataclass(frozen=True, slots=True)
class TrainingRecord:
    """Which training checkpoint a bundle was exported from, and the run's own records (its config,
    best epoch, last metrics and data summary, as JSON data)."""

    checkpoint_sha256: str
    epoch: int
    global_step: int
    fingerprint: str
    arch_kind: str | None
    base_contract_id: str
    config: dict[str, Any]
    best: dict[str, Any] | None
    metrics: dict[str, Any] | None
    data: dict[str, Any] | None

    @classmethod
    def from_dict(cls, data: Any, where: str = "training") -> TrainingRecord:
        data = _object(data, where)
        try:
            return cls(
                checkpoint_sha256=data["checkpoint_sha256"],
                epoch=_number(data, "epoch", where, int),
                global_step=_number(data, "global_step", where, int),
                fingerprint=data["fingerprint"],
                arch_kind=data.get("arch_kind"),
                base_contract_id=data["base_contract_id"],
                config=_object(data["config"], f"{where}.config"),
                best=data.get("best"),
                metrics=data.get("metrics"),
                data=data.get("data"),
            )
        except KeyError as err:
            raise BundleError(f"{where} lacks {err.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_sha256": self.checkpoint_sha256,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "fingerprint": self.fingerprint,
            "arch_kind": self.arch_kind,
            "base_contract_id": self.base_contract_id,
            "config": self.config,
            "best": self.best,
            "metrics": self.metrics,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class BundleManifest:
    """``manifest.json``. Optional sections are None when absent (and then not written);
    ``extra`` keeps any other top-level section verbatim."""

    model_id: str
    contract_id: str
    files: dict[str, str]  # file name -> sha256 of every model file (not calibration.json)
    embedder: ModelFile
    detector: ModelFile
    landmarks: ModelFile
    chip: ChipSpec
    embedding: EmbeddingSpec
    preprocessing_version: int | None = None
    source: dict[str, Any] | None = None  # where the weights came from (dlib's package, or a checkpoint)
    export_config: dict[str, Any] | None = None  # the resolved export config
    training: TrainingRecord | None = None
    parity: ParityReport | None = None
    #: The face-proposal network of the detection cascade (``facesearch.vision.proposals``); None in
    #: bundles exported before it (or with ``--proposals none``): the cascade is then off.
    proposals: ModelFile | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = MANIFEST) -> BundleManifest:
        """Check and type a manifest's JSON data; ``where`` prefixes error messages (the file)."""
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where}: not a {BUNDLE_FORMAT} manifest")
        if data.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format version {data.get('format_version')!r}, "
                f"this facesearch reads {BUNDLE_FORMAT_VERSION}"
            )
        for key in REQUIRED_SECTIONS:
            if key not in data:
                raise BundleError(f"{where}: manifest lacks {key!r}")
        files = _object(data["files"], f"{where}: files")
        known = {*REQUIRED_SECTIONS, "format", "format_version", "preprocessing_version", "source"}
        known |= {"export_config", "training", "parity", "proposals"}
        return cls(
            model_id=str(data["model_id"]),
            contract_id=str(data["contract_id"]),
            files={str(k): str(v) for k, v in files.items()},
            embedder=ModelFile.from_dict(data["embedder"], f"{where}: embedder"),
            detector=ModelFile.from_dict(data["detector"], f"{where}: detector"),
            landmarks=ModelFile.from_dict(data["landmarks"], f"{where}: landmarks"),
            chip=ChipSpec.from_dict(data["chip"], f"{where}: chip"),
            embedding=EmbeddingSpec.from_dict(data["embedding"], f"{where}: embedding"),
            preprocessing_version=data.get("preprocessing_version"),
            source=data.get("source"),
            export_config=data.get("export_config"),
            training=TrainingRecord.from_dict(data["training"], f"{where}: training") if "training" in data else None,
            parity=ParityReport.from_dict(data["parity"], f"{where}: parity") if "parity" in data else None,
            proposals=ModelFile.from_dict(data["proposals"], f"{where}: proposals") if "proposals" in data else None,
            extra={k: v for k, v in data.items() if k not in known},
            format=data["format"],
            format_version=data["format_version"],
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "format": self.format,
            "format_version": self.format_version,
            "model_id": self.model_id,
            "contract_id": self.contract_id,
            "files": dict(self.files),
            "embedder": self.embedder.to_dict(),
            "detector": self.detector.to_dict(),
            "landmarks": self.landmarks.to_dict(),
            "chip": self.chip.to_dict(),
            "embedding": self.embedding.to_dict(),
        }
        optional = {
            "preprocessing_version": self.preprocessing_version,
            "source": self.source,
            "export_config": self.export_config,
            "training": self.training.to_dict() if self.training is not None else None,
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "proposals": self.proposals.to_dict() if self.proposals is not None else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out

    def to_json(self) -> str:
        """``manifest.json``'s exact text: sorted keys, two-space indent, one trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """A loaded bundle: its folder, ``manifest.json`` as JSON data (``manifest``) and typed (``spec``)."""

    root: Path
    manifest: dict[str, Any]
    spec: BundleManifest

    @property
    def contract_id(self) -> str:
        return self.spec.contract_id

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding.dim

    @property
    def flip_average(self) -> bool:
        """Whether an embedding is the normalised mean of the chip's and its mirror image's
        (test-time flip averaging; ``embedding.flip_average`` in the manifest, part of the contract)."""
        return bool(self.spec.embedding.flip_average)

    @property
    def chip_size(self) -> int:
        return self.spec.chip.size

    @property
    def chip_padding(self) -> float:
        return float(self.spec.chip.padding)

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

    @property
    def detector_variant(self) -> DetectorVariant:
        """The detector the bundle runs by default (``detector.variant``; float when absent)."""
        value = self.section("detector").get("variant", DetectorVariant.FLOAT)
        try:
            return DetectorVariant(value)
        except ValueError:
            raise BundleError(f"bundle {self.root}: unknown detector variant {value!r}") from None

    def proposals_model(self) -> tuple[Path, dict[str, Any]] | None:
        """The face-proposal network's ONNX file and manifest section, or None when the bundle has
        none (exported before the cascade existed): the detection cascade is then off."""
        if self.spec.proposals is None:
            return None
        return self.root / self.spec.proposals.file, self.spec.proposals.to_dict()

    def detector_model(self, variant: DetectorVariant | None = None) -> tuple[Path, dict[str, Any]]:
        """The detector's ONNX file and its manifest section, for ``variant`` (None: the bundle's own).

        An int8 bundle also holds the float network it was quantised from (``detector.float_model``),
        so ``DetectorVariant.FLOAT`` gives dlib parity from any bundle; the section returned then
        describes that file (its ``onnx`` sha256) and carries no ``quantization``. Raises
        :class:`BundleError` when the bundle does not hold the variant asked for.
        """
        section = self.section("detector")
        own = self.detector_variant
        if variant is None or variant == own:
            return self.root / str(section["file"]), section
        float_model = section.get("float_model")
        if variant is DetectorVariant.FLOAT and isinstance(float_model, dict) and "file" in float_model:
            rest = {k: v for k, v in section.items() if k not in ("float_model", "quantization")}
            chosen = {**rest, "variant": DetectorVariant.FLOAT.value, "file": float_model["file"]}
            chosen["onnx"] = float_model.get("onnx", {})
            return self.root / str(float_model["file"]), chosen
        raise BundleError(
            f"bundle {self.root} holds a {own} detector and no {variant} one "
            f"(export one with `facesearch-export dlib --detector {variant}`)"
        )

    @classmethod
    def load(cls, root: str | Path, *, verify: bool = True) -> ModelBundle:
        """Read and check a bundle; ``verify`` re-hashes every file against the manifest."""
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(
                f"{root} is not a model bundle: {MANIFEST} is missing "
                "(create one with `facesearch-export dlib --out DIR`)",
                reason=Reason.BUNDLE_MISSING,
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{manifest_path}: unreadable manifest: {err}") from err
        bundle = cls(root=root, manifest=manifest, spec=BundleManifest.from_dict(manifest, manifest_path))
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        for name, expected in sorted(self.spec.files.items()):
            path = self.root / name
            if not path.is_file():
                raise BundleError(f"bundle {self.root}: file {name} listed in the manifest is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"bundle {self.root}: {name} has sha256 {actual[:12]}..., manifest says {expected[:12]}... "
                    "(corrupt or modified file; re-export the bundle)",
                    reason=Reason.BUNDLE_CHECKSUM,
                )
