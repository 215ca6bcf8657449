"""Restart and hot-swap time with a live journal on top of a published index: before vs after, same run.

A server's start (``server/app.py``) opens its live journal, loads the published version with its
open-set statistics, and installs it, replaying the live changes the version does not hold into the
statistics (``Gallery.install``); health is NOT_SERVING until then. This times exactly those calls,
in a fresh process per measurement, for the code under test (this tree, "after") and an older tree
("before", a ``git worktree`` of the reference commit: never ``git stash``), on the same files:

- a published synthetic index (``facesearch.evaluation.synthetic``, 4 faces per identity on
  average), built once by the *before* code;
- a live journal of ``N`` new identities (2 faces each), ``N/20`` more faces for published
  identities, ``N/50`` published identities deleted, written by the *before* code (its format, which
  the after code reads and migrates to checksummed records once, at its first open: included);
- each measurement starts from a fresh copy of that journal.

"hot swap": installing a version again while a writer enrolls one identity every 20 ms (what a
compaction's swap does): the install time and the longest an enrollment waited.

    git worktree add --detach /tmp/old <REF>
    nice -n 10 .venv/bin/python bench/restart.py --old /tmp/old --base-faces 100000 --live 1000 4000 20000

Results: ``bench/results/restart.md``. The "before" runs are stopped at ``--before-cap`` seconds.

``--checkpoints`` (no ``--old``) measures this tree only, with open-set checkpoints
(:mod:`server.open_set_checkpoint`), for each live size N on one published index:

1. a restart with no checkpoint (the whole live delta replayed), which then writes one (timed);
2. ``--after`` more changes appended to the journal (new identities of 2 faces: what a kill -9
   finds after a checkpoint, at most about ``LiveCheckpoints.EVERY``), then a restart on the
   checkpoint (replaying only those), which writes a new checkpoint;
3. a restart on that checkpoint with nothing after it (a clean shutdown writes one).

    nice -n 10 .venv/bin/python bench/restart.py --checkpoints --base-faces 1000000 --live 10000 100000 \
        --work /dev/shm/restart-bench --out bench/results/restart_checkpoints.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # children import the code under test only (PYTHONPATH)

CONTRACT = "bench-restart:0000000000000000"
D = 128


# -- children: run with PYTHONPATH at the code under test -----------------------------------------
def child_build(root: Path, faces: int) -> dict[str, object]:
    import numpy as np

    from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path
    from indexer.build import run
    from indexer.config import BuildConfig, InputSpec
    from indexer.plan import IndexOptions

    g = SyntheticGallery(FaceEmbeddingModel.load(default_model_path()), faces, 4.0, seed=1).materialize()
    root.parent.mkdir(parents=True, exist_ok=True)
    npz = root.parent / "base.npz"
    ids = np.asarray([f"base-{int(i)}" for i in g.identities])
    np.savez(npz, embeddings=g.embeddings.astype(np.float32), identities=ids, contract_id=np.asarray(CONTRACT))
    t0 = time.perf_counter()
    result = run(
        BuildConfig(
            out=root,
            input=InputSpec("embeddings", npz),
            bundle=None,
            memory_budget=4 << 30,
            index=IndexOptions(queries=200),
            progress=False,
        )
    )
    m = result.manifest
    return {"seconds": time.perf_counter() - t0, "factory": m.factory, "ntotal": m.ntotal, "identities": m.n_identities}


def child_journal(root: Path, live: Path, n: int) -> dict[str, object]:
    import numpy as np

    from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path
    from facesearch.store.live_journal import LiveIdentity, LiveJournal, NewFace
    from server.base_index import BaseIndex

    base = BaseIndex.load(root, contract_id=CONTRACT)
    model = FaceEmbeddingModel.load(default_model_path())
    g = SyntheticGallery(model, 2 * n + 64, 2.0, seed=2).materialize()
    groups: dict[int, list[np.ndarray]] = {}
    for e, i in zip(g.embeddings, g.identities, strict=True):
        groups.setdefault(int(i), []).append(e)
    extra = SyntheticGallery(model, n // 20 + 1, 1.0, seed=3).materialize().embeddings
    published = sorted({s.identity_id for s in base.store.identities_after("", n // 10 + 10)})
    journal = LiveJournal.open(live, contract_id=CONTRACT, d=D)

    def faces(vectors: list[np.ndarray]) -> list[NewFace]:
        return [NewFace(v.astype(np.float32), None, None, None, None, None) for v in vectors]

    for label in sorted(groups)[:n]:
        journal.enroll(LiveIdentity(f"live-{label}", 0, False, None, {}, 1.0, 1.0), faces(groups[label][:2]))
    for k in range(n // 20):
        who = published[k % len(published)]
        journal.enroll(LiveIdentity(who, 0, False, None, {}, 1.0, 1.0), faces([extra[k]]))
    for who in published[len(published) - n // 50 :]:
        stored = base.store.find_identity(who)
        doomed = base.face_ids_of(stored.key).tolist() if stored is not None else []
        journal.delete_identity(LiveIdentity(who, 0, True, None, {}, 1.0, 1.0), doomed)
    high = journal.high_water()
    journal.close()
    return {"changes": high}


def child_more(live: Path, n: int, seed: int) -> dict[str, object]:
    """Append ``n`` new identities of 2 faces to the journal (changes after a checkpoint)."""
    import numpy as np

    from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path
    from facesearch.store.live_journal import LiveIdentity, LiveJournal, NewFace

    g = SyntheticGallery(FaceEmbeddingModel.load(default_model_path()), 2 * n + 64, 2.0, seed=seed).materialize()
    groups: dict[int, list[np.ndarray]] = {}
    for e, i in zip(g.embeddings, g.identities, strict=True):
        groups.setdefault(int(i), []).append(e)
    journal = LiveJournal.open(live, contract_id=CONTRACT, d=D)
    for label in sorted(groups)[:n]:
        faces = [NewFace(v.astype(np.float32), None, None, None, None, None) for v in groups[label][:2]]
        journal.enroll(LiveIdentity(f"more-{seed}-{label}", 0, False, None, {}, 1.0, 1.0), faces)
    high = journal.high_water()
    journal.close()
    return {"changes": high}


def child_bulk_checkpoint(root: Path, live: Path) -> dict[str, object]:
    """A checkpoint of the served gallery's statistics computed in bulk (what the indexer computes for a
    version: ``build_open_set``) instead of by the replay, for sizes whose full replay is stopped: a restart
    on a checkpoint costs the same whatever computed it (its size is what matters)."""
    import numpy as np

    from facesearch.scoring.gallery_stats import build_open_set
    from facesearch.store.live_journal import LiveJournal
    from server.base_index import BaseIndex
    from server.open_set_checkpoint import LiveCheckpoints, Taken, key_for
    from server.open_set_upkeep import OpenSetParams

    t0 = time.perf_counter()
    base = BaseIndex.load(root, contract_id=CONTRACT)
    journal = LiveJournal.open(live, contract_id=CONTRACT, d=D)
    snap = journal.snapshot()
    with np.load(root.parent / "base.npz") as data:
        base_emb, base_ids = data["embeddings"], data["identities"].astype(str)
    deleted = {i.identity_id for i in snap.identities if i.deleted}
    keep = ~np.isin(base_ids, sorted(deleted))
    owners = np.concatenate([base_ids[keep], np.asarray([f.identity_id for f in snap.faces], dtype=base_ids.dtype)])
    faces = np.concatenate([base_emb[keep], snap.embeddings]).astype(np.float32)
    ids, rows = np.unique(owners, return_inverse=True)
    params = OpenSetParams()
    data = build_open_set([str(i) for i in ids], rows, faces, k=params.k, rule=params.rule, depth=params.depth)
    built_s = time.perf_counter() - t0
    key = key_for(base, journal.journal_id, params)
    seq = snap.high_water
    checkpoints = LiveCheckpoints(live, lambda: Taken(key, seq, data, 0))
    assert checkpoints.write_now()
    journal.close()
    return {"identities": len(ids), "faces": len(faces), "bulk_s": built_s, "seq": seq}


def child_checkpointed_restart(root: Path, live: Path) -> dict[str, object]:
    """Time to SERVING (using a checkpoint when there is one), then the time to write a new one."""
    import logging

    import faiss

    from facesearch.store.live_journal import LiveJournal
    from server.base_index import BaseIndex
    from server.gallery import Gallery

    logging.basicConfig(level=logging.WARNING)
    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    journal = LiveJournal.open(live, contract_id=CONTRACT, d=D)
    t1 = time.perf_counter()
    base = BaseIndex.load(root, contract_id=CONTRACT)
    gallery = Gallery(journal, D)
    gallery.checkpoints.delay_s = 3600.0  # written below, timed, not by the thread
    t2 = time.perf_counter()
    gallery.install(base)  # loads the version's own open-set statistics only when no checkpoint is used
    t3 = time.perf_counter()
    state = gallery.state
    assert state is not None
    out: dict[str, object] = {
        "journal_open_s": t1 - t0,
        "load_s": t2 - t1,
        "install_s": t3 - t2,
        "serving_s": t3 - t0,
        "identities": state.open_set.gallery_size,
        "live_faces": state.live.alive_count,
        "high_water": state.live.high_water,
    }
    t4 = time.perf_counter()
    assert gallery.checkpoints.write_now()
    out["checkpoint_write_s"] = time.perf_counter() - t4
    out["checkpoint_mb"] = (live / "open_set_checkpoint.npz").stat().st_size / 1e6
    gallery.checkpoints.close()
    journal.close()
    return out


def child_restart(root: Path, live: Path, swap: bool) -> dict[str, object]:
    import faiss

    from facesearch.store.live_journal import LiveJournal
    from server.base_index import BaseIndex
    from server.gallery import Gallery

    faiss.omp_set_num_threads(1)  # the server's default FACESEARCH_SEARCH_THREADS
    out: dict[str, object] = {}
    t0 = time.perf_counter()
    journal = LiveJournal.open(live, contract_id=CONTRACT, d=D)
    t1 = time.perf_counter()
    base = BaseIndex.load(root, contract_id=CONTRACT)
    gallery = Gallery(journal, D)
    gallery.base_open_set(base)
    t2 = time.perf_counter()
    gallery.install(base)
    t3 = time.perf_counter()
    out |= {"journal_open_s": t1 - t0, "load_s": t2 - t1, "install_s": t3 - t2, "serving_s": t3 - t0}
    if swap:
        out |= _swap_under_writes(gallery, root)
    journal.close()
    return out


def _swap_under_writes(gallery: object, root: Path) -> dict[str, object]:
    import numpy as np

    from facesearch.store.live_journal import NewFace
    from server.base_index import BaseIndex

    waits: list[float] = []
    stop = threading.Event()
    rng = np.random.default_rng(9)

    def writer() -> None:
        i = 0
        while not stop.is_set():
            v = rng.standard_normal(D).astype(np.float32)
            t = time.perf_counter()
            face = NewFace(v / np.linalg.norm(v), None, None, None, None, None)
            gallery.enroll(f"swap-writer-{i}", None, {}, [face], True)  # type: ignore[attr-defined]
            waits.append(time.perf_counter() - t)
            i += 1
            time.sleep(0.02)

    base = BaseIndex.load(root, contract_id=CONTRACT)
    gallery.base_open_set(base)  # type: ignore[attr-defined]  # the watcher prepares it off the lock
    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    gallery.install(base)  # type: ignore[attr-defined]
    swap_s = time.perf_counter() - t0
    time.sleep(0.5)
    stop.set()
    thread.join()
    return {"swap_s": swap_s, "writes_during_swap": len(waits), "max_write_wait_s": max(waits, default=0.0)}


# -- the parent ---------------------------------------------------------------------------------
def run_child(code: Path, mode: str, args: list[str], timeout: float) -> dict[str, object] | None:
    from bench.common import data_dir  # the parent's (REPO on its path)

    env = {**os.environ, "PYTHONPATH": str(code), "OMP_WAIT_POLICY": "PASSIVE", "FACESEARCH_DATA": str(data_dir())}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, *args]
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir(), check=False
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise SystemExit(f"{mode} ({code}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(value: object, cap: float) -> str:
    return f"> {cap:.0f} (stopped)" if value is None else f"{float(value):.2f}"  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, help="a worktree of the reference commit (before); required")
    ap.add_argument("--base-faces", type=int, default=100_000)
    ap.add_argument("--live", type=int, nargs="+", default=[1000, 4000, 20000])
    ap.add_argument("--swap-up-to", type=int, default=4000, help="hot-swap runs for live sizes up to this")
    ap.add_argument("--before-cap", type=float, default=300.0, help="seconds after which a 'before' run is stopped")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "restart.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--swap", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoints", action="store_true", help="this tree only, with open-set checkpoints")
    ap.add_argument("--after", type=int, default=1000, help="changes after the checkpoint (--checkpoints)")
    ap.add_argument("--full-cap", type=float, default=1800.0, help="seconds before a full replay is stopped")
    ap.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "build":
        print(json.dumps(child_build(args.root, args.n)))
        return 0
    if args.child == "journal":
        print(json.dumps(child_journal(args.root, args.dir, args.n)))
        return 0
    if args.child == "restart":
        print(json.dumps(child_restart(args.root, args.dir, args.swap)))
        return 0
    if args.child == "more":
        print(json.dumps(child_more(args.dir, args.n, args.seed)))
        return 0
    if args.child == "bulk":
        print(json.dumps(child_bulk_checkpoint(args.root, args.dir)))
        return 0
    if args.child == "checkpointed":
        print(json.dumps(child_checkpointed_restart(args.root, args.dir)))
        return 0
    if args.checkpoints:
        return checkpoint_runs(args)

    if args.old is None:
        ap.error("--old is required (a worktree of the reference commit)")
    sys.path.insert(0, str(REPO))  # the parent imports bench.common
    work = args.work or Path(tempfile.mkdtemp(prefix="restart-bench-"))
    root = work / "index"
    old, new = args.old.resolve(), REPO
    ref = subprocess.run(
        ["git", "-C", str(old), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    )
    built = run_child(old, "build", ["--root", str(root), "--n", str(args.base_faces)], timeout=3600)
    assert built is not None
    print(f"base index: {built}", flush=True)
    rows = []
    for n in args.live:
        journal = work / f"journal-{n}"
        made = run_child(old, "journal", ["--root", str(root), "--dir", str(journal), "--n", str(n)], timeout=3600)
        swap = ["--swap"] if n <= args.swap_up_to else []
        results = {}
        for label, code, cap in (("before", old, args.before_cap), ("after", new, 3600.0)):
            copy = work / f"run-{n}-{label}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(journal, copy)
            results[label] = run_child(code, "restart", ["--root", str(root), "--dir", str(copy), *swap], timeout=cap)
            print(f"live {n} ({made}): {label} {results[label]}", flush=True)
        rows.append((n, made, results))
    write_report(args, built, rows, ref.stdout.strip())
    return 0


def checkpoint_runs(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    work = args.work or Path(tempfile.mkdtemp(prefix="restart-bench-"))
    root = work / "index"
    if (root / "CURRENT").is_file():
        built = json.loads((work / "built.json").read_text())
    else:
        built = run_child(REPO, "build", ["--root", str(root), "--n", str(args.base_faces)], timeout=7200)
        assert built is not None
        (work / "built.json").write_text(json.dumps(built))
    print(f"base index: {built}", flush=True)
    rows = []
    for n in args.live:
        journal = work / f"journal-{n}"
        if not journal.is_dir():
            t0 = time.perf_counter()
            run_child(REPO, "journal", ["--root", str(root), "--dir", str(journal), "--n", str(n)], timeout=7200)
            print(f"journal {n}: written in {time.perf_counter() - t0:.0f}s", flush=True)
        copy = work / f"ckpt-run-{n}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(journal, copy)
        common = ["--root", str(root), "--dir", str(copy)]
        full = run_child(REPO, "checkpointed", common, timeout=args.full_cap)
        print(f"live {n}: full replay {full}", flush=True)
        bulk = None
        if full is None:  # stopped: compute the checkpoint in bulk instead (child_bulk_checkpoint)
            bulk = run_child(REPO, "bulk", common, timeout=7200)
            print(f"live {n}: bulk checkpoint {bulk}", flush=True)
        after = on_ckpt = None
        if full is not None or bulk is not None:
            more = ["--dir", str(copy), "--n", str(args.after), "--seed", str(100 + n % 97)]
            run_child(REPO, "more", more, timeout=3600)
            after = run_child(REPO, "checkpointed", common, timeout=args.full_cap)
            print(f"live {n}: checkpoint + {args.after} changes {after}", flush=True)
            on_ckpt = run_child(REPO, "checkpointed", common, timeout=args.full_cap)
            print(f"live {n}: checkpoint, nothing after it {on_ckpt}", flush=True)
        rows.append((n, full, after, on_ckpt, bulk))
    write_checkpoint_report(args, built, rows)
    return 0


def write_checkpoint_report(args: argparse.Namespace, built: dict[str, object], rows: list) -> None:
    from bench.common import machine, table

    def cell(result: dict[str, object] | None, key: str, cap: float | None = None) -> str:
        if result is None:
            return f"> {cap:.0f} (stopped)" if cap else "(not run)"
        return f"{float(result[key]):.2f}"  # type: ignore[arg-type]

    lines = [
        "# Restart with a live journal and open-set checkpoints (bench/restart.py --checkpoints)",
        "",
        f"    nice -n 10 .venv/bin/python bench/restart.py --checkpoints --base-faces {args.base_faces} "
        f"--live {' '.join(map(str, args.live))} --after {args.after} --work {args.work} --out {args.out}",
        "",
        f"This tree only ({machine()}, shared with other jobs), one process per run, FAISS at 1 thread (the "
        f"server's default). Published index: {built['ntotal']:,} synthetic faces, {built['identities']:,} "
        f"identities, {built['factory']}, with its open_set.npz. Live journal: N new identities of 2 faces, N/20 "
        "faces added to published identities, N/50 published identities deleted. Files under the --work folder.",
        "",
        "Time to SERVING = journal open + version load + install (the replay), seconds: (1) no checkpoint, the "
        f"whole delta replayed; (2) on the checkpoint that run wrote, plus {args.after:,} new identities "
        "appended after it (what a kill -9 finds: the server writes one every ~1,000 changes, after every "
        "install and at shutdown); (3) on the checkpoint run (2) wrote, nothing after it (a clean restart). "
        "Where (1) was stopped, the checkpoint for (2) was computed in bulk (build_open_set over the served "
        "faces, as the indexer does for a version; its seconds in the 'checkpoint write' column): a restart on a "
        "checkpoint costs the same whatever computed it.",
        "",
    ]
    body = [
        [
            f"{n:,}",
            cell(full, "serving_s", args.full_cap),
            cell(full, "install_s", args.full_cap),
            cell(full, "checkpoint_write_s") if full else f"bulk: {float(bulk['bulk_s']):.0f}" if bulk else "",
            f"{float(full['checkpoint_mb']):.0f}" if full else "",
            cell(after, "serving_s"),
            cell(after, "install_s"),
            cell(on_ckpt, "serving_s"),
        ]
        for n, full, after, on_ckpt, bulk in rows
    ]
    header = [
        "live identities",
        "(1) no checkpoint: to SERVING",
        "(1) install",
        "checkpoint write",
        "checkpoint MB",
        f"(2) checkpoint + {args.after:,}: to SERVING",
        "(2) install",
        "(3) checkpoint only: to SERVING",
    ]
    lines += [table(body, header), ""]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_report(args: argparse.Namespace, built: dict[str, object], rows: list, ref: str) -> None:  # type: ignore[type-arg]
    from bench.common import machine, table  # the parent's

    cap = args.before_cap
    lines = [
        "# Restart with a live journal (bench/restart.py)",
        "",
        f"    nice -n 10 .venv/bin/python bench/restart.py --old /tmp/old --base-faces {args.base_faces} "
        f"--live {' '.join(map(str, args.live))}",
        "",
        f"Before: the tree at {ref} (`git worktree add --detach /tmp/old {ref}`); after: this tree. Same machine "
        f"({machine()}, shared with other jobs), same files, one process per run, FAISS at 1 thread (the server's "
        "default). Published index: "
        f"{built['ntotal']:,} synthetic faces, {built['identities']:,} identities, {built['factory']}, with its "
        "open_set.npz. Live journal: N new identities of 2 faces, N/20 faces added to published identities, N/50 "
        "published identities deleted (written in the before format: the after code's first open migrates it).",
        "",
        "Time to SERVING = journal open + version load (with its open-set statistics) + install (the replay); "
        "seconds. Hot swap: installing again while an enrollment is made every 20 ms.",
        "",
    ]
    body = []
    for n, _, res in rows:
        b, a = res["before"], res["after"]
        ratio = f"{b['serving_s'] / a['serving_s']:.1f}x" if b is not None else f"> {cap / a['serving_s']:.1f}x"
        body.append(
            [
                f"{n:,}",
                fmt(b and b["serving_s"], cap),
                f"{a['serving_s']:.2f}",
                ratio,
                f"{a['journal_open_s']:.2f}",
                f"{a['install_s']:.2f}",
                fmt(b and b.get("max_write_wait_s"), cap) if b is None or "swap_s" in b else "",
                f"{a['max_write_wait_s']:.3f}" if "swap_s" in a else "",
            ]
        )
    header = [
        "live identities",
        "before: to SERVING",
        "after: to SERVING",
        "speed-up",
        "after: journal open (incl. migration)",
        "after: install",
        "before: longest write wait in a swap",
        "after: longest write wait in a swap",
    ]
    lines += [table(body, header), ""]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
