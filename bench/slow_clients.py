"""Slow and idle clients: a healthy client's latency with and without 1,000 idle connections (half of
them silent HTTP/2 clients, half never sending the preface) and silent StreamIdentify streams, in the
same run, against one real server process.

The healthy client is one thread with its own connection making sequential calls: GetStats (no image:
the transport and RPC path alone) and Identify (an LFW photo: the full pipeline). Phases alternate
(without, with, without, with, ...) so a drift in the shared machine's load falls on both; each
phase's samples are pooled across its rounds. Reported: p50/p99 per phase and their ratio (with /
without), the server's RSS and open file descriptors, and how long the server took to close the idle
connections once the idle limit was lowered (a second server with FACESEARCH_CONNECTION_IDLE_S=5).

    nice -n 10 .venv/bin/python bench/slow_clients.py --out bench/results/slow_clients.md
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.common import data_dir, machine, table  # noqa: E402
from facesearch.api.v1 import facesearch_pb2 as pb  # noqa: E402
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc  # noqa: E402

OUT = REPO / "bench" / "out"
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def bundle_path(explicit: str | None) -> Path:
    path = Path(explicit or os.environ.get("FACESEARCH_BUNDLE") or OUT / "bundle")
    if not (path / "manifest.json").is_file():
        print(f"exporting the model bundle to {path} ...", flush=True)
        subprocess.run([sys.executable, "-m", "export", "dlib", "--out", str(path)], cwd=REPO, check=True)
    return path


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def start_server(bundle: Path, work: Path, env: dict[str, str]) -> Server:
    full = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FACESEARCH_METRICS_LISTEN": "127.0.0.1:0",
        "FACESEARCH_ACCESS_LOG": "off",
        "FACESEARCH_MIN_FACE": "80",
        "FACESEARCH_WORKERS": "2",
        **env,
    }
    log = (work / f"server-{time.time_ns()}.log").open("w")
    cmd = [sys.executable, "-m", "server", "--bundle", str(bundle), "--index", str(work / "index")]
    proc = subprocess.Popen(
        [*cmd, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log, text=True, env=full, cwd=REPO
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("facesearch-server listening"):
        raise SystemExit(f"server failed to start: {line!r}; see {log.name}")
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    return Server(proc, int(line.split()[4]))


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


def open_idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if i % 2 == 0:
            sock.sendall(HTTP2_PREFACE)
        socks.append(sock)
    return socks


def _never() -> Iterator[bytes]:
    threading.Event().wait(3600)
    yield from ()


def open_stalled_streams(target: str, n: int) -> tuple[grpc.Channel, list[Any]]:
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    call: Any = channel.stream_stream(
        "/facesearch.v1.FaceSearch/StreamIdentify", request_serializer=bytes, response_deserializer=bytes
    )
    return channel, [call(_never(), timeout=3600) for _ in range(n)]


@dataclass
class Samples:
    get_stats: list[float] = field(default_factory=list)
    identify: list[float] = field(default_factory=list)
    errors: int = 0


def healthy_client(target: str, photos: list[bytes], stats_calls: int, identify_calls: int, into: Samples) -> None:
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = pb_grpc.FaceSearchStub(channel)
        stub.GetStats(pb.GetStatsRequest(), timeout=60)  # connect first: the phase measures calls, not a handshake
        calls: list[tuple[list[float], Callable[[int], object]]] = [
            (into.get_stats, lambda i: stub.GetStats(pb.GetStatsRequest(), timeout=60)),
            (into.identify, lambda i: stub.Identify(pb.IdentifyRequest(image=photos[i % len(photos)]), timeout=60)),
        ]
        for sink, fn in calls:
            for i in range(stats_calls if sink is into.get_stats else identify_calls):
                start = time.perf_counter()
                try:
                    fn(i)
                except grpc.RpcError:
                    into.errors += 1
                    continue
                sink.append((time.perf_counter() - start) * 1000)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_to_close(socks: list[socket.socket], opened: float, timeout: float) -> list[float]:
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    closed: list[float] = []
    deadline = opened + timeout
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = socks[key.data]
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            except BlockingIOError:
                continue
            if not data:
                closed.append(time.monotonic() - opened)
                selector.unregister(sock)
    selector.close()
    return closed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=50, help="silent StreamIdentify streams in the last phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stats-calls", type=int, default=300, help="GetStats calls per phase and round")
    parser.add_argument("--identify-calls", type=int, default=40, help="Identify calls per phase and round")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    raise_fd_limit(2 * args.connections + 1024)
    bundle = bundle_path(args.bundle)
    lfw = sorted((data_dir() / "lfw-dev" / "images").glob("*/*.jpg"))
    photos = [p.read_bytes() for p in lfw[:: max(1, len(lfw) // 20)][:20]]
    phases = ["none", f"{args.connections} idle connections", f"+ {args.streams} silent streams"]
    samples = {phase: Samples() for phase in phases}
    resources: dict[str, tuple[float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as tmp:
        work = Path(tmp)
        env = {"FACESEARCH_CONNECTION_IDLE_S": "3600", "FACESEARCH_STREAM_IDLE_S": "3600"}
        server = start_server(bundle, work, env)
        try:
            with grpc.insecure_channel(server.target) as setup:  # someone to identify
                stub = pb_grpc.FaceSearchStub(setup)
                enroll = pb.EnrollRequest(identity_id="bench-person", use_largest_face=True)
                enroll.images.add(image=lfw[0].read_bytes())
                stub.Enroll(enroll, timeout=120)
            healthy_client(server.target, photos, 20, 5, Samples())  # warm-up
            for round_no in range(args.rounds):
                for phase in phases:
                    socks: list[socket.socket] = []
                    streams: grpc.Channel | None = None
                    try:
                        if phase != "none":
                            socks = open_idle(server.port, args.connections)
                        if phase.startswith("+"):
                            streams, _ = open_stalled_streams(server.target, args.streams)
                        time.sleep(1.0)
                        resources[phase] = (server.rss_mb(), server.fds())
                        healthy_client(server.target, photos, args.stats_calls, args.identify_calls, samples[phase])
                    finally:
                        if streams is not None:
                            streams.close()
                        for sock in socks:
                            sock.close()
                        time.sleep(1.0)
                print(f"round {round_no + 1}/{args.rounds} done", flush=True)
        finally:
            server.stop()
        # Reaping: a server with a short idle limit closes them all.
        idle_s = 5.0
        server = start_server(bundle, work, {"FACESEARCH_CONNECTION_IDLE_S": str(idle_s)})
        try:
            opened = time.monotonic()
            socks = open_idle(server.port, args.connections)
            closed = time_to_close(socks, opened, idle_s + 60)
            for sock in socks:
                sock.close()
        finally:
            server.stop()

    base = samples["none"]
    rows = []
    for phase in phases:
        s = samples[phase]
        rss, fds = resources[phase]
        row = [phase]
        for values, ref in ((s.get_stats, base.get_stats), (s.identify, base.identify)):
            p50, p99 = pct(values, 0.5), pct(values, 0.99)
            row += [f"{p50:.2f}", f"{p99:.2f}", f"{p50 / pct(ref, 0.5):.2f}x / {p99 / pct(ref, 0.99):.2f}x"]
        rows.append([*row, str(s.errors), f"{rss:.0f}", str(fds)])
    header = [
        "open besides the healthy client",
        "GetStats p50 ms",
        "GetStats p99 ms",
        "GetStats ratio p50 / p99",
        "Identify p50 ms",
        "Identify p99 ms",
        "Identify ratio p50 / p99",
        "errors",
        "server RSS MB",
        "server fds",
    ]
    n_stats, n_ident = len(base.get_stats), len(base.identify)
    report = [
        "# Slow and idle clients (bench/slow_clients.py)",
        "",
        "    " + " ".join(["nice -n 10 .venv/bin/python bench/slow_clients.py", *(argv or sys.argv[1:])]),
        "",
        f"Machine: {machine()} (shared with other jobs). One server process (2 workers, empty index plus one "
        f"enrolled person), idle and stream limits set to 3600 s so nothing is reaped while measuring. Healthy "
        f"client: one thread, its own connection, sequential calls; {n_stats} GetStats and {n_ident} Identify "
        f"(lfw-dev photos) per phase, pooled over {args.rounds} alternating rounds. Idle connections: "
        f"{args.connections // 2 + args.connections % 2} send the HTTP/2 preface and SETTINGS then nothing, "
        f"{args.connections // 2} never send a byte. Ratios are against the 'none' phase of the same run.",
        "",
        table(rows, header),
        "",
        f"Reaping (a second server, FACESEARCH_CONNECTION_IDLE_S={idle_s:g}): {len(closed)} of {args.connections} "
        f"idle connections closed by the server"
        + (
            f", {min(closed):.2f} s to {max(closed):.2f} s after opening (median {statistics.median(closed):.2f} s)."
            if closed
            else "."
        ),
        "",
    ]
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
