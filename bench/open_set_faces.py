"""One embedding pass over an identity tree for the open-set benchmark, cached.

Per photo: the face nearest the image centre (the ``embed`` contract), its
L2-normalised embedding, the embedding of the horizontally flipped chip (for the
flip-averaging measurement), and its quality signals. The result is an npz cache so
every experiment of ``bench/open_set.py`` reuses the same faces.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facesearch.bundle.manifest import ModelBundle
from facesearch.vision.decode import DecodeLimits, load_image
from facesearch.vision.pipeline import DetectorMode, FacePipeline, PipelineConfig, nearest_centre

_pipe: FacePipeline | None = None
KEYS = ("found", "embedding", "embedding_flip", "face_size", "blur", "det_score")


def _init(bundle: str, detector: str | None = None) -> None:
    global _pipe  # noqa: PLW0603 - one pipeline per worker process
    mode = DetectorMode(detector) if detector else None
    config = PipelineConfig(threads=1, keep_chips=True, detector_mode=mode)
    _pipe = FacePipeline(ModelBundle.load(bundle, verify=False), config)


def _one(path: str) -> tuple[str, dict[str, object]]:
    assert _pipe is not None
    image = load_image(Path(path), DecodeLimits())
    face = nearest_centre(_pipe.analyze(image), image.shape)
    dim = _pipe.embedder.dim
    if face is None or face.chip is None:
        zeros = np.zeros(dim, np.float32)
        return path, {
            "found": False,
            "embedding": zeros,
            "embedding_flip": zeros,
            "face_size": 0.0,
            "blur": 0.0,
            "det_score": 0.0,
        }
    flipped, _ = _pipe.embedder.embed(np.ascontiguousarray(face.chip[None, :, ::-1]))
    return path, {
        "found": True,
        "embedding": face.embedding,
        "embedding_flip": flipped[0],
        "face_size": face.quality.face_size,
        "blur": face.quality.blur,
        "det_score": face.score,
    }


def face_cache(
    paths: list[Path], bundle: Path, cache: Path, workers: int = 2, detector: str | None = None
) -> dict[str, np.ndarray]:
    """Embed ``paths`` once into ``cache`` (npz); later calls with the same paths read it back.

    ``detector``: a :class:`DetectorMode` value (budget, cascade, exact); None = the pipeline's default.
    """
    names = np.asarray([str(p) for p in paths])
    if cache.is_file():
        with np.load(cache) as data:
            if np.array_equal(data["paths"], names):
                return {k: data[k] for k in data.files}
    rows: dict[str, dict[str, object]] = {}
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(str(bundle), detector)) as pool:
        for path, row in tqdm(
            pool.imap_unordered(_one, names.tolist(), chunksize=8), total=len(names), desc="faces", dynamic_ncols=True
        ):
            rows[path] = row
    out = {"paths": names, **{k: np.asarray([rows[n][k] for n in names.tolist()]) for k in KEYS}}
    out["embedding"] = out["embedding"].astype(np.float32)
    out["embedding_flip"] = out["embedding_flip"].astype(np.float32)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, **out)  # type: ignore[arg-type]
    os.replace(tmp, cache)
    return out


if __name__ == "__main__":
    import argparse

    from bench.common import REPO, data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", nargs="?", type=Path, default=Path("/tmp/open_set_faces.npz"))
    parser.add_argument("--bundle", type=Path, default=REPO / ".facesearch" / "models" / "dlib")
    parser.add_argument(
        "--detector", choices=[m.value for m in DetectorMode], default=None, help="default: the pipeline's default"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tree = data_dir() / "lfw-dev" / "images"
    result = face_cache(sorted(tree.glob("*/*.jpg")), args.bundle, args.cache, args.workers, args.detector)
    print(f"{len(result['paths'])} photos, {int(result['found'].sum())} with a face")
