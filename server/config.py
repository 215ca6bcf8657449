"""Server configuration: ``FACESEARCH_*`` environment variables and flags, read once, validated.

Flags override environment variables, which override the defaults. Every problem names the
variable (or flag) to fix. The resolved config is frozen and logged at startup.

==================================  ==========================  ==============================
variable                            flag                        default
==================================  ==========================  ==============================
FACESEARCH_BUNDLE                   --bundle DIR                $FACESEARCH_HOME/models/dlib
                                                                (models/CURRENT when promoted)
FACESEARCH_INDEX                    --index ROOT                $FACESEARCH_HOME/index
FACESEARCH_LISTEN                   --listen HOST:PORT          127.0.0.1:50051 (loopback only;
                                                                0.0.0.0:50051 for the network,
                                                                with TLS and auth)
FACESEARCH_METRICS_LISTEN           --metrics-listen HOST:PORT  127.0.0.1:9464 ("off" disables;
                                                                no auth on it, ever)
FACESEARCH_TLS_CERT / _TLS_KEY      --tls-cert / --tls-key      off (plaintext)
FACESEARCH_TLS_CLIENT_CA            --tls-client-ca FILE        off (no client certificates)
FACESEARCH_TLS_CLIENT_SCOPES                                    off (certificate CN -> scopes file,
                                                                server/auth.py; needs _CLIENT_CA)
FACESEARCH_AUTH_TOKENS_FILE         --auth-tokens FILE          off (no auth: anyone who can connect
                                                                may do all but see candidates);
                                                                hashed scoped tokens, server/auth.py
FACESEARCH_AUTH_RELOAD_S                                        2 (seconds between checks of the
                                                                token and client-scopes files;
                                                                SIGHUP reloads at once)
FACESEARCH_ALLOW_PLAINTEXT_TOKENS                               off (tokens without TLS on a
                                                                non-loopback address: refused)
FACESEARCH_MAX_CONCURRENT_STREAMS                               100 (calls at once per connection,
                                                                HTTP/2 SETTINGS)
FACESEARCH_MAX_CONCURRENT_RPCS                                  256 (calls at once, server-wide;
                                                                more: RESOURCE_EXHAUSTED at once)
FACESEARCH_HTTP2_STREAM_WINDOW                                  256K (HTTP/2 receive window per
                                                                call; fixed, no BDP growth: what
                                                                a caller can make the server hold
                                                                before its call is authenticated
                                                                is about FACESEARCH_MAX_CONCURRENT_
                                                                RPCS x this; raise it for fast
                                                                uploads over long round trips)
FACESEARCH_CONNECTION_IDLE_S                                    300 (a connection with no call for
                                                                this long is closed, GOAWAY)
FACESEARCH_CONNECTION_AGE_S                                     3600 (connections are closed after
                                                                this long, +60 s grace for calls
                                                                in flight: clients rebalance)
(keepalive enforcement, fixed)                                  client pings at most every 10 s,
                                                                only with calls open; 2 strikes
                                                                then GOAWAY. The server pings an
                                                                open connection after 60 s quiet
                                                                and drops it 20 s unanswered.
FACESEARCH_WORKERS                  --workers N                 cores (requests in CPU stages)
FACESEARCH_LOG_LEVEL                --log-level LEVEL           INFO
FACESEARCH_LIVE_DIR                                             ROOT/live (the live journal)
FACESEARCH_QUEUE_SIZE                                           64 (requests waiting for a worker)
FACESEARCH_THREADS                                              1 (onnxruntime threads per inference; 0 = cores)
FACESEARCH_SEARCH_THREADS                                       1 (FAISS threads per search)
FACESEARCH_MAX_BATCH                                            32 (faces per embedding batch)
FACESEARCH_MAX_MESSAGE_BYTES                                    32M (a 20 MB photo fits)
FACESEARCH_MAX_IMAGE_PIXELS                                     40000000
FACESEARCH_MIN_FACE                                             40 (px, smallest face detected)
FACESEARCH_DETECT_PIXELS                                        2600000 (detection budget, pyramid
                                                                pixels; "off": dlib's exact scan)
FACESEARCH_MAX_DETECT_PIXELS                                    9000000 (most a request's
                                                                min_face_px may scan)
FACESEARCH_DETECTOR                                             budget (how faces are found: budget,
                                                                MMOD within the budget; or cascade,
                                                                BlazeFace proposals confirmed by MMOD,
                                                                which needs a bundle with proposals.onnx)
FACESEARCH_WORK_MEMORY                                          1G (photos in CPU stages, together)
FACESEARCH_ENROLL_MIN_FACE_SIZE                                 50 (px, smallest face enrolled)
FACESEARCH_ENROLL_MIN_BLUR                                      25 (Laplacian variance)
FACESEARCH_MIN_SIMILARITY                                       off (a fixed default cosine instead)
FACESEARCH_MAX_FPIR                                             the bundle's default FPIR, held at
                                                                every gallery size (0.01 shipped)
FACESEARCH_INDEX_POLL_S                                         2 (seconds between CURRENT checks)
FACESEARCH_SHUTDOWN_GRACE_S                                     10 (seconds for in-flight calls)
FACESEARCH_ACCESS_LOG                                           on (one JSON line per call)
FACESEARCH_ENROLL_IMPLICIT_APPEND                               off (migration for old clients: on,
                                                                Enroll adds faces to an existing
                                                                identity without ``append``)
FACESEARCH_ENROLL_REQUEST_TTL_S                                 86400 (Enroll request ids kept for
                                                                idempotent retries, seconds)
FACESEARCH_ENROLL_REQUEST_MAX                                   100000 (request ids kept, at most)
FACESEARCH_AUDIT_RETENTION_DAYS                                 365 (ROOT/audit.sqlite rows kept)
FACESEARCH_CHECKPOINT_ERASE_S                                   30 (seconds: after a deletion, the
                                                                open-set checkpoint is rewritten
                                                                without the subject within this; a
                                                                restart before then replays the
                                                                deletion on it; erase-status lists
                                                                it as pending meanwhile)
FACESEARCH_MAX_FACES                                            64 (faces searched per photo; of
                                                                more, the largest, and the reply
                                                                says how many were found)
FACESEARCH_STREAM_IDLE_S                                        60 (a StreamIdentify stream with no
                                                                item and no reply pending this
                                                                long is closed: STREAM_IDLE; so is
                                                                a call whose request message has
                                                                not arrived this long after its
                                                                headers)
FACESEARCH_STORE                                                sqlite (files under the index root);
                                                                postgresql://USER:PW@HOST:PORT/DB:
                                                                the store shared by replicas
                                                                (server/replica_gallery.py)
FACESEARCH_REPLICA_ID                                           HOSTNAME-PORT (this replica's name
                                                                in the store; PostgreSQL only)
FACESEARCH_STORE_FENCE_S                                        10 (a replica that has not caught
                                                                up with the store this long stops
                                                                answering searches: REPLICA_FENCED;
                                                                a deletion waits at most this long
                                                                for a replica that is gone)
FACESEARCH_STORE_POLL_S                                         1 (catch-up interval when no
                                                                notification came; < FENCE_S)
(with FACESEARCH_STORE=postgresql)                              FACESEARCH_LIVE_DIR defaults to
                                                                ROOT/replicas/REPLICA_ID (the
                                                                replica's own caches)
==================================  ==========================  ==============================
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from facesearch.bundle.location import default_bundle
from facesearch.errors import InvalidInputError, Reason
from facesearch.store.store_location import StoreKind, StoreLocation, parse_store
from facesearch.vision.detection_plan import worst_work_bytes
from facesearch.vision.pipeline import (
    DEFAULT_DETECT_PIXELS,
    DEFAULT_DETECTOR_MODE,
    MIN_DETECT_PIXELS,
    DetectorMode,
    detector_mode,
)

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_MAX_DETECT_PIXELS = 9_000_000  # a 1080p frame searched down to 40 px faces (2x: 8.3 MP)
DEFAULT_WORK_MEMORY = 1 << 30
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SQLITE_STORE = StoreLocation(StoreKind.SQLITE)
REPLICA_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    bundle: Path
    index_root: Path
    live_dir: Path
    listen: str = DEFAULT_LISTEN
    metrics_listen: str | None = DEFAULT_METRICS_LISTEN  # None: no metrics endpoint
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens_file: Path | None = None
    # -- transport and credentials (helper A, issue 13) --
    tls_client_scopes: Path | None = None  # client certificate CN -> scopes (server/auth.py)
    auth_reload_s: float = 2.0
    allow_plaintext_tokens: bool = False
    max_concurrent_streams: int = 100  # per connection (HTTP/2)
    max_concurrent_rpcs: int = 256  # server-wide
    http2_stream_window: int = 256 << 10  # per call, fixed (no BDP probing)
    connection_idle_s: float = 300.0
    connection_age_s: float = 3600.0
    connection_age_grace_s: float = 60.0
    # --
    workers: int = 2
    queue_size: int = 64
    threads: int = 1  # per inference: requests run in parallel (workers), not inside one model call
    search_threads: int = 1
    max_batch: int = 32
    max_message_bytes: int = 32 << 20
    max_image_pixels: int = 40_000_000
    min_face: int = 40
    detect_pixels: int | None = DEFAULT_DETECT_PIXELS  # None: no budget (dlib's exact scan, any cost)
    max_detect_pixels: int = DEFAULT_MAX_DETECT_PIXELS
    detector: DetectorMode = DetectorMode.BUDGET  # budget or cascade (FACESEARCH_DETECTOR)
    work_memory: int = DEFAULT_WORK_MEMORY
    enroll_min_face_size: float = 50.0
    enroll_min_blur: float = 25.0
    min_similarity: float | None = None  # a fixed default cosine (Identify and Verify); None: the bundle's promise
    max_fpir: float | None = None  # the FPIR the default Identify decision holds; None: the bundle's default FPIR
    index_poll_s: float = 2.0
    shutdown_grace_s: float = 10.0
    access_log: bool = True
    log_level: str = "INFO"
    # -- writes (helper D1, issue 12): idempotent Enroll, explicit append, audit log
    enroll_implicit_append: bool = False  # migration switch: Enroll adds to an existing identity without append
    enroll_request_ttl_s: float = 86400.0  # Enroll request ids remembered this long (idempotent retries)
    enroll_request_max: int = 100_000  # and at most this many
    audit_retention_days: float = 365.0  # audit log rows older than this are deleted
    # -- D3 (issue 12): an erased subject leaves the open-set checkpoint's bytes within this many seconds
    checkpoint_erase_s: float = 30.0
    # -- service bounds (helper B, issue 13): faces per photo, idle streams
    max_faces: int = 64  # faces searched per photo (the largest); the reply says how many were found
    stream_idle_s: float = 60.0  # a StreamIdentify stream with no item (and no reply pending) this long is closed
    # -- replicas (helper G, issue 14): the shared PostgreSQL store
    store: StoreLocation = SQLITE_STORE
    replica_id: str = "replica"
    store_fence_s: float = 10.0  # not caught up this long: stop answering searches (REPLICA_FENCED)
    store_poll_s: float = 1.0  # catch up at least this often (a notification wakes it sooner)

    def __post_init__(self) -> None:
        self._check_service_bounds()
        self._check_replica()
        _check_hostport(self.listen, "FACESEARCH_LISTEN (--listen)")
        if self.metrics_listen is not None:
            _check_hostport(self.metrics_listen, "FACESEARCH_METRICS_LISTEN (--metrics-listen)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInputError(
                "FACESEARCH_TLS_CERT and FACESEARCH_TLS_KEY must be set together", reason=Reason.BAD_CONFIG
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInputError(
                "FACESEARCH_TLS_CLIENT_CA needs FACESEARCH_TLS_CERT/FACESEARCH_TLS_KEY", reason=Reason.BAD_CONFIG
            )
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file", "tls_client_scopes"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise InvalidInputError(f"FACESEARCH_{name.upper()}: no such file {path}", reason=Reason.BAD_CONFIG)
        self._check_transport()
        positive = {
            "workers": self.workers,
            "queue_size": self.queue_size,
            "max_batch": self.max_batch,
            "search_threads": self.search_threads,
            "max_message_bytes": self.max_message_bytes,
            "max_image_pixels": self.max_image_pixels,
            "enroll_request_max": self.enroll_request_max,
        }
        for name, number in (
            ("enroll_request_ttl_s", self.enroll_request_ttl_s),
            ("audit_retention_days", self.audit_retention_days),
            ("checkpoint_erase_s", self.checkpoint_erase_s),
        ):
            if not number > 0:
                raise InvalidInputError(
                    f"FACESEARCH_{name.upper()} must be > 0, got {number}", reason=Reason.BAD_CONFIG
                )
        for name, value in positive.items():
            if value < 1:
                raise InvalidInputError(
                    f"FACESEARCH_{name.upper()} must be >= 1, got {value}", reason=Reason.BAD_CONFIG
                )
        if self.threads < 0:
            raise InvalidInputError(f"FACESEARCH_THREADS must be >= 0, got {self.threads}", reason=Reason.BAD_CONFIG)
        if self.min_face < 10:
            raise InvalidInputError(
                f"FACESEARCH_MIN_FACE must be >= 10 px, got {self.min_face}", reason=Reason.BAD_CONFIG
            )
        self._check_detection()
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise InvalidInputError(
                f"FACESEARCH_MIN_SIMILARITY must be a cosine in [-1, 1], got {self.min_similarity}",
                reason=Reason.BAD_CONFIG,
            )
        if self.max_fpir is not None and not 0.0 < self.max_fpir < 1.0:
            raise InvalidInputError(
                f"FACESEARCH_MAX_FPIR must be in (0, 1), e.g. 0.01, got {self.max_fpir}", reason=Reason.BAD_CONFIG
            )
        if self.max_fpir is not None and self.min_similarity is not None:
            raise InvalidInputError(
                "set FACESEARCH_MIN_SIMILARITY or FACESEARCH_MAX_FPIR, not both", reason=Reason.BAD_CONFIG
            )
        if self.index_poll_s <= 0 or self.shutdown_grace_s < 0:
            raise InvalidInputError(
                "FACESEARCH_INDEX_POLL_S must be > 0 and FACESEARCH_SHUTDOWN_GRACE_S >= 0", reason=Reason.BAD_CONFIG
            )
        if self.log_level not in LOG_LEVELS:
            raise InvalidInputError(
                f"FACESEARCH_LOG_LEVEL must be one of {LOG_LEVELS}, got {self.log_level!r}", reason=Reason.BAD_CONFIG
            )

    def _check_transport(self) -> None:
        if self.tls_client_scopes is not None and self.tls_client_ca is None:
            raise InvalidInputError(
                "FACESEARCH_TLS_CLIENT_SCOPES needs FACESEARCH_TLS_CLIENT_CA (only verified certificates have scopes)",
                reason=Reason.BAD_CONFIG,
            )
        plaintext = self.auth_tokens_file is not None and not self.tls and not is_loopback(self.listen)
        if plaintext and not self.allow_plaintext_tokens:
            raise InvalidInputError(
                f"bearer tokens over plaintext on {self.listen} (FACESEARCH_LISTEN) would cross the network "
                "readable: set FACESEARCH_TLS_CERT and FACESEARCH_TLS_KEY, listen on 127.0.0.1, or set "
                "FACESEARCH_ALLOW_PLAINTEXT_TOKENS=1 (e.g. TLS ends at a proxy on this host)",
                reason=Reason.BAD_CONFIG,
            )
        limits = {
            "MAX_CONCURRENT_STREAMS": self.max_concurrent_streams,
            "MAX_CONCURRENT_RPCS": self.max_concurrent_rpcs,
        }
        if self.http2_stream_window < 16 << 10:
            raise InvalidInputError(
                f"FACESEARCH_HTTP2_STREAM_WINDOW must be >= 16K, got {self.http2_stream_window}",
                reason=Reason.BAD_CONFIG,
            )
        for name, value in limits.items():
            if value < 1:
                raise InvalidInputError(f"FACESEARCH_{name} must be >= 1, got {value}", reason=Reason.BAD_CONFIG)
        seconds = {
            "AUTH_RELOAD_S": self.auth_reload_s,
            "CONNECTION_IDLE_S": self.connection_idle_s,
            "CONNECTION_AGE_S": self.connection_age_s,
        }
        for name, secs in seconds.items():
            if not secs > 0:
                raise InvalidInputError(f"FACESEARCH_{name} must be > 0 seconds, got {secs}", reason=Reason.BAD_CONFIG)

    def security_warnings(self) -> tuple[str, ...]:
        """What makes this server unsafe on the network, in words (logged at start, in GetStats)."""
        out = []
        auth = self.auth_tokens_file is not None or self.tls_client_ca is not None  # tokens, or client certificates
        if not is_loopback(self.listen):
            if not self.tls:
                out.append(
                    f"gRPC on {self.listen} is reachable from the network without TLS (FACESEARCH_TLS_CERT/_KEY): "
                    "photos, names and results cross it readable"
                )
            if not auth:
                out.append(
                    f"gRPC on {self.listen} is reachable from the network without authentication "
                    "(FACESEARCH_AUTH_TOKENS_FILE or FACESEARCH_TLS_CLIENT_CA): anyone who can connect may "
                    "identify, enroll, list and delete"
                )
            elif self.auth_tokens_file is not None and not self.tls:
                out.append(
                    f"bearer tokens cross the network in plaintext on {self.listen} "
                    "(FACESEARCH_ALLOW_PLAINTEXT_TOKENS=1)"
                )
        if self.metrics_listen is not None and not is_loopback(self.metrics_listen):
            out.append(
                f"metrics on {self.metrics_listen} (FACESEARCH_METRICS_LISTEN) are reachable from the network "
                "without authentication"
            )
        return tuple(out)

    def _check_service_bounds(self) -> None:  # helper B's block
        if not 1 <= self.max_faces <= 1000:
            raise InvalidInputError(
                f"FACESEARCH_MAX_FACES must be 1..1000, got {self.max_faces}", reason=Reason.BAD_CONFIG
            )
        if not self.stream_idle_s > 0:
            raise InvalidInputError(
                f"FACESEARCH_STREAM_IDLE_S must be > 0 seconds, got {self.stream_idle_s}", reason=Reason.BAD_CONFIG
            )

    def _check_replica(self) -> None:  # helper G's block
        if not REPLICA_ID.fullmatch(self.replica_id):
            raise InvalidInputError(
                f"FACESEARCH_REPLICA_ID must be 1..64 of A-Z a-z 0-9 . _ -, got {self.replica_id!r}",
                reason=Reason.BAD_CONFIG,
            )
        if not 0 < self.store_poll_s < self.store_fence_s:
            raise InvalidInputError(
                f"FACESEARCH_STORE_POLL_S ({self.store_poll_s}) must be > 0 and under FACESEARCH_STORE_FENCE_S "
                f"({self.store_fence_s})",
                reason=Reason.BAD_CONFIG,
            )

    def _check_detection(self) -> None:
        for name, value in (("DETECT_PIXELS", self.detect_pixels), ("MAX_DETECT_PIXELS", self.max_detect_pixels)):
            if value is not None and value < MIN_DETECT_PIXELS:
                raise InvalidInputError(
                    f"FACESEARCH_{name} must be >= {MIN_DETECT_PIXELS} pixels, got {value}", reason=Reason.BAD_CONFIG
                )
        if self.detect_pixels is not None and self.max_detect_pixels < self.detect_pixels:
            raise InvalidInputError(
                f"FACESEARCH_MAX_DETECT_PIXELS ({self.max_detect_pixels}) must be >= FACESEARCH_DETECT_PIXELS "
                f"({self.detect_pixels})",
                reason=Reason.BAD_CONFIG,
            )
        if self.detect_pixels is None:
            return  # no budget: a photo's cost is bounded only by FACESEARCH_MAX_IMAGE_PIXELS
        need = worst_work_bytes(self.max_image_pixels, self.max_detect_pixels)
        if self.work_memory < need:
            raise InvalidInputError(
                f"FACESEARCH_WORK_MEMORY={self.work_memory} cannot hold one photo of FACESEARCH_MAX_IMAGE_PIXELS="
                f"{self.max_image_pixels} scanned at FACESEARCH_MAX_DETECT_PIXELS={self.max_detect_pixels}: it "
                f"needs {need} bytes ({need / (1 << 20):.0f}M); raise it or lower those",
                reason=Reason.BAD_CONFIG,
            )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def describe(self) -> dict[str, Any]:
        # a StoreLocation prints its URL without the password
        shown = Path | StoreLocation | DetectorMode
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), shown) else v for f in fields(self)}


def is_loopback(hostport: str) -> bool:
    """Whether ``HOST:PORT`` binds only the loopback interface (a host name other than localhost: no)."""
    host = hostport.rpartition(":")[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_hostport(value: str, what: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInputError(f"{what}: expected HOST:PORT, got {value!r}", reason=Reason.BAD_CONFIG)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's flags (each defaults to its ``FACESEARCH_*`` variable)."""
    parser.add_argument("--bundle", type=Path, help="model bundle directory [FACESEARCH_BUNDLE]")
    parser.add_argument("--index", type=Path, help="index root (CURRENT + versions) [FACESEARCH_INDEX]")
    parser.add_argument("--listen", help=f"gRPC address HOST:PORT [FACESEARCH_LISTEN, {DEFAULT_LISTEN}]")
    parser.add_argument("--metrics-listen", help="Prometheus HOST:PORT, or 'off' [FACESEARCH_METRICS_LISTEN]")
    parser.add_argument("--tls-cert", type=Path, help="server certificate chain, PEM [FACESEARCH_TLS_CERT]")
    parser.add_argument("--tls-key", type=Path, help="server private key, PEM [FACESEARCH_TLS_KEY]")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        help="CA bundle; clients must present a certificate it signed [FACESEARCH_TLS_CLIENT_CA]",
    )
    parser.add_argument(
        "--auth-tokens",
        type=Path,
        help="token file: 'NAME SCOPES sha256:HEX' lines (`facesearch-server token new`) [FACESEARCH_AUTH_TOKENS_FILE]",
    )
    parser.add_argument("--workers", type=int, help="requests processed at once [FACESEARCH_WORKERS, cores]")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR [FACESEARCH_LOG_LEVEL]")


def load_config(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags > ``FACESEARCH_*`` variables > defaults, validated."""
    env = os.environ if env is None else env
    args = args or argparse.Namespace()
    reader = _EnvReader(env)
    home = Path(env.get("FACESEARCH_HOME") or Path.home() / ".local" / "share" / "facesearch")

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    bundle = flag("bundle") or reader.as_path("FACESEARCH_BUNDLE") or default_bundle(home / "models")
    index_root = flag("index") or reader.as_path("FACESEARCH_INDEX") or home / "index"
    metrics = flag("metrics_listen") or env.get("FACESEARCH_METRICS_LISTEN") or DEFAULT_METRICS_LISTEN
    listen = flag("listen") or env.get("FACESEARCH_LISTEN") or DEFAULT_LISTEN
    store = parse_store(env.get("FACESEARCH_STORE"), "FACESEARCH_STORE")
    replica_id = env.get("FACESEARCH_REPLICA_ID", "").strip() or _default_replica_id(listen)
    own_dir = Path(index_root) / ("replicas/" + replica_id if store.shared else "live")
    return ServerConfig(
        bundle=Path(bundle),
        index_root=Path(index_root),
        live_dir=reader.as_path("FACESEARCH_LIVE_DIR") or own_dir,
        listen=listen,
        metrics_listen=None if metrics.lower() in ("off", "none", "") else metrics,
        tls_cert=flag("tls_cert") or reader.as_path("FACESEARCH_TLS_CERT"),
        tls_key=flag("tls_key") or reader.as_path("FACESEARCH_TLS_KEY"),
        tls_client_ca=flag("tls_client_ca") or reader.as_path("FACESEARCH_TLS_CLIENT_CA"),
        auth_tokens_file=flag("auth_tokens") or reader.as_path("FACESEARCH_AUTH_TOKENS_FILE"),
        tls_client_scopes=reader.as_path("FACESEARCH_TLS_CLIENT_SCOPES"),
        auth_reload_s=reader.as_float("FACESEARCH_AUTH_RELOAD_S", 2.0),
        allow_plaintext_tokens=reader.as_bool("FACESEARCH_ALLOW_PLAINTEXT_TOKENS", False),
        max_concurrent_streams=reader.as_int("FACESEARCH_MAX_CONCURRENT_STREAMS", 100),
        max_concurrent_rpcs=reader.as_int("FACESEARCH_MAX_CONCURRENT_RPCS", 256),
        http2_stream_window=reader.as_size("FACESEARCH_HTTP2_STREAM_WINDOW", 256 << 10),
        connection_idle_s=reader.as_float("FACESEARCH_CONNECTION_IDLE_S", 300.0),
        connection_age_s=reader.as_float("FACESEARCH_CONNECTION_AGE_S", 3600.0),
        workers=flag("workers") or reader.as_int("FACESEARCH_WORKERS", _cores()),
        queue_size=reader.as_int("FACESEARCH_QUEUE_SIZE", 64),
        threads=reader.as_int("FACESEARCH_THREADS", 1),
        search_threads=reader.as_int("FACESEARCH_SEARCH_THREADS", 1),
        max_batch=reader.as_int("FACESEARCH_MAX_BATCH", 32),
        max_message_bytes=reader.as_size("FACESEARCH_MAX_MESSAGE_BYTES", 32 << 20),
        max_image_pixels=reader.as_int("FACESEARCH_MAX_IMAGE_PIXELS", 40_000_000),
        min_face=reader.as_int("FACESEARCH_MIN_FACE", 40),
        detect_pixels=reader.as_int_or_off("FACESEARCH_DETECT_PIXELS", DEFAULT_DETECT_PIXELS),
        max_detect_pixels=reader.as_int("FACESEARCH_MAX_DETECT_PIXELS", DEFAULT_MAX_DETECT_PIXELS),
        detector=detector_mode(env.get("FACESEARCH_DETECTOR") or DEFAULT_DETECTOR_MODE, "FACESEARCH_DETECTOR"),
        work_memory=reader.as_size("FACESEARCH_WORK_MEMORY", DEFAULT_WORK_MEMORY),
        enroll_min_face_size=reader.as_float("FACESEARCH_ENROLL_MIN_FACE_SIZE", 50.0),
        enroll_min_blur=reader.as_float("FACESEARCH_ENROLL_MIN_BLUR", 25.0),
        min_similarity=reader.as_optional_float("FACESEARCH_MIN_SIMILARITY"),
        max_fpir=reader.as_optional_float("FACESEARCH_MAX_FPIR"),
        index_poll_s=reader.as_float("FACESEARCH_INDEX_POLL_S", 2.0),
        shutdown_grace_s=reader.as_float("FACESEARCH_SHUTDOWN_GRACE_S", 10.0),
        access_log=reader.as_bool("FACESEARCH_ACCESS_LOG", True),
        log_level=(flag("log_level") or env.get("FACESEARCH_LOG_LEVEL") or "INFO").upper(),
        enroll_implicit_append=reader.as_bool("FACESEARCH_ENROLL_IMPLICIT_APPEND", False),
        enroll_request_ttl_s=reader.as_float("FACESEARCH_ENROLL_REQUEST_TTL_S", 86400.0),
        enroll_request_max=reader.as_int("FACESEARCH_ENROLL_REQUEST_MAX", 100_000),
        audit_retention_days=reader.as_float("FACESEARCH_AUDIT_RETENTION_DAYS", 365.0),
        checkpoint_erase_s=reader.as_float("FACESEARCH_CHECKPOINT_ERASE_S", 30.0),
        max_faces=reader.as_int("FACESEARCH_MAX_FACES", 64),
        stream_idle_s=reader.as_float("FACESEARCH_STREAM_IDLE_S", 60.0),
        store=store,
        replica_id=replica_id,
        store_fence_s=reader.as_float("FACESEARCH_STORE_FENCE_S", 10.0),
        store_poll_s=reader.as_float("FACESEARCH_STORE_POLL_S", 1.0),
    )


def _default_replica_id(listen: str) -> str:
    """``HOSTNAME-PORT``: stable across restarts of one replica, distinct between replicas on one host."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    port = listen.rpartition(":")[2]
    return f"{host}-{port}" if port not in ("", "0") else f"{host}-pid{os.getpid()}"  # port 0: picked at bind


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value and value.strip() else None

    def _bad(self, name: str, value: str, want: str) -> InvalidInputError:
        return InvalidInputError(f"{name}={value!r}: expected {want}", reason=Reason.BAD_CONFIG)

    def as_path(self, name: str) -> Path | None:
        raw = self._raw(name)
        return Path(raw) if raw else None

    def as_int(self, name: str, default: int) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise self._bad(name, raw, "an integer") from None

    def as_int_or_off(self, name: str, default: int) -> int | None:
        raw = self._raw(name)
        if raw is not None and raw.lower() in ("off", "none"):
            return None
        return self.as_int(name, default)

    def as_float(self, name: str, default: float) -> float:
        value = self.as_optional_float(name)
        return default if value is None else value

    def as_optional_float(self, name: str) -> float | None:
        raw = self._raw(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise self._bad(name, raw, "a number") from None

    def as_bool(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise self._bad(name, raw, "on/off")

    def as_size(self, name: str, default: int) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        text = raw.upper().removesuffix("IB").removesuffix("B")
        factor = units.get(text[-1:], 1)
        try:
            return int(float(text[:-1] if text[-1:] in units else text) * factor)
        except ValueError:
            raise self._bad(name, raw, "a size like 32M") from None
