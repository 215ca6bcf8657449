"""Replicas of one gallery on a shared PostgreSQL store (issue 14): propagation, deletions, equality.

Starts its own PostgreSQL (tests/pg_fixtures.py: Debian's binaries, loopback, fsync on), migrates it,
and runs ``--replicas`` real ``facesearch-server`` processes on one index root (no published version:
the gallery is the store's log) with ``FACESEARCH_STORE`` set. ``--clients`` threads then, for
``--seconds``, each pick a random replica per call and:

- enroll a new identity (one lfw-dev photo, largest face), then poll every *other* replica's
  GetIdentity every 5 ms until it is found: propagation = from the Enroll's OK to found there (the
  5 ms poll adds up to 5 ms; the poll's own call adds its round trip);
- identify a random lfw-dev photo (errors counted: must be 0);
- sometimes (1 call in 10) delete one of their identities, then at once ask every replica: any that still
  returns it is a violation of the deletion guarantee (must be 0).

At the end: every replica's ListIdentities (ids and face counts) is compared with the others and
with the clients' model (acknowledged enrollments not deleted must all be there: "lost" must be 0),
and GetStats' identity counts. Then Identify throughput on one replica (the others idle) against a
SQLite single server on a root of its own with as many identities (at most 60, photos drawn again,
enrolled through it: an Identify's cost is detection and embedding, the live search of a few hundred
faces is negligible beside it), ``--identify-seconds`` each, 4 client threads, measured in the same run.

Between the two (after the replica's Identify phase), PostgreSQL is stopped for
``--outage-seconds`` (under the 10 s fence) while a thread identifies on random replicas and another
enrolls on one: Identify errors during the outage (must be 0), enrollments refused, and the time from
PostgreSQL being back to the first enrollment acknowledged (target 5 s).

    nice -n 10 .venv/bin/python bench/replicas.py --replicas 3 --clients 8 --seconds 60 \
        --out bench/results/replicas.md
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import data_dir, machine, table  # noqa: E402
from bench.server_bench import bundle_path  # noqa: E402
from facesearch.client.service_client import FaceSearchClient  # noqa: E402
from facesearch.errors import FaceSearchError, NotFoundError  # noqa: E402
from facesearch.store.postgres import migrate  # noqa: E402
from tests.integration.server_fixtures import ServerProcess, start_server  # noqa: E402
from tests.pg_fixtures import PgServer, find_pg_bin  # noqa: E402


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    propagation: list[float] = field(default_factory=list)
    enrolled: dict[str, int] = field(default_factory=dict)  # acknowledged, not deleted: id -> faces
    deleted: set[str] = field(default_factory=set)
    enroll_errors: list[str] = field(default_factory=list)
    identify_calls: int = 0
    identify_errors: list[str] = field(default_factory=list)
    deletes: int = 0
    delete_violations: list[str] = field(default_factory=list)
    no_face: int = 0


SQLITE_GALLERY = 60  # identities enrolled into the SQLite server before its Identify phase


def people() -> list[Path]:
    photos = sorted((data_dir() / "lfw-dev" / "images").glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no LFW images under {data_dir()}/lfw-dev (set FACESEARCH_DATA)")
    return photos


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def client_loop(  # noqa: PLR0917 - a thread's target
    k: int, clients: list[FaceSearchClient], photos: list[Path], stop: threading.Event, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    n = 0
    while not stop.is_set():
        i = rng.randrange(len(clients))
        c = clients[i]
        roll = rng.random()
        if roll < 0.4:
            n += 1
            ident = f"c{k}-{n}"
            try:
                out = c.enroll(ident, [rng.choice(photos)], use_largest_face=True)
            except FaceSearchError as err:
                with tally.lock:
                    tally.enroll_errors.append(f"{err.reason}: {err.message}")
                continue
            ok = time.perf_counter()
            if not out.face_ids:
                with tally.lock:
                    tally.no_face += 1
                continue
            with tally.lock:
                tally.enrolled[ident] = out.face_count
            mine.append(ident)
            for j, other in enumerate(clients):
                if j == i:
                    continue
                while True:
                    try:
                        other.get_identity(ident)
                        break
                    except NotFoundError:
                        time.sleep(0.005)
                with tally.lock:
                    tally.propagation.append(time.perf_counter() - ok)
        elif roll < 0.4 + 0.1 and mine:
            ident = mine.pop(rng.randrange(len(mine)))
            c.delete_identity(ident)
            with tally.lock:
                tally.deletes += 1
                tally.enrolled.pop(ident, None)
                tally.deleted.add(ident)
            for j, other in enumerate(clients):
                try:
                    other.get_identity(ident)
                except NotFoundError:
                    continue
                with tally.lock:
                    tally.delete_violations.append(f"{ident} on replica {j}")
        else:
            try:
                c.identify(rng.choice(photos), top_k=3)
                with tally.lock:
                    tally.identify_calls += 1
            except FaceSearchError as err:
                with tally.lock:
                    tally.identify_errors.append(f"{err.reason}: {err.message}")


def gallery_of(c: FaceSearchClient) -> dict[str, int]:
    return {i.identity_id: i.face_count for i in c.list_identities(page_size=500)}


def identify_rate(target: str, photos: list[Path], seconds: float, threads: int = 4) -> float:
    stop = threading.Event()
    counts = [0] * threads

    def run(t: int) -> None:
        rng = random.Random(t)
        with FaceSearchClient(target, timeout=60) as c:
            while not stop.is_set():
                c.identify(rng.choice(photos), top_k=3)
                counts[t] += 1

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t0)


@dataclass
class Outage:
    seconds: float
    identify_ok: int
    identify_errors: list[str]
    writes_refused: int
    resumed_after_s: float  # from PostgreSQL accepting connections again to the first enrollment acknowledged


def postgres_outage(pg: PgServer, servers: list[ServerProcess], photos: list[Path], seconds: float) -> Outage:
    """PostgreSQL stopped for ``seconds`` (under the fence) while one thread identifies on every replica in
    turn and one enrolls (1 photo, no retries) on replica 0; then started again."""
    stop = threading.Event()
    out = Outage(seconds, 0, [], 0, float("nan"))
    back: list[float] = []
    resumed: list[float] = []

    def identify() -> None:
        rng = random.Random(1)
        clients = [FaceSearchClient(s.target, timeout=60) for s in servers]
        while not stop.is_set():
            try:
                clients[rng.randrange(len(clients))].identify(rng.choice(photos), top_k=3)
                out.identify_ok += 1
            except FaceSearchError as err:
                out.identify_errors.append(f"{err.reason}: {err.message}")
        for c in clients:
            c.close()

    def enroll() -> None:
        rng = random.Random(2)
        n = 0
        with FaceSearchClient(servers[0].target, timeout=60, enroll_retries=0) as c:
            while not stop.is_set():
                n += 1
                try:
                    c.enroll(f"outage-{n}", [rng.choice(photos)], use_largest_face=True)
                except FaceSearchError:
                    out.writes_refused += 1
                    time.sleep(0.05)
                    continue
                if back and not resumed:
                    resumed.append(time.perf_counter() - back[0])
                    return

    threads = [threading.Thread(target=identify), threading.Thread(target=enroll)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    pg.stop_only()
    time.sleep(seconds)
    pg.start_again()
    back.append(time.perf_counter())
    threads[1].join(timeout=60)
    stop.set()
    for t in threads:
        t.join()
    out.resumed_after_s = resumed[0] if resumed else float("nan")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--identify-seconds", type=float, default=20.0)
    parser.add_argument("--outage-seconds", type=float, default=5.0, help="PostgreSQL stopped this long")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bundle = bundle_path(args.bundle)
    photos = people()
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (initdb, pg_ctl); set FACESEARCH_PG_BIN")
    work = Path(tempfile.mkdtemp(prefix="replicas-bench-"))
    pg = PgServer(bin_dir).init().start()
    servers: list[ServerProcess] = []
    try:
        with psycopg.connect(pg.dsn()) as conn:
            migrate(conn)
        env = {"FACESEARCH_STORE": pg.dsn(), "FACESEARCH_ACCESS_LOG": "off", "FACESEARCH_WORKERS": "2"}
        for r in range(args.replicas):
            servers.append(
                start_server(bundle, work / "root", work / "logs", env={**env, "FACESEARCH_REPLICA_ID": f"r{r}"})
            )
        clients = [FaceSearchClient(s.target, timeout=120, enroll_retries=0) for s in servers]
        for c in clients:
            while c.health() != "SERVING":
                time.sleep(0.2)
        tally = Tally()
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(k, clients, photos, stop, tally, 100 + k))
            for k in range(args.clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        ran = time.perf_counter() - t0
        time.sleep(1.0)
        galleries = [gallery_of(c) for c in clients]
        stats = [int(c.stats()["identities"]) for c in clients]
        equal = all(g == galleries[0] for g in galleries)
        lost = [i for i in tally.enrolled if i not in galleries[0]]
        resurrected = [i for i in tally.deleted if i in galleries[0]]
        # identify throughput: one replica (others idle) vs a SQLite single server with the same enrollments
        replica_rate = identify_rate(servers[0].target, photos, args.identify_seconds)
        outage = postgres_outage(pg, servers, photos, args.outage_seconds)
        for s in servers:
            s.stop()
        servers.clear()
        sqlite = start_server(bundle, work / "sqlite-root", work / "logs", env={"FACESEARCH_ACCESS_LOG": "off"})
        servers.append(sqlite)
        with FaceSearchClient(sqlite.target, timeout=120) as c:
            while c.health() != "SERVING":
                time.sleep(0.2)
            rng = random.Random(7)
            for ident in sorted(galleries[0])[:SQLITE_GALLERY]:  # photos drawn again
                c.enroll(ident, [rng.choice(photos)], use_largest_face=True)
        sqlite_rate = identify_rate(sqlite.target, photos, args.identify_seconds)
        rows = [
            ["replicas x clients, seconds", f"{args.replicas} x {args.clients}, {ran:.0f} s"],
            ["enrollments acknowledged (faces found)", str(len(tally.enrolled) + len(tally.deleted))],
            ["enrollments with no usable face", str(tally.no_face)],
            ["enroll errors", str(len(tally.enroll_errors))],
            ["identify calls / errors", f"{tally.identify_calls} / {len(tally.identify_errors)}"],
            [
                "deletions / replicas still returning one after its OK",
                f"{tally.deletes} / {len(tally.delete_violations)}",
            ],
            ["acknowledged enrollments lost", str(len(lost))],
            ["deleted identities back", str(len(resurrected))],
            ["replicas' galleries equal (ids and face counts)", str(equal)],
            ["GetStats identities per replica", ", ".join(map(str, stats))],
            [
                f"propagation OK -> found on another replica, p50 / p99 / max (n={len(tally.propagation)})",
                f"{1000 * pct(tally.propagation, 50):.1f} / {1000 * pct(tally.propagation, 99):.1f} / "
                f"{1000 * max(tally.propagation, default=float('nan')):.1f} ms",
            ],
            [
                f"PostgreSQL stopped {outage.seconds:g} s: Identify ok / errors meanwhile",
                f"{outage.identify_ok} / {len(outage.identify_errors)}",
            ],
            ["... enrollments refused during it (UNAVAILABLE)", str(outage.writes_refused)],
            ["... first enrollment acknowledged after PostgreSQL was back", f"{outage.resumed_after_s:.2f} s"],
            [
                "Identify/s, 4 threads: replica (PostgreSQL) / SQLite single server",
                f"{replica_rate:.2f} / {sqlite_rate:.2f} (ratio {replica_rate / sqlite_rate:.2f})",
            ],
        ]
        text = (
            "# Replicas on a shared PostgreSQL store (bench/replicas.py)\n\n"
            f"    nice -n 10 .venv/bin/python bench/replicas.py --replicas {args.replicas} --clients {args.clients} "
            f"--seconds {args.seconds:g} --identify-seconds {args.identify_seconds:g} "
            f"--outage-seconds {args.outage_seconds:g}"
            f"{' --out ' + str(args.out) if args.out else ''}\n\n"
            f"Machine: {machine()}, load {os.getloadavg()[0]:.2f} at the end. One PostgreSQL, "
            f"{args.replicas} server processes (FACESEARCH_WORKERS=2 each) and the clients on the same machine.\n\n"
            + table(rows, ["measure", "value"])
            + "\n"
        )
        errors: defaultdict[str, int] = defaultdict(int)
        for e in tally.enroll_errors + tally.identify_errors + outage.identify_errors:
            errors[e[:120]] += 1
        if errors:
            text += "\nErrors:\n\n" + "\n".join(f"- {n} x {e}" for e, n in sorted(errors.items())) + "\n"
        if tally.delete_violations:
            text += "\nDeletion violations: " + ", ".join(tally.delete_violations[:20]) + "\n"
        print(text)
        if args.out:
            args.out.write_text(text)
        for c in clients:
            c.close()
        ok = equal and not lost and not resurrected and not tally.delete_violations and not outage.identify_errors
        return 0 if ok else 1
    finally:
        for s in servers:
            s.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
