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

Mid-run (at ``--outage-at`` seconds), PostgreSQL is stopped for ``--outage-seconds`` (under the 10 s
fence) and started again on the same port while the clients go on, and one more thread only identifies
on random replicas while it is down: Identify calls and errors while it is down (must be 0 errors),
enrollments refused, and the time from PostgreSQL being back to the first
enrollment acknowledged by any client (target 5 s). A write whose outcome a client could not learn
(STORE_OUTCOME_UNKNOWN, or a deletion refused mid-way) is neither counted acknowledged nor deleted.

At the end: every replica's ListIdentities (ids and face counts) is compared with the others and
with the clients' model (acknowledged enrollments not deleted must all be there: "lost" must be 0),
and every replica's gallery digest (GetStats with ``include_gallery_digest``: faces, identities, sha256
of every identity's face ids, and per identity its open-set cohort mean and template projection) is
compared value by value with replica 0's (equal to 1e-6).

Then Identify throughput: one replica (the others idle) against a SQLite single server on a root of its
own with as many identities (at most 60, photos drawn again, enrolled through it: an Identify's cost is
detection and embedding, the live search of a few hundred faces is negligible beside it), 4 client
threads, in ``--rounds`` interleaved pairs of ``--identify-seconds`` windows (replica, SQLite, replica,
SQLite, ...; the first of each pair alternates), all servers running throughout: the median of the
per-pair ratios and their spread, robust to a shared machine's load changing between windows.

    nice -n 10 .venv/bin/python bench/replicas.py --replicas 3 --clients 8 --seconds 300 --rounds 6 \
        --out bench/results/replicas.md
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import data_dir, machine, table  # noqa: E402
from bench.server_bench import bundle_path  # noqa: E402
from facesearch.api.v1 import facesearch_pb2 as pb  # noqa: E402
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc  # noqa: E402
from facesearch.client.service_client import FaceSearchClient  # noqa: E402
from facesearch.errors import FaceSearchError, NotFoundError  # noqa: E402
from facesearch.store.postgres import migrate  # noqa: E402
from tests.integration.server_fixtures import ServerProcess, start_server  # noqa: E402
from tests.pg_fixtures import PgServer, find_pg_bin  # noqa: E402


@dataclass
class Outage:
    """PostgreSQL's stop mid-run: the window (perf_counter times) and what happened in it."""

    seconds: float
    down_at: float = float("inf")
    back_at: float = float("inf")
    identify_ok: int = 0
    identify_errors: int = 0
    enrolls_refused: int = 0
    first_ack_after_back: float = float("nan")  # seconds from PostgreSQL back to the first enrollment acknowledged

    def down(self, t: float) -> bool:
        return self.down_at <= t < self.back_at


@dataclass
class Tally:
    outage: Outage
    lock: threading.Lock = field(default_factory=threading.Lock)
    propagation: list[float] = field(default_factory=list)
    enrolled: dict[str, int] = field(default_factory=dict)  # acknowledged, not deleted: id -> faces
    deleted: set[str] = field(default_factory=set)
    uncertain: set[str] = field(default_factory=set)  # writes whose outcome the client could not learn
    enroll_errors: list[str] = field(default_factory=list)
    identify_calls: int = 0
    identify_errors: list[str] = field(default_factory=list)
    deletes: int = 0
    delete_errors: list[str] = field(default_factory=list)
    delete_violations: list[str] = field(default_factory=list)
    no_face: int = 0

    def acknowledged(self, t: float) -> None:
        o = self.outage
        if t >= o.back_at and o.first_ack_after_back != o.first_ack_after_back:  # nan: none yet
            o.first_ack_after_back = t - o.back_at


SQLITE_GALLERY = 60  # identities enrolled into the SQLite server before its Identify windows
TOLERANCE = 1e-6  # open-set statistics equal across replicas to this


def people() -> list[Path]:
    photos = sorted((data_dir() / "lfw-dev" / "images").glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no LFW images under {data_dir()}/lfw-dev (set FACESEARCH_DATA)")
    return photos


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def find_elsewhere(other: FaceSearchClient, ident: str) -> None:
    """Poll ``other`` every 5 ms until it has ``ident`` (a fenced or unreachable replica: keep polling)."""
    while True:
        try:
            other.get_identity(ident)
            return
        except NotFoundError:
            time.sleep(0.005)
        except FaceSearchError:
            time.sleep(0.05)


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
                    if tally.outage.down(time.perf_counter()):
                        tally.outage.enrolls_refused += 1
                    tally.uncertain.add(ident)  # refused, or committed without the client knowing
                continue
            ok = time.perf_counter()
            if not out.face_ids:
                with tally.lock:
                    tally.no_face += 1
                continue
            with tally.lock:
                tally.enrolled[ident] = out.face_count
                tally.acknowledged(ok)
            mine.append(ident)
            for j, other in enumerate(clients):
                if j == i:
                    continue
                find_elsewhere(other, ident)
                with tally.lock:
                    tally.propagation.append(time.perf_counter() - ok)
        elif roll < 0.4 + 0.1 and mine:
            ident = mine.pop(rng.randrange(len(mine)))
            try:
                c.delete_identity(ident)
            except FaceSearchError as err:
                with tally.lock:
                    tally.delete_errors.append(f"{err.reason}: {err.message}")
                    tally.enrolled.pop(ident, None)
                    tally.uncertain.add(ident)
                continue
            with tally.lock:
                tally.deletes += 1
                tally.enrolled.pop(ident, None)
                tally.deleted.add(ident)
            for j, other in enumerate(clients):
                try:
                    other.get_identity(ident)
                except NotFoundError:
                    continue
                except FaceSearchError:
                    continue  # fenced: not serving it either
                with tally.lock:
                    tally.delete_violations.append(f"{ident} on replica {j}")
        else:
            try:
                c.identify(rng.choice(photos), top_k=3)
                with tally.lock:
                    tally.identify_calls += 1
                    if tally.outage.down(time.perf_counter()):
                        tally.outage.identify_ok += 1
            except FaceSearchError as err:
                with tally.lock:
                    tally.identify_errors.append(f"{err.reason}: {err.message}")
                    if tally.outage.down(time.perf_counter()):
                        tally.outage.identify_errors += 1


def postgres_outage(  # noqa: PLR0917 - a thread's target
    pg: PgServer, tally: Tally, at: float, stop: threading.Event, targets: list[str], photos: list[Path]
) -> None:
    """Stop PostgreSQL ``at`` seconds from now for ``outage.seconds``, then start it again. Meanwhile one more
    thread only identifies, on random replicas (the clients' threads spend most of the outage in enrollments
    waiting for the store): its calls and errors are counted with theirs."""
    if stop.wait(at):
        return
    outage = tally.outage
    done = threading.Event()

    def identify() -> None:
        rng = random.Random(3)
        clients = [FaceSearchClient(t, timeout=60) for t in targets]
        while not done.is_set():
            try:
                clients[rng.randrange(len(clients))].identify(rng.choice(photos), top_k=3)
                with tally.lock:
                    outage.identify_ok += 1
            except FaceSearchError as err:
                with tally.lock:
                    outage.identify_errors += 1
                    tally.identify_errors.append(f"{err.reason}: {err.message}")
        for c in clients:
            c.close()

    outage.down_at = time.perf_counter()
    pg.stop_only()
    prober = threading.Thread(target=identify)
    prober.start()
    time.sleep(outage.seconds)
    done.set()
    prober.join()
    pg.start_again()
    outage.back_at = time.perf_counter()


def gallery_of(c: FaceSearchClient) -> dict[str, int]:
    return {i.identity_id: i.face_count for i in c.list_identities(page_size=500)}


def digest_of(target: str) -> pb.GalleryDigest:
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.FaceSearchStub(channel)
        return stub.GetStats(pb.GetStatsRequest(include_gallery_digest=True), timeout=120).gallery_digest


@dataclass
class DigestCheck:
    equal: bool
    faces: list[int]
    identities: list[int]
    sha_equal: bool
    max_mean_diff: float
    max_projection_diff: float
    nan_means: int  # identities of replica 0 with no cohort mean (being refreshed, or too few others)
    failures: list[str]


def compare_digests(digests: list[pb.GalleryDigest]) -> DigestCheck:
    """Every replica's digest against replica 0's: same faces under the same ids, statistics to 1e-6."""
    ref = digests[0]
    ids0 = list(ref.identity_ids)
    m0, p0 = np.asarray(ref.cohort_means), np.asarray(ref.template_projections)
    sha_equal = all(d.faces_sha256 == ref.faces_sha256 for d in digests)
    max_mean = max_proj = 0.0
    same = sha_equal
    for d in digests[1:]:
        if list(d.identity_ids) != ids0:
            same = False
            continue
        m, p = np.asarray(d.cohort_means), np.asarray(d.template_projections)
        if not (np.array_equal(np.isnan(m), np.isnan(m0)) and np.array_equal(np.isnan(p), np.isnan(p0))):
            same = False
        both = ~np.isnan(m) & ~np.isnan(m0)
        max_mean = max(max_mean, float(np.abs(m[both] - m0[both]).max(initial=0.0)))
        both = ~np.isnan(p) & ~np.isnan(p0)
        max_proj = max(max_proj, float(np.abs(p[both] - p0[both]).max(initial=0.0)))
    same = same and max_mean <= TOLERANCE and max_proj <= TOLERANCE
    return DigestCheck(
        same,
        [int(d.faces) for d in digests],
        [int(d.identities) for d in digests],
        sha_equal,
        max_mean,
        max_proj,
        int(np.isnan(m0).sum()),
        [d.open_set_failure for d in digests if d.open_set_failure],
    )


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
class Throughput:
    replica: list[float]
    sqlite: list[float]
    loads: list[float]  # 1-minute load average after each pair

    @property
    def ratios(self) -> list[float]:
        return [r / s for r, s in zip(self.replica, self.sqlite, strict=True)]


def interleaved(replica: str, sqlite: str, photos: list[Path], rounds: int, seconds: float) -> Throughput:
    """``rounds`` pairs of windows, replica first in even pairs and SQLite first in odd ones."""
    out = Throughput([], [], [])
    identify_rate(replica, photos, 3.0)  # warm both (sessions, caches) before the first window
    identify_rate(sqlite, photos, 3.0)
    for r in range(rounds):
        if r % 2 == 0:
            a = identify_rate(replica, photos, seconds)
            b = identify_rate(sqlite, photos, seconds)
        else:
            b = identify_rate(sqlite, photos, seconds)
            a = identify_rate(replica, photos, seconds)
        out.replica.append(a)
        out.sqlite.append(b)
        out.loads.append(os.getloadavg()[0])
        print(f"throughput pair {r + 1}: replica {a:.2f}/s, SQLite {b:.2f}/s, ratio {a / b:.3f}", flush=True)
    return out


def wait_serving(c: FaceSearchClient) -> None:
    while c.health() != "SERVING":
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--identify-seconds", type=float, default=15.0, help="one throughput window")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved pairs of throughput windows")
    parser.add_argument("--outage-seconds", type=float, default=5.0, help="PostgreSQL stopped this long")
    parser.add_argument("--outage-at", type=float, default=None, help="seconds into the load (default: half)")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bundle = bundle_path(args.bundle)
    photos = people()
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (initdb, pg_ctl); set FACESEARCH_PG_BIN")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = os.getloadavg()[0]
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
        replicas = list(servers)
        clients = [FaceSearchClient(s.target, timeout=120, enroll_retries=0) for s in replicas]
        for c in clients:
            wait_serving(c)
        tally = Tally(Outage(args.outage_seconds))
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(k, clients, photos, stop, tally, 100 + k))
            for k in range(args.clients)
        ]
        outage_at = args.seconds / 2 if args.outage_at is None else args.outage_at
        breaker = threading.Thread(
            target=postgres_outage,
            args=(pg, tally, outage_at, stop, [s.target for s in replicas], photos),
        )
        loads: list[float] = []
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        breaker.start()
        while time.perf_counter() - t0 < args.seconds:
            time.sleep(min(30.0, max(0.0, args.seconds - (time.perf_counter() - t0))))
            loads.append(os.getloadavg()[0])
            print(
                f"{time.perf_counter() - t0:.0f} s: {tally.identify_calls} identify, {len(tally.enrolled)} "
                f"enrolled, load {loads[-1]:.2f}",
                flush=True,
            )
        stop.set()
        for t in threads:
            t.join()
        breaker.join()
        ran = time.perf_counter() - t0
        time.sleep(2.0)  # the last changes reach every replica (propagation p99 is well under this)
        galleries = [gallery_of(c) for c in clients]
        equal = all(g == galleries[0] for g in galleries)
        lost = [i for i in tally.enrolled if i not in galleries[0]]
        resurrected = [i for i in tally.deleted if i in galleries[0]]
        check = compare_digests([digest_of(s.target) for s in replicas])
        print(f"galleries equal {equal}, digests equal {check.equal}", flush=True)
        # identify throughput: one replica (others idle) vs a SQLite single server, interleaved windows
        sqlite = start_server(bundle, work / "sqlite-root", work / "logs", env={"FACESEARCH_ACCESS_LOG": "off"})
        servers.append(sqlite)
        with FaceSearchClient(sqlite.target, timeout=120) as c:
            wait_serving(c)
            rng = random.Random(7)
            for ident in sorted(galleries[0])[:SQLITE_GALLERY]:  # photos drawn again
                c.enroll(ident, [rng.choice(photos)], use_largest_face=True)
        tp = interleaved(replicas[0].target, sqlite.target, photos, args.rounds, args.identify_seconds)
        load_end = os.getloadavg()[0]
        o = tally.outage
        ratios = tp.ratios
        rows = [
            ["replicas x clients, seconds", f"{args.replicas} x {args.clients}, {ran:.0f} s"],
            ["enrollments acknowledged (faces found)", str(len(tally.enrolled) + len(tally.deleted))],
            ["enrollments with no usable face", str(tally.no_face)],
            ["enroll errors (all during the outage: refused / outcome unknown)", str(len(tally.enroll_errors))],
            ["identify calls / errors", f"{tally.identify_calls} / {len(tally.identify_errors)}"],
            [
                "deletions / replicas still returning one after its OK",
                f"{tally.deletes} / {len(tally.delete_violations)}",
            ],
            ["deletions refused (during the outage)", str(len(tally.delete_errors))],
            ["acknowledged enrollments lost", str(len(lost))],
            ["deleted identities back", str(len(resurrected))],
            ["replicas' galleries equal (ListIdentities: ids and face counts)", str(equal)],
            ["gallery digests: faces per replica", ", ".join(map(str, check.faces))],
            ["gallery digests: identities per replica", ", ".join(map(str, check.identities))],
            ["gallery digests: sha256 of every identity's face ids equal", str(check.sha_equal)],
            [
                "open-set statistics vs replica 0, max abs diff: cohort means / template projections",
                f"{check.max_mean_diff:.2e} / {check.max_projection_diff:.2e}",
            ],
            [f"open-set statistics equal to {TOLERANCE:g} (ids, NaN positions, values)", str(check.equal)],
            [
                f"propagation OK -> found on another replica, p50 / p99 / max (n={len(tally.propagation)})",
                f"{1000 * pct(tally.propagation, 50):.1f} / {1000 * pct(tally.propagation, 99):.1f} / "
                f"{1000 * max(tally.propagation, default=float('nan')):.1f} ms",
            ],
            [
                f"PostgreSQL stopped {o.seconds:g} s at {o.down_at - t0:.0f} s: Identify ok / errors meanwhile "
                "(all threads)",
                f"{o.identify_ok} / {o.identify_errors}",
            ],
            ["... enrollments refused while it was down", str(o.enrolls_refused)],
            ["... first enrollment acknowledged after PostgreSQL was back", f"{o.first_ack_after_back:.2f} s"],
            [
                f"Identify/s, 4 threads, {args.rounds} interleaved pairs of {args.identify_seconds:g} s: replica",
                ", ".join(f"{x:.2f}" for x in tp.replica),
            ],
            ["... SQLite single server", ", ".join(f"{x:.2f}" for x in tp.sqlite)],
            ["... ratio per pair", ", ".join(f"{x:.3f}" for x in ratios)],
            [
                "... ratio median (min - max)",
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f} - {max(ratios):.3f})",
            ],
        ]
        text = (
            "# Replicas on a shared PostgreSQL store (bench/replicas.py)\n\n"
            f"    nice -n 10 .venv/bin/python bench/replicas.py --replicas {args.replicas} --clients {args.clients} "
            f"--seconds {args.seconds:g} --rounds {args.rounds} --identify-seconds {args.identify_seconds:g} "
            f"--outage-seconds {args.outage_seconds:g}"
            f"{' --out ' + str(args.out) if args.out else ''}\n\n"
            f"Run {started}. Machine: {machine()}, shared with other jobs: 1-minute load average "
            f"{load_start:.2f} at the start, {', '.join(f'{x:.1f}' for x in loads)} every 30 s of the load, "
            f"{', '.join(f'{x:.1f}' for x in tp.loads)} after each throughput pair, {load_end:.2f} at the end. "
            f"One PostgreSQL, {args.replicas} server processes (FACESEARCH_WORKERS=2 each), the clients and "
            "then the SQLite server on the same machine.\n\n" + table(rows, ["measure", "value"]) + "\n"
        )
        errors: defaultdict[str, int] = defaultdict(int)
        for e in tally.enroll_errors + tally.identify_errors + tally.delete_errors:
            errors[e[:120]] += 1
        if errors:
            text += "\nErrors:\n\n" + "\n".join(f"- {n} x {e}" for e, n in sorted(errors.items())) + "\n"
        if tally.delete_violations:
            text += "\nDeletion violations: " + ", ".join(tally.delete_violations[:20]) + "\n"
        if check.failures:
            text += "\nOpen-set failures: " + "; ".join(check.failures) + "\n"
        print(text)
        if args.out:
            args.out.write_text(text)
        for c in clients:
            c.close()
        ok = (
            equal
            and check.equal
            and not lost
            and not resurrected
            and not tally.delete_violations
            and not tally.identify_errors
        )
        return 0 if ok else 1
    finally:
        for s in servers:
            s.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
