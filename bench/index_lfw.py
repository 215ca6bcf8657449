"""Real faces: build an index from the LFW dev photos (embedding stage included), then run the
index benchmark on those real dlib embeddings (leave-one-out queries, IVF forced by
``flat_max`` so there is something approximate to measure).

    nice -n 10 .venv/bin/python bench/index_lfw.py --bundle /path/to/bundle --out bench/results/index_lfw.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from facesearch.store.identity_store import IdentityStore  # noqa: E402
from facesearch.store.index_artifact import STORE_FILE, read_manifest, resolve_version_dir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("FACESEARCH_DATA", REPO.parent / "shared" / "data"))
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    images = args.data / "lfw-dev" / "images"
    root = args.work / "lfw-root"
    shutil.rmtree(root, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "indexer",
        "build",
        "--bundle",
        str(args.bundle),
        "--images",
        str(images),
        "--out",
        str(root),
        "--workers",
        str(args.workers),
        "--quiet",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout, proc.stderr[-2000:])
    if proc.returncode != 0:
        return proc.returncode
    m = read_manifest(root)
    with IdentityStore.open(resolve_version_dir(root) / STORE_FILE) as store:
        _, emb, keys = next(store.iter_embeddings(10_000_000))
        names = store.identity_ids_by_key(keys.tolist())
    npz = args.work / "lfw-embeddings.npz"
    np.savez(npz, embeddings=emb, identities=np.array(names), contract_id=np.array(m.contract_id))
    bench = [
        sys.executable,
        "bench/index_bench.py",
        "--embeddings",
        str(npz),
        "--queries",
        str(min(1000, len(emb))),
        "--index-options",
        "flat_max=500",
        "--memory-budget",
        "2G",
        "--numpy-queries",
        "50",
        "--flat-queries",
        "300",
        "--out",
        str(args.out),
    ]
    proc = subprocess.run(bench, check=False, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    stage = {
        "images": m.build.get("images"),
        "accepted": m.ntotal,
        "rejected": m.build.get("rejected"),
        "embed_s": m.build.get("embed_s"),
        "build_wall_s": round(wall, 1),
        "workers": args.workers,
        "identities": m.n_identities,
    }
    with args.out.open("a") as fh:
        fh.write("\n## Embedding stage on the LFW dev photos\n\n")
        fh.write(
            f"`facesearch-index build --images lfw-dev/images --workers {args.workers}`: "
            f"{stage['images']} photos -> {stage['accepted']} faces of {stage['identities']} people in "
            f"{stage['embed_s']} s of embedding "
            f"({stage['images'] / max(stage['embed_s'], 1e-9):.1f} photos/s "
            f"on {args.workers} worker processes; build wall {stage['build_wall_s']} s). Rejected: "
            f"{json.dumps(stage['rejected'])} (a photo must show exactly one face).\n"
        )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
