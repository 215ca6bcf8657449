"""Speed of facesearch's face pipeline against dlib's own (face_recognition), same run.

Per stage (decode, detect, landmarks, chip, embed) and end to end, on LFW photos.
facesearch runs with onnxruntime on all cores (embedding batched across faces);
dlib runs as face_recognition users run it. Speeds are reported as ratios.

    bash bench/setup.sh && .venv/bin/python -m bench.pipeline_speed --images 200 --cnn-images 20
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.common import REPO, lfw_images, machine, table, timed
from facesearch.bundle.manifest import ModelBundle
from facesearch.jobs.embed import EmbedConfig
from facesearch.jobs.embed import run as run_embed
from facesearch.vision.align import face_chip
from facesearch.vision.decode import DecodeLimits, load_image
from facesearch.vision.pipeline import FacePipeline, PipelineConfig


def _ours(paths: list[Path], bundle: ModelBundle, min_face: int) -> dict[str, float]:
    pipe = FacePipeline(bundle, PipelineConfig(min_face=min_face))
    pipe.analyze(load_image(paths[0], DecodeLimits()))  # warm-up
    t_decode, images = timed(lambda: [load_image(p, DecodeLimits()) for p in paths])
    t_detect, dets = timed(lambda: [pipe.detect(im) for im in images])
    boxes = [[d.box for d in ds] for ds in dets]
    t_marks, marks = timed(
        lambda: [pipe.landmarks.predict_many(im, b) if b else [] for im, b in zip(images, boxes, strict=True)]
    )
    t_chip, chips = timed(lambda: [face_chip(im, m) for im, ms in zip(images, marks, strict=True) for m in ms])
    faces = len(chips)
    t_embed, _ = timed(lambda: pipe.embedder.embed(np.stack(chips)))
    t_e2e, _ = timed(lambda: [pipe.analyze(load_image(p, DecodeLimits())) for p in paths])
    return {
        "decode": t_decode,
        "detect": t_detect,
        "landmarks": t_marks,
        "chip": t_chip,
        "embed": t_embed,
        "end_to_end": t_e2e,
        "faces": faces,
        "images": len(paths),
    }


def _ours_throughput(paths: list[Path], bundle_dir: Path, min_face: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        seconds, _ = timed(
            lambda: run_embed(
                EmbedConfig(
                    bundle=bundle_dir, paths=tuple(paths), out=Path(tmp) / "e.npz", min_face=min_face, progress=False
                )
            )
        )
    return seconds


def _dlib(paths: list[Path], model: str) -> dict[str, float]:
    import dlib
    import face_recognition
    from face_recognition import api

    face_recognition.face_locations(face_recognition.load_image_file(str(paths[0])), 1, model)  # warm-up
    t_decode, images = timed(lambda: [face_recognition.load_image_file(str(p)) for p in paths])
    detector = api.cnn_face_detector if model == "cnn" else api.face_detector

    def detect(im: np.ndarray) -> list:
        out = detector(im, 1)
        return [d.rect for d in out] if model == "cnn" else list(out)

    t_detect, rects = timed(lambda: [detect(im) for im in images])
    t_marks, shapes = timed(
        lambda: [[api.pose_predictor_5_point(im, r) for r in rs] for im, rs in zip(images, rects, strict=True)]
    )
    t_chip, chips = timed(
        lambda: [dlib.get_face_chip(im, s, 150, 0.25) for im, ss in zip(images, shapes, strict=True) for s in ss]
    )
    t_embed, _ = timed(lambda: [api.face_encoder.compute_face_descriptor(c) for c in chips])

    def e2e(path: Path) -> None:
        im = face_recognition.load_image_file(str(path))
        locs = face_recognition.face_locations(im, 1, model)
        face_recognition.face_encodings(im, locs, 1, "small")

    t_e2e, _ = timed(lambda: [e2e(p) for p in paths])
    return {
        "decode": t_decode,
        "detect": t_detect,
        "landmarks": t_marks,
        "chip": t_chip,
        "embed": t_embed,
        "end_to_end": t_e2e,
        "faces": len(chips),
        "images": len(paths),
    }


def _ms(result: dict[str, float], stage: str) -> float:
    per = result["faces"] if stage in ("landmarks", "chip", "embed") else result["images"]
    return 1000.0 * result[stage] / max(1, per)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--cnn-images", type=int, default=20)
    parser.add_argument("--bundle", type=Path, default=REPO / ".facesearch" / "models" / "dlib")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pipeline_speed.md")
    args = parser.parse_args(argv)
    bundle = ModelBundle.load(args.bundle)
    paths = lfw_images(args.images)
    cnn_paths = paths[: args.cnn_images]
    ours40 = _ours(paths, bundle, 40)
    ours80 = _ours(paths, bundle, 80)
    ours40_cnnset = _ours(cnn_paths, bundle, 40)
    through40 = _ours_throughput(paths, args.bundle, 40)
    hog = _dlib(paths, "hog")
    cnn = _dlib(cnn_paths, "cnn")
    rows = []
    for stage in ("decode", "detect", "landmarks", "chip", "embed", "end_to_end"):
        unit = "ms/face" if stage in ("landmarks", "chip", "embed") else "ms/image"
        rows.append(
            [
                stage,
                unit,
                f"{_ms(ours40, stage):.2f}",
                f"{_ms(ours80, stage):.2f}",
                f"{_ms(hog, stage):.2f}",
                f"{_ms(cnn, stage):.2f}",
                f"{_ms(hog, stage) / _ms(ours40, stage):.1f}x",
                f"{_ms(cnn, stage) / _ms(ours40_cnnset, stage):.1f}x",
            ]
        )
    thr_ms = 1000.0 * through40 / len(paths)
    text = [
        "# Face pipeline speed: facesearch vs dlib (face_recognition), same run",
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python -m bench.pipeline_speed --images {args.images} "
        f"--cnn-images {args.cnn_images}`.",
        f"Images: {len(paths)} LFW dev photos (250x250), every Nth of the sorted list; dlib's CNN detector on the "
        f"first {len(cnn_paths)} of them (it takes seconds per photo). Faces found: ours(min_face 40) "
        f"{ours40['faces']}, ours(min_face 80) {ours80['faces']}, HOG {hog['faces']}, CNN {cnn['faces']}.",
        "facesearch: onnxruntime on all cores, embeddings batched; dlib: face_recognition as users call it "
        "(upsample 1, 5-point landmarks), one process.",
        "",
        table(
            rows,
            [
                "stage",
                "unit",
                "ours min_face=40",
                "ours min_face=80",
                "dlib HOG",
                "dlib CNN",
                "speed-up vs HOG",
                "speed-up vs CNN",
            ],
        ),
        "",
        f"End to end with `facesearch embed` (one worker process per core, min_face 40): {thr_ms:.1f} ms/image, "
        f"{1000.0 / thr_ms:.1f} images/s: {_ms(hog, 'end_to_end') / thr_ms:.1f}x the HOG pipeline, "
        f"{_ms(cnn, 'end_to_end') / thr_ms:.1f}x the CNN pipeline.",
        "",
        "The speed-up vs CNN column compares with ours on the same CNN subset. Stage rows for dlib's 'embed' use "
        "compute_face_descriptor on the chip, one face at a time (as face_recognition does).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
