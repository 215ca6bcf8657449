"""The PostgreSQL store (facesearch.store.postgres) at the store level: write latency and throughput,
propagation to other replicas' followers, and a replica's catch-up of a large log, against the SQLite
live journal measured in the same run.

Starts its own PostgreSQL (tests/pg_fixtures.py: Debian's binaries, loopback, fsync on, data under
/tmp on the same disk as the journal) and measures, with 128-d float32 embeddings:

1. enroll, 1 face per call: the SQLite live journal (one writer: the server serialises journal writes)
   vs PgStore with 1, 4 and 8 writer threads (writes are serialised in the database by the store's
   append lock): latency p50/p99 and commits per second;
2. propagation: 3 followers (each its own store object, pool and LISTEN connection, poll 1 s) while
   one writer enrolls at a steady rate: from the writer's commit returning to each follower having
   applied it, p50/p99/max over every (write, follower);
3. catch-up: a follower starting from seq 0 over a log of N faces (enrolled 100 per call):
   ``snapshot(0)`` + apply, the store's part of "a restarted replica is SERVING within 30 s".

    nice -n 10 .venv/bin/python bench/pg_store.py --writes 400 --rate 20 --catch-up 100000 \
        --out bench/results/pg_store.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, table  # noqa: E402
from facesearch.store.live_journal import LiveIdentity, LiveJournal, NewFace  # noqa: E402
from facesearch.store.postgres import LogFollower, PgStore, PoolSettings, migrate  # noqa: E402
from tests.pg_fixtures import PgServer, find_pg_bin  # noqa: E402

D = 128


def faces(n: int, rng: np.random.Generator) -> list[NewFace]:
    x = rng.standard_normal((n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [NewFace(e, "bench/p.jpg", (0.0, 0.0, 10.0, 10.0), 0.9, 40.0, 5.0) for e in x]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def ms(v: float) -> str:
    return f"{1000 * v:.1f}"


def bench_sqlite(n: int, work: Path) -> tuple[list[float], float]:
    journal = LiveJournal.open(work / "journal", contract_id="bench", d=D)
    rng = np.random.default_rng(1)
    lat = []
    t0 = time.perf_counter()
    try:
        for i in range(n):
            now = time.time()
            row = LiveIdentity(f"s{i % 500}", 0, False, None, {}, now, now)
            s = time.perf_counter()
            journal.enroll(row, faces(1, rng))
            lat.append(time.perf_counter() - s)
    finally:
        journal.close()
    return lat, n / (time.perf_counter() - t0)


def bench_pg_writes(dsn: str, n: int, threads: int) -> tuple[list[float], float]:
    store = PgStore.open(dsn, contract_id="bench", d=D, pool=PoolSettings(max_size=threads + 2))
    lat: list[float] = []
    lock = threading.Lock()
    per = n // threads

    def run(w: int) -> None:
        rng = np.random.default_rng(100 + w)
        mine = []
        for i in range(per):
            s = time.perf_counter()
            store.enroll(f"w{w}-{i % 100}", faces(1, rng))
            mine.append(time.perf_counter() - s)
        with lock:
            lat.extend(mine)

    workers = [threading.Thread(target=run, args=(w,)) for w in range(threads)]
    t0 = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    rate = per * threads / (time.perf_counter() - t0)
    store.close()
    return lat, rate


def bench_propagation(dsn: str, writes: int, rate: float) -> tuple[list[float], int]:
    applied_at: dict[str, dict[int, float]] = {}
    followers = []
    stores = []
    for r in range(3):
        store = PgStore.open(dsn, contract_id="bench", d=D)
        stores.append(store)
        seen: dict[int, float] = {}
        applied_at[f"r{r}"] = seen

        def apply(snap, seen=seen) -> None:  # type: ignore[no-untyped-def]
            now = time.perf_counter()
            for f in snap.faces:
                seen.setdefault(f.seq, now)

        follower = LogFollower(store, apply, replica_id=f"r{r}", applied_seq=store.high_water(), poll_s=1.0)
        follower.start()
        followers.append(follower)
    writer = PgStore.open(dsn, contract_id="bench", d=D)
    rng = np.random.default_rng(7)
    committed: dict[int, float] = {}
    try:
        time.sleep(1.0)  # listeners connected
        for i in range(writes):
            enrolled = writer.enroll(f"prop{i % 50}", faces(1, rng))
            committed[enrolled.seq] = time.perf_counter()
            time.sleep(1.0 / rate)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(len(s) >= writes for s in applied_at.values()):
            time.sleep(0.1)
    finally:
        for f in followers:
            f.stop()
        for s in stores:
            s.close()
        writer.close()
    delays = [seen[seq] - t for seen in applied_at.values() for seq, t in committed.items() if seq in seen]
    missing = sum(1 for seen in applied_at.values() for seq in committed if seq not in seen)
    return delays, missing


def bench_catch_up(dsn: str, n: int) -> tuple[float, float, int]:
    store = PgStore.open(dsn, contract_id="bench", d=D)
    rng = np.random.default_rng(11)
    t0 = time.perf_counter()
    for i in range(0, n, 100):
        store.enroll(f"big{i // 100}", faces(min(100, n - i), rng))
    fill = time.perf_counter() - t0
    held: list[int] = []
    follower = LogFollower(store, lambda snap: held.append(len(snap.faces)), replica_id="fresh")
    t1 = time.perf_counter()
    follower.catch_up()
    took = time.perf_counter() - t1
    follower.stop()
    store.close()
    return fill, took, sum(held)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=400, help="enrollments per write measurement")
    ap.add_argument("--rate", type=float, default=20.0, help="propagation: enrollments per second")
    ap.add_argument("--catch-up", type=int, default=100_000, help="faces in the log a fresh follower reads")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl)")
    load_before = os.getloadavg()[0]
    server = PgServer(bin_dir).init().start()
    try:
        dsns = {name: server.create_database(name) for name in ("writes", "prop", "catchup")}
        for dsn in dsns.values():
            with psycopg.connect(dsn) as conn:
                migrate(conn)
        with tempfile.TemporaryDirectory(prefix="pg-bench-", dir="/tmp") as work:
            sq_lat, sq_rate = bench_sqlite(args.writes, Path(work))
        rows = [["SQLite live journal, 1 writer", ms(pct(sq_lat, 50)), ms(pct(sq_lat, 99)), f"{sq_rate:.0f}", "1.00"]]
        for threads in (1, 4, 8):
            lat, rate = bench_pg_writes(dsns["writes"], args.writes, threads)
            rows.append(
                [
                    f"PgStore, {threads} writer(s)",
                    ms(pct(lat, 50)),
                    ms(pct(lat, 99)),
                    f"{rate:.0f}",
                    f"{rate / sq_rate:.2f}",
                ]
            )
        delays, missing = bench_propagation(dsns["prop"], args.writes, args.rate)
        fill, took, held = bench_catch_up(dsns["catchup"], args.catch_up)
    finally:
        server.stop()
    load_after = os.getloadavg()[0]
    cmd = " ".join(sys.argv[1:])
    lines = [
        "# PostgreSQL store: writes, propagation, catch-up (bench/pg_store.py)",
        "",
        f"    nice -n 10 .venv/bin/python bench/pg_store.py {cmd}",
        "",
        f"Machine: {machine()}, shared with other jobs (1-minute load average {load_before:.1f} at the start, "
        f"{load_after:.1f} at the end). PostgreSQL "
        f"{bin_dir.parent.name} from Debian, loopback, fsync on, data on the same disk as the SQLite "
        "journal; 128-d float32 embeddings, one face per enroll.",
        "",
        "## 1. Enroll (durable on return)",
        "",
        table(rows, ["writer", "p50 ms", "p99 ms", "commits/s", "vs SQLite"]),
        "",
        f"## 2. Propagation to 3 followers ({args.writes} enrolls at {args.rate:g}/s)",
        "",
        "From the writer's enroll returning to each follower having applied it (LISTEN/NOTIFY wake-up, "
        "then one snapshot by seq):",
        "",
        table(
            [[ms(pct(delays, 50)), ms(pct(delays, 99)), ms(max(delays) if delays else float("nan")), str(missing)]],
            ["p50 ms", "p99 ms", "max ms", "never applied"],
        ),
        "",
        "Issue 14's target for a whole server: p50 <= 100 ms, p99 <= 1 s.",
        "",
        f"## 3. Catch-up of a fresh follower over {args.catch_up:,} faces",
        "",
        table(
            [[f"{args.catch_up:,}", f"{fill:.1f}", f"{took:.2f}", f"{held:,}"]],
            ["faces in the log", "filling it, s (100 per enroll)", "snapshot(0) + apply, s", "faces applied"],
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
