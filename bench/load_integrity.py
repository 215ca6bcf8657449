"""What checking a version's sha256 at every load costs, against loading it (the same run).

The server hashes every file of a version before serving it (``BaseIndex.load`` ->
``load_index(verify=True)``). This builds one version of N synthetic faces (flat re-ranked IVF, the
shape of a large gallery) and times, in one process, alternately: loading it as the server does
without the check (FAISS index, vector ids, re-ranking rows, identity-store scan) and the check
alone (``check_files``, 1 and 4 hashing threads). Files are read once before timing, so both run
from the page cache (a cold disk costs both the same reads).

    nice -n 10 .venv/bin/python -m bench.load_integrity --faces 200000 --out bench/results/load_integrity.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench.common import machine, table, timed
from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, check_files, load_index, read_manifest
from indexer.build import run
from indexer.config import BuildConfig, InputSpec
from indexer.plan import IndexOptions


def build(root: Path, faces: int) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(faces, 128)).astype(np.float32)
    path = root.parent / "emb.npz"
    np.savez(path, embeddings=x, identities=np.asarray([f"p{i // 4}" for i in range(faces)]), contract_id="bench:1")
    result = run(
        BuildConfig(
            out=root,
            input=InputSpec("embeddings", path),
            bundle=None,
            memory_budget=4 << 30,
            index=IndexOptions(flat_max=10_000, queries=200),
            progress=False,
        )
    )
    return result.version_dir


def load(vdir: Path) -> None:
    index = load_index(vdir)
    with IdentityStore.open(vdir / STORE_FILE) as store:
        store.vector_identity_keys()
    index.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="load-integrity-"))
    try:
        vdir = build(work / "root", args.faces)
        manifest = read_manifest(vdir)
        size = sum(e.bytes for e in manifest.files.values())
        assert not check_files(vdir, manifest)  # warm the page cache, and the version is sound
        times: dict[str, list[float]] = {"load": [], "sha256, 1 thread": [], "sha256, 4 threads": []}
        for _ in range(args.repeats):
            times["load"].append(timed(lambda: load(vdir))[0])
            times["sha256, 1 thread"].append(timed(lambda: check_files(vdir, manifest, workers=1))[0])
            times["sha256, 4 threads"].append(timed(lambda: check_files(vdir, manifest, workers=4))[0])
        ref = statistics.median(times["load"])
        rows = [[name, f"{statistics.median(t):.2f}", f"{statistics.median(t) / ref:.2f}"] for name, t in times.items()]
        text = "\n".join(
            [
                "# Checking a version's sha256 at load, against loading it",
                "",
                "    nice -n 10 .venv/bin/python -m bench.load_integrity "
                f"--faces {args.faces} --repeats {args.repeats}",
                "",
                f"{machine()}; {args.faces:,} faces, {manifest.factory}, {len(manifest.files)} files, "
                f"{size / 2**20:.0f} MiB; page cache warm; median of {args.repeats}.",
                "",
                table(rows, ["step", "seconds", "x load"]),
                "",
            ]
        )
        print(text)
        if args.out is not None:
            args.out.write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
