"""``facesearch-export checkpoint``: a training checkpoint -> a model bundle with a new contract id.

The new bundle is the base bundle with its embedder replaced:

- ``embedder.onnx``: the checkpoint's backbone behind the same I/O contract as the dlib
  embedder (uint8 NHWC ``(N, 150, 150, 3)`` RGB chips in, raw ``(N, d)`` float32 out, opset
  17, dynamic batch), exported by :func:`export.onnx_write.export_onnx` (byte-reproducible);
- ``detector.onnx``, ``landmarks5.npz``: copied from the base bundle (the run's chips were
  cut with them, and serving must cut the same); the base's contract id must equal the one
  the checkpoint was trained from;
- ``manifest.json``: the sections of :mod:`export.bundle_writer`'s manifest, a new
  ``model_id`` (``facesearch-ft-<arch>``) and contract id, the base's ``chip`` and
  ``embedding`` sections (with ``d`` of the new model), plus ``training`` (provenance) and
  ``parity`` (torch vs onnxruntime on the same chips: the export fails above the bound);
- ``model_card.md`` / ``model_card.json`` (:mod:`export.model_card`): generated with a
  before/after evaluation when ``--eval TREE`` is given (and then also written into the
  run directory), else copied from the run directory when it holds one, else generated
  without evaluation numbers.

Written into ``OUT.partial`` and switched in with ``os.replace``. The base's
``calibration.json`` is not copied: thresholds belong to an embedder; recalibrate.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from export.onnx_write import OPSET
from export.resnet import INPUT_NAME, OUTPUT_NAME, write_chip_embedder_onnx
from facesearch.bundle.manifest import (
    MANIFEST,
    PREPROCESSING_VERSION,
    BundleManifest,
    ModelBundle,
    ModelFile,
    ParityReport,
    TrainingRecord,
    contract_id,
)
from facesearch.errors import ContractMismatchError, FaceSearchError, ModelFormatError, Reason
from facesearch.util.fs import replace_dir, sha256_file, write_atomic

MODEL_ID_PREFIX = "facesearch-ft-"
#: Largest torch-vs-onnxruntime difference allowed, relative to the mean L2 norm of the
#: descriptors. Measured: ~1e-6 for the dlib ResNet and ResNet-18 (float32 reordering); a
#: wrong wrapper (colour order, layout, normalisation) or a broken op is off by 1e-1 or more.
PARITY_BOUND = 1e-3
PARITY_RANDOM_CHIPS = 8
PARITY_SMOOTH_CHIPS = 8
CARD_FILES = ("model_card.md", "model_card.json")


@dataclass(frozen=True, slots=True)
class CheckpointExportConfig:
    checkpoint: Path
    out: Path
    base_bundle: Path | None = None  # default: the checkpoint's base_bundle.path
    eval_tree: Path | None = None  # identity tree for the model card's before/after numbers
    eval_pairs: Path | None = None  # pairs.txt relative to eval_tree (default: drawn from it)
    min_face: int = 40


class ChipEmbedder(torch.nn.Module):
    """The ONNX I/O contract around a training backbone: uint8 NHWC RGB chips -> raw descriptors."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.backbone(chips.permute(0, 3, 1, 2).to(torch.float32))


def run_dir_of(checkpoint: Path) -> Path:
    """RUN_DIR for RUN_DIR/best.pt, RUN_DIR/last.pt and RUN_DIR/checkpoints/epoch_NNN.pt."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def read_checkpoint(path: Path) -> dict[str, Any]:
    from facesearch.nets.checkpoint import load_checkpoint  # noqa: PLC0415 - training is only needed here

    ckpt = load_checkpoint(path)
    for key, kind in (("arch", dict), ("model_state", dict), ("base_bundle", dict), ("config", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise ModelFormatError(f"{path}: checkpoint field {key!r} is not a {kind.__name__}")
    return ckpt


def load_backbone(ckpt: dict[str, Any], path: Path) -> torch.nn.Module:
    from facesearch.nets.backbones import build_backbone  # noqa: PLC0415

    backbone = build_backbone(ckpt["arch"])
    try:
        backbone.load_state_dict(ckpt["model_state"], strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise ModelFormatError(f"{path}: model_state does not fit arch {ckpt['arch'].get('kind')!r}: {err}") from err
    return backbone.eval()


def resolve_base(ckpt: dict[str, Any], explicit: Path | None, path: Path) -> ModelBundle:
    recorded = ckpt["base_bundle"]
    root = explicit or (Path(str(recorded["path"])) if recorded.get("path") else None)
    if root is None:
        raise ModelFormatError(f"{path}: the checkpoint names no base bundle; pass --base-bundle DIR")
    base = ModelBundle.load(root)
    expected = str(recorded.get("contract_id"))
    if base.contract_id != expected:
        raise ContractMismatchError(
            f"base bundle {root} has contract {base.contract_id}, but {path.name} was trained from {expected}: "
            "pass --base-bundle with the bundle the run started from (its detector and landmarks cut the chips)"
        )
    return base


def parity_chips(size: int, real: np.ndarray | None = None) -> np.ndarray:
    """Seeded chips for the parity check: uniform noise, smooth random images, then real chips if given."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (PARITY_RANDOM_CHIPS, size, size, 3), dtype=np.uint8)
    coarse = rng.integers(0, 256, (PARITY_SMOOTH_CHIPS, 10, 10, 3), dtype=np.uint8)
    smooth = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    parts = [noise, smooth] + ([real.astype(np.uint8)] if real is not None and len(real) else [])
    return np.concatenate(parts)


def run_chips(checkpoint: Path, ckpt: dict[str, Any], size: int, count: int = 32) -> np.ndarray | None:
    """Up to ``count`` real chips from the run's chip cache (``chips.npy``), when it is still there."""
    run_dir = run_dir_of(checkpoint)
    try:
        cache = json.loads((run_dir / "class_balance.json").read_text()).get("chips_cache")
    except (OSError, ValueError, AttributeError):
        cache = None
    cache = cache or ckpt["config"].get("chips_cache") or run_dir / "chips"
    try:
        chips = np.load(Path(str(cache)) / "chips.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if chips.ndim != 4 or chips.shape[1:] != (size, size, 3) or chips.dtype != np.uint8:
        return None
    step = max(1, len(chips) // count)
    return np.array(chips[::step][:count])


def check_parity(module: torch.nn.Module, onnx_path: Path, chips: np.ndarray) -> dict[str, Any]:
    """torch and onnxruntime on the same chips; raises ModelFormatError above :data:`PARITY_BOUND`."""
    from facesearch.vision.onnx_session import create_session  # noqa: PLC0415

    with torch.no_grad():
        ref = module(torch.from_numpy(chips)).numpy().astype(np.float64)
    session = create_session(onnx_path, intra_op_threads=None)
    name = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {name: chips[i : i + 8]})[0] for i in range(0, len(chips), 8)])
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    scale = float(np.linalg.norm(ref, axis=1).mean())
    relative = diff / max(scale, 1e-12)
    result = {
        "chips": len(chips),
        "max_abs_diff": diff,
        "mean_descriptor_norm": scale,
        "relative": relative,
        "bound_relative": PARITY_BOUND,
    }
    if not np.isfinite(relative) or relative > PARITY_BOUND:
        raise ModelFormatError(
            f"parity check failed: onnxruntime differs from torch by {diff:.3g} (max |diff|), {relative:.3g} of the "
            f"descriptor norm {scale:.3g}; the bound is {PARITY_BOUND:g}",
            reason=Reason.EXPORT_PARITY,
        )
    return result


def export_checkpoint_embedder(
    backbone: torch.nn.Module, arch: dict[str, Any], out_path: Path, *, model_id: str, size: int
) -> tuple[ChipEmbedder, dict[str, Any]]:
    net = ChipEmbedder(backbone).eval()
    dim = write_chip_embedder_onnx(net, size, out_path, extra_metadata={"facesearch.model_id": model_id})
    section = {
        "file": out_path.name,
        "architecture": f"{arch.get('kind')} (fine-tuned or trained by facesearch-train)",
        "opset": OPSET,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "shape": ["batch", size, size, 3]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", dim]},
        "colour_order": "RGB",
        "normalisation": {
            "mean_rgb": arch.get("input_mean_rgb"),
            "divide_by": arch.get("input_divide_by"),
            "applied_in_graph": True,
        },
        "embedding_dim": dim,
    }
    return net, section


def _plain(value: Any) -> Any:
    """JSON-ready copy (tensors and paths as strings) for the manifest."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _write_manifest(tmp: Path, manifest: BundleManifest) -> BundleManifest:
    """Hash every file of the staged bundle into ``manifest`` and write it; returns what was written."""
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name != MANIFEST}
    sealed = replace(manifest, files=files)
    write_atomic(tmp / MANIFEST, sealed.to_json())
    return sealed


def write_checkpoint_bundle(config: CheckpointExportConfig) -> dict[str, Any]:
    """Export ``config.checkpoint`` into the bundle ``config.out``; returns the manifest written."""
    ckpt_path = config.checkpoint
    ckpt = read_checkpoint(ckpt_path)
    base = resolve_base(ckpt, config.base_bundle, ckpt_path)
    backbone = load_backbone(ckpt, ckpt_path)
    arch = ckpt["arch"]
    model_id = f"{MODEL_ID_PREFIX}{arch.get('kind')}"
    size = base.chip_size
    out = config.out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        net, embedder = export_checkpoint_embedder(backbone, arch, tmp / "embedder.onnx", model_id=model_id, size=size)
        faces: Any = None
        pairs: list[Any] = []
        if config.eval_tree is not None:
            faces, pairs = _eval_faces(base, config)
        real = faces.chips[faces.found][:32] if faces is not None else run_chips(ckpt_path, ckpt, size)
        parity = check_parity(net, tmp / "embedder.onnx", parity_chips(size, real))
        for role in ("detector", "landmarks"):
            name = str(base.section(role)["file"])
            shutil.copyfile(base.root / name, tmp / name)
        if base.spec.proposals is not None:  # the detection cascade's proposal network, as the base has it
            shutil.copyfile(base.root / base.spec.proposals.file, tmp / base.spec.proposals.file)
        dim = int(embedder["embedding_dim"])
        embedder_sha = sha256_file(tmp / "embedder.onnx")
        ckpt_sha = sha256_file(ckpt_path)
        spec = base.spec
        manifest = BundleManifest(
            model_id=model_id,
            contract_id=contract_id(model_id, embedder_sha, dim, PREPROCESSING_VERSION, flip_average=base.flip_average),
            files={},
            embedder=ModelFile.from_dict(embedder, "embedder"),
            detector=spec.detector,
            landmarks=spec.landmarks,
            proposals=spec.proposals,
            chip=spec.chip,
            embedding=replace(spec.embedding, dim=dim),
            preprocessing_version=PREPROCESSING_VERSION,
            source={
                "checkpoint": ckpt_path.name,
                "checkpoint_sha256": ckpt_sha,
                "base_bundle": {
                    "model_id": base.model_id,
                    "contract_id": base.contract_id,
                    "source": spec.source,
                },
                "licence": "base weights: "
                + str((spec.source or {}).get("licence", "see base"))
                + "; fine-tuned weights: the owner of the training data decides",
            },
            export_config={
                "checkpoint": str(ckpt_path),
                "base_bundle": str(base.root),
                "eval_tree": str(config.eval_tree) if config.eval_tree else None,
                "eval_pairs": str(config.eval_pairs) if config.eval_pairs else None,
                "min_face": config.min_face,
            },
            training=TrainingRecord(
                checkpoint_sha256=ckpt_sha,
                epoch=int(ckpt.get("epoch", 0)),
                global_step=int(ckpt.get("global_step", 0)),
                fingerprint=str(ckpt.get("fingerprint")),
                arch_kind=arch.get("kind"),
                config=_plain(ckpt["config"]),
                base_contract_id=base.contract_id,
                best=_plain(ckpt.get("best")),
                metrics=_plain(ckpt.get("metrics")),
                data=_plain(ckpt.get("data")),
            ),
            parity=ParityReport(**parity),
            extra={k: v for k, v in spec.extra.items() if k != "calibration"},  # thresholds belong to an embedder
        )
        manifest = _write_manifest(tmp, manifest)
        _model_card(config, ckpt, base, tmp, manifest.to_dict(), faces=faces, pairs=pairs)
        manifest = _write_manifest(tmp, manifest)  # the card files join the sha256 list; the contract is unchanged
        ModelBundle.load(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    return manifest.to_dict()


def _eval_faces(base: ModelBundle, config: CheckpointExportConfig) -> tuple[Any, list[Any]]:
    from facesearch.evaluation.model_eval import cut_chips, draw_pairs, tree_names  # noqa: PLC0415
    from facesearch.evaluation.pairs import read_pairs  # noqa: PLC0415

    assert config.eval_tree is not None
    pairs = read_pairs(config.eval_pairs) if config.eval_pairs else []
    faces = cut_chips(base, config.eval_tree, tree_names(config.eval_tree, pairs), min_face=config.min_face)
    return faces, pairs or draw_pairs(faces)


def _model_card(
    config: CheckpointExportConfig,
    ckpt: dict[str, Any],
    base: ModelBundle,
    tmp: Path,
    manifest: dict[str, Any],
    *,
    faces: Any,
    pairs: list[Any],
) -> None:
    from export.model_card import build_card, write_card  # noqa: PLC0415

    run_dir = run_dir_of(config.checkpoint)
    if faces is None and all((run_dir / name).is_file() for name in CARD_FILES):
        for name in CARD_FILES:
            shutil.copyfile(run_dir / name, tmp / name)
        return
    evaluation = None
    if faces is not None:
        from facesearch.evaluation.model_eval import score_bundle  # noqa: PLC0415

        before = score_bundle(base, faces, pairs)
        after = score_bundle(ModelBundle.load(tmp), faces, pairs)
        evaluation = {
            "set": {
                "tree": str(config.eval_tree),
                "pairs": str(config.eval_pairs or "drawn from the tree"),
                "photos": len(faces.names),
                "identities": faces.identities,
                "faces_found": int(faces.found.sum()),
                "pairs_count": len(pairs),
            },
            "before": before.as_dict(),
            "after": after.as_dict(),
        }
    card = build_card(ckpt, manifest, run_dir=run_dir, evaluation=evaluation)
    write_card(card, tmp)
    if evaluation is not None:  # the run keeps the card with its numbers too
        try:
            write_card(card, run_dir)
        except OSError as err:
            raise FaceSearchError(f"cannot write the model card into {run_dir}: {err}") from err
