"""A replica restarted with 100k faces in the store's log tail: time to SERVING (issue 14: <= 30 s).

Starts its own PostgreSQL (tests/pg_fixtures.py), migrates it, and writes ``--faces`` synthetic faces
(``facesearch.evaluation.synthetic`` over ``../shared/data/face_embedding_model.npz``, ``--per-identity``
faces per identity on average) into the store's change log through ``PgStore`` (the indexer's
``import_faces``: batches of 1000 faces, one transaction and one log entry each). No version is
published on the index root, so the whole log is the tail a replica must replay.

Then, for ``--rounds`` rounds, a real ``facesearch-server`` process (``FACESEARCH_STORE`` set) is started
on the root and timed from the process's start to its health answering SERVING, then stopped
(SIGTERM: a clean shutdown). Round 1 starts with an empty replica directory (nothing cached); later
rounds find what the previous one left in ``ROOT/replicas/REPLICA_ID`` (its open-set checkpoint). The
server's log lines about the install are kept (what took the time).

    nice -n 10 .venv/bin/python bench/replica_restart.py --faces 100000 --rounds 2 \
        --out bench/results/replica_restart.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, table  # noqa: E402
from bench.server_bench import bundle_path  # noqa: E402
from facesearch.bundle import ModelBundle  # noqa: E402
from facesearch.client.service_client import FaceSearchClient  # noqa: E402
from facesearch.evaluation.synthetic import FaceEmbeddingModel, SyntheticGallery, default_model_path  # noqa: E402
from facesearch.store.live_journal import NewFace  # noqa: E402
from facesearch.store.postgres import PgStore, migrate  # noqa: E402
from facesearch.store.postgres.imports import ImportFace, import_faces  # noqa: E402
from tests.integration.server_fixtures import start_server  # noqa: E402
from tests.pg_fixtures import PgServer, find_pg_bin  # noqa: E402

BATCH = 1000


def fill(dsn: str, contract_id: str, n: int, per_identity: float, seed: int) -> tuple[float, int, int]:
    """``n`` synthetic faces into the store's log; (seconds, identities, high water)."""
    model = FaceEmbeddingModel.load(default_model_path())
    g = SyntheticGallery(model, n, per_identity, seed=seed).materialize()
    t0 = time.perf_counter()
    with PgStore.open(dsn, contract_id=contract_id, d=int(g.embeddings.shape[1])) as store:
        for i in range(0, n, BATCH):
            batch = [
                ImportFace(
                    f"syn{seed}-{int(g.identities[j]):06d}",
                    NewFace(g.embeddings[j], f"syn/{j}.jpg", (0.0, 0.0, 90.0, 90.0), 0.9, 90.0, 50.0),
                )
                for j in range(i, min(n, i + BATCH))
            ]
            import_faces(store, batch, principal="bench", via="bench/replica_restart.py")
        high = store.high_water()
    return time.perf_counter() - t0, len(set(g.identities.tolist())), high


def timed_start(bundle: Path, root: Path, logs: Path, env: dict[str, str]) -> tuple[float, dict[str, object], str]:
    """Seconds from the process start to SERVING, GetStats, and the server's log lines of the install."""
    t0 = time.perf_counter()
    server = start_server(bundle, root, logs, env=env, timeout=600)
    try:
        with FaceSearchClient(server.target, timeout=60) as c:
            while c.health() != "SERVING":
                time.sleep(0.05)
            took = time.perf_counter() - t0
            stats = c.stats()
    finally:
        server.stop()
    text = server.log()
    keep = [
        line
        for line in text.splitlines()
        if re.search(r"open-set|checkpoint|following store|install|replay|loaded|SERVING", line, re.IGNORECASE)
    ]
    return took, stats, "\n".join(keep[-12:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--per-identity", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", type=int, default=4000, help="faces a first run of the replica serves (round 0)")
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    bundle = bundle_path(args.bundle)
    contract = ModelBundle.load(bundle, verify=False).contract_id
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (initdb, pg_ctl); set FACESEARCH_PG_BIN")
    work = Path(tempfile.mkdtemp(prefix="replica-restart-"))
    pg = PgServer(bin_dir).init().start()
    load0 = os.getloadavg()[0]
    try:
        with psycopg.connect(pg.dsn()) as conn:
            migrate(conn)
        env = {
            "FACESEARCH_STORE": pg.dsn(),
            "FACESEARCH_ACCESS_LOG": "off",
            "FACESEARCH_REPLICA_ID": "r0",
            "FACESEARCH_LOG_LEVEL": "INFO",
        }
        rows = []
        notes = []
        if args.before:  # the replica served (and checkpointed) a gallery, then was stopped
            fill(pg.dsn(), contract, args.before, args.per_identity, seed=4)
            took, stats, lines = timed_start(bundle, work / "root", work / "logs", env)
            faces, ids = str(stats.get("faces")), str(stats.get("identities"))
            rows.append(["0", f"empty; {args.before:,} faces in the log", f"{took:.1f}", faces, ids])
            notes.append("Round 0, the server's log:\n\n" + "\n".join("    " + x for x in lines.splitlines()))
        filled, identities, high = fill(pg.dsn(), contract, args.faces, args.per_identity, seed=5)
        print(f"filled {args.faces} faces / {identities} identities in {filled:.1f} s (log seq {high})", flush=True)
        for r in range(args.rounds):
            cached = sorted(p.name for p in (work / "root" / "replicas" / "r0").glob("*"))
            took, stats, lines = timed_start(bundle, work / "root", work / "logs", env)
            print(f"round {r + 1}: SERVING after {took:.1f} s; {stats.get('faces')} faces", flush=True)
            at = "empty" if not cached else ", ".join(cached)
            if r == 0 and args.before:
                at += f"; checkpoint of round 0, {args.faces:,} faces in the log after it"
            rows.append([str(r + 1), at, f"{took:.1f}", str(stats.get("faces")), str(stats.get("identities"))])
            notes.append(f"Round {r + 1}, the server's log:\n\n" + "\n".join("    " + x for x in lines.splitlines()))
        text = (
            "# A replica restarted with a long store log tail (bench/replica_restart.py)\n\n"
            f"    nice -n 10 .venv/bin/python bench/replica_restart.py --faces {args.faces} "
            f"--per-identity {args.per_identity:g} --rounds {args.rounds} --before {args.before}"
            f"{' --out ' + str(args.out) if args.out else ''}\n\n"
            f"Date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {machine()}, 1-minute load "
            f"{load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (shared with other jobs). "
            f"Store: {args.faces:,} synthetic faces, {identities:,} identities, written in {filled:.1f} s as "
            f"{(args.faces + BATCH - 1) // BATCH} log entries (up to seq {high}) after the {args.before:,} faces "
            "round 0 "
            "served; no published version (the whole log is the tail).\n\n"
            + table(rows, ["round", "replica directory at start", "start -> SERVING, s", "faces", "identities"])
            + "\nTarget: SERVING within 30 s.\n\n"
            + "\n\n".join(notes)
            + "\n"
        )
        print(text)
        if args.out:
            args.out.write_text(text)
        return 0
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
