"""``facesearch-server``: build the server, serve until SIGTERM, shut down gracefully.

Startup: the model bundle and the face pipeline are loaded, the live journal is opened, the
gRPC port is bound with health NOT_SERVING, then the published index version (if any) is
loaded in the background with its open-set statistics (templates and cohort: the version's
``open_set.npz``, a copy this server computed before under ``LIVE_DIR/open_set/``, or computed
now from its identity store) and the live changes are replayed into them; health turns SERVING
once it is installed. Decision thresholds come from the bundle's ``calibration.json`` and
``open_set_calibration.json`` (``facesearch eval calibrate``), see
:mod:`facesearch.scoring.thresholds`. An index made with
another model contract is refused: health stays NOT_SERVING and calls that need the gallery
fail with FAILED_PRECONDITION (reason CONTRACT_MISMATCH) until a matching version is published.
With no published version the gallery is just the live enrollments.

Shutdown (SIGTERM/SIGINT): health NOT_SERVING, no new calls, in-flight calls get
FACESEARCH_SHUTDOWN_GRACE_S to finish, then workers, journal and metrics are closed.

Security (:mod:`server.auth`, :mod:`server.auth_scopes`, :mod:`server.interceptors`): by default
both ports bind loopback only. A server reachable from the network without TLS or without auth
logs a WARNING per problem at start and reports them in GetStats (``security_warnings``); bearer
tokens over plaintext on a non-loopback address are refused at start unless
FACESEARCH_ALLOW_PLAINTEXT_TOKENS=1. Every registered method must have a scope in
``server/auth_scopes.py`` or the server refuses to start. SIGHUP re-reads the token and
client-scopes files (they are also re-read when they change). A port in use ends start-up with
one line naming its setting.

``facesearch-server token new|hash`` (:mod:`server.auth_cli`) mints tokens for the token file.

Replicas (``FACESEARCH_STORE=postgresql://...``, :mod:`server.replica_gallery`): no live journal is
opened; the store is opened at start (an unmigrated or newer schema refuses to start), the gallery is
a :class:`~server.replica_gallery.ReplicaGallery` whose first install registers the replica and
catches up from the store's log before health turns SERVING, and a task keeps health matched to the
replica's fence (NOT_SERVING while it has not caught up for ``FACESEARCH_STORE_FENCE_S``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import faiss
import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import ExitCode, FaceSearchError, PreconditionError, Reason, exit_code
from facesearch.jobs.embed import check_detector, pipeline_mode
from facesearch.scoring.open_set_calibration import OpenSetCalibration, load_open_set_calibration
from facesearch.scoring.thresholds import ThresholdPolicy
from facesearch.store.audit_log import AuditLog
from facesearch.store.erasure_ledger import ErasureLedger
from facesearch.store.live_journal import LiveJournal, journal_place
from facesearch.store.store_location import require_postgres_driver
from facesearch.store.store_marker import require_store
from facesearch.vision.image_limits import DecodeLimits
from facesearch.vision.pipeline import FacePipeline, PipelineConfig
from server.admission import Admission
from server.auth import Authenticator
from server.auth_cli import main as token_main
from server.auth_scopes import check_table
from server.base_index import BaseIndex
from server.batcher import EmbedBatcher
from server.config import ServerConfig, add_arguments, load_config
from server.engine import FaceEngine
from server.gallery import Gallery, write_settings
from server.health import SERVICE, Health
from server.interceptors import EdgeInterceptor
from server.metrics import Metrics
from server.open_set_upkeep import OpenSetParams
from server.reflection import enable as enable_reflection
from server.reflection import v1_service_descriptor
from server.service import EnrollRules, FaceSearchService, ServiceLimits
from server.servicer import FaceSearchServicer
from server.watcher import IndexWatcher
from server.write_health import WriteStatus

log = logging.getLogger("facesearch.server.app")

IO_THREADS = 4
FENCE_CHECK_S = 0.1  # G: how often a replica's health is matched to its fence (searches check it themselves)
# Keepalive enforcement (see server/config.py): clients may ping every 10 s while calls are open;
# the server pings a quiet connection after 60 s and drops it when 20 s pass unanswered.
KEEPALIVE_MIN_RECV_PING_MS = 10_000
KEEPALIVE_MAX_PING_STRIKES = 2
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000


def grpc_options(c: ServerConfig) -> list[tuple[str, int]]:
    """The transport limits: message size, streams per connection, connection idle/age, keepalive."""
    return [
        ("grpc.max_receive_message_length", c.max_message_bytes),
        ("grpc.max_send_message_length", c.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", c.max_concurrent_streams),
        # A fixed receive window per call: BDP probing would grow it (to MBs per call) for bodies that
        # the edge has not read yet, i.e. before authentication (server/interceptors.py).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", c.http2_stream_window),
        ("grpc.max_connection_idle_ms", int(c.connection_idle_s * 1000)),
        ("grpc.max_connection_age_ms", int(c.connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(c.connection_age_grace_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_RECV_PING_MS),
        ("grpc.http2.max_ping_strikes", KEEPALIVE_MAX_PING_STRIKES),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


def threshold_policy(bundle: ModelBundle, open_set: OpenSetCalibration | None, config: ServerConfig) -> ThresholdPolicy:
    calibration = bundle.calibration  # read from calibration.json on each access: once here
    if calibration is None and config.min_similarity is None and not bundle.model_id.startswith("dlib-"):
        # dlib's customary tolerance, the uncalibrated fallback, says nothing about another model's scores
        raise PreconditionError(
            f"bundle {config.bundle} (model {bundle.model_id}) has no calibration.json and dlib's default "
            "threshold does not apply to it: run `facesearch eval calibrate --bundle DIR --images TREE`, "
            "or set FACESEARCH_MIN_SIMILARITY",
            reason=Reason.NO_CALIBRATION,
        )
    try:
        return ThresholdPolicy(calibration, open_set, min_similarity=config.min_similarity, max_fpir=config.max_fpir)
    except FaceSearchError as err:  # a default the bundle cannot honour: refuse to start, naming the variable
        raise PreconditionError(f"{err.message} (bundle {config.bundle})", reason=Reason.BAD_CONFIG) from err


def open_set_params(open_set: OpenSetCalibration | None, config: ServerConfig) -> OpenSetParams:
    """The statistics' k and template rule are those the open-set calibration was measured with."""
    if open_set is None:
        return OpenSetParams(cache_dir=config.live_dir / "open_set")
    return OpenSetParams(k=open_set.k, rule=open_set.template, cache_dir=config.live_dir / "open_set")


class FaceSearchServer:
    """One server instance; ``await start()``, then ``await wait()`` or ``await stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.port = 0
        self.metrics_port = 0
        self._stopped = asyncio.Event()
        self._grpc: grpc.aio.Server | None = None
        self._refused: FaceSearchError | None = None
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._reloader: asyncio.Task[None] | None = None
        self._fence_task: asyncio.Task[None] | None = None
        self._fence_ok = True  # G: a replica's last health by its fence
        self.auth: Authenticator | None = None

    async def start(self) -> None:
        c = self.config
        faiss.omp_set_num_threads(c.search_threads)  # concurrency comes from requests, not from OpenMP
        self.bundle = ModelBundle.load(c.bundle)
        check_detector(self.bundle, c.detector, "FACESEARCH_DETECTOR")
        self.pipeline = FacePipeline(
            self.bundle,
            PipelineConfig(
                min_face=c.min_face,
                threads=c.threads or None,
                max_batch=c.max_batch,
                detect_pixels=c.detect_pixels,
                max_detect_pixels=c.max_detect_pixels,
                detector_mode=pipeline_mode(c.detector),
            ),
        )
        log.info("detector: %s", self.pipeline.config.mode.value)
        if c.store.shared:
            self._open_replica()
        else:
            self._open_embedded()
        self.cpu = ThreadPoolExecutor(max_workers=c.workers, thread_name_prefix="cpu")
        self.io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="io")
        self.batcher = EmbedBatcher(
            self.pipeline.embedder.embed, c.max_batch, self.pipeline.embedder.dim, self.metrics.observe_batch
        )
        self.batcher.start()
        engine = FaceEngine(
            self.pipeline,
            self.batcher,
            self.cpu,
            DecodeLimits(max_pixels=c.max_image_pixels, max_bytes=c.max_message_bytes),
            self.metrics.observe_stage,
        )
        open_set = load_open_set_calibration(c.bundle)
        self.gallery = self._gallery(open_set_params(open_set, c))
        self.admission = Admission(c.workers, c.queue_size, c.work_memory)
        self.service = FaceSearchService(
            engine,
            self.gallery,
            self.admission,
            policy=threshold_policy(self.bundle, open_set, c),
            enroll_rules=EnrollRules(c.enroll_min_face_size, c.enroll_min_blur),
            io=self.io,
            limits=ServiceLimits(max_faces=c.max_faces),  # helper B: FACESEARCH_MAX_FACES
        )
        log.info("decision thresholds: %s", self.service.policy.note)
        self.metrics.queue_depth.set_function(lambda: self.admission.depth)
        self.metrics.writes_degraded.set_function(lambda: float(self.gallery.writes.status.degraded))
        self._loop = asyncio.get_running_loop()
        self.gallery.writes.listen(self._on_write_status)

        self.auth = Authenticator.from_files(c.auth_tokens_file, c.tls_client_scopes)
        warnings = c.security_warnings()
        for warning in warnings:
            log.warning("SECURITY: %s", warning)
        server = grpc.aio.server(
            interceptors=[EdgeInterceptor(self.metrics, self.auth, c.access_log, body_timeout_s=c.stream_idle_s)],
            options=grpc_options(c),
            maximum_concurrent_rpcs=c.max_concurrent_rpcs,
        )
        self._grpc = server
        servicer = FaceSearchServicer(
            self.service,
            self.bundle.model_id,
            self.bundle.contract_id,
            self.bundle.embedding_dim,
            stream_window=max(2, c.workers),
            security_warnings=warnings,
            stream_idle_s=c.stream_idle_s,  # helper B: FACESEARCH_STREAM_IDLE_S
        )
        facesearch_service = pb.DESCRIPTOR.services_by_name["FaceSearch"]
        health_service = health_pb2.DESCRIPTOR.services_by_name["Health"]
        pb_grpc.add_FaceSearchServicer_to_server(servicer, server)
        self.health = Health(server)
        await self.health.set(False)
        await self.health.set_writes(True)
        enable_reflection((facesearch_service.full_name, health_service.full_name), server)
        reflection_services = [
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
            v1_service_descriptor(),
        ]
        check_table([facesearch_service, health_service, *reflection_services])  # a method without a scope: no start
        self.port = self._bind(server)
        await server.start()
        if c.metrics_listen is not None:
            try:
                self.metrics_port = self.metrics.start(c.metrics_listen)
            except OSError as err:
                raise PreconditionError(
                    f"cannot listen on {c.metrics_listen} (FACESEARCH_METRICS_LISTEN): {err.strerror or err}",
                    reason=Reason.BAD_CONFIG,
                ) from None
        if self.auth.enabled:
            self._reloader = asyncio.get_running_loop().create_task(self._reload_credentials())
        log.info("listening on %s (port %d), tls=%s auth=%s", c.listen, self.port, c.tls, self.auth.enabled)

        self.watcher = IndexWatcher(
            c.index_root,
            self.bundle.contract_id,
            c.index_poll_s,
            self.io,
            install=self._install,
            refuse=self._refuse,
            prepare=self.gallery.base_open_set,
            retain=self.gallery.retain_journal,
        )
        await self.watcher.load_current()
        self.watcher.start()
        if c.store.shared:
            self._fence_task = asyncio.get_running_loop().create_task(self._watch_fence(), name="replica-fence")

    def _open_embedded(self) -> None:
        """The default store: the live journal and ledger under the index root (SQLite)."""
        c = self.config
        require_store(c.index_root, "the embedded store", with_store=False, how="set FACESEARCH_STORE=postgresql://...")
        place = journal_place(c.live_dir, self.bundle.contract_id)
        for directory, contract, faces in place.others:
            log.warning(
                "live journal %s holds %d live faces of model contract %s, which this model (%s) cannot "
                "search; they are kept as they are: serve them again with that model's bundle, or "
                "re-enroll those people",
                directory,
                faces,
                contract,
                self.bundle.contract_id,
            )
        self.journal = LiveJournal.open(
            place.directory, contract_id=self.bundle.contract_id, d=self.bundle.embedding_dim
        )
        self.ledger = ErasureLedger.open(c.index_root)

    def _open_replica(self) -> None:
        """G: the shared PostgreSQL store (FACESEARCH_STORE): schema checked (STORE_SCHEMA refuses to
        start), bound to this model's contract; the driver is imported only here."""
        require_postgres_driver()
        from server.replica_gallery import open_store  # noqa: PLC0415 - imports psycopg: PostgreSQL only

        c = self.config
        assert c.store.url is not None
        self.store = open_store(c.store.url, contract_id=self.bundle.contract_id, d=self.bundle.embedding_dim)
        log.info("store %s (store id %s), replica %s", c.store, self.store.store_id, c.replica_id)

    def _gallery(self, params: OpenSetParams) -> Gallery:
        c = self.config
        if c.store.shared:
            from server.replica_gallery import ReplicaGallery  # noqa: PLC0415 - PostgreSQL only

            return ReplicaGallery(
                self.store,
                c.live_dir,
                self.bundle.embedding_dim,
                params,
                settings=write_settings(c),
                replica_id=c.replica_id,
                fence_s=c.store_fence_s,
                poll_s=c.store_poll_s,
                info={"listen": c.listen},
            )
        return Gallery(
            self.journal,
            self.bundle.embedding_dim,
            params,
            self.ledger,
            audit=AuditLog.open(c.index_root, self.ledger.digester),  # D1: who enrolled/deleted whom
            settings=write_settings(c),
        )

    async def _watch_fence(self) -> None:
        """G: a replica's health follows its fence (NOT_SERVING while it may miss a deletion)."""
        serving = getattr(self.gallery, "serving", None)
        if serving is None:
            return
        while True:
            await asyncio.sleep(FENCE_CHECK_S)
            if self.gallery.current is None or self._refused is not None:
                continue
            ok = bool(serving())
            if ok != self._fence_ok:
                self._fence_ok = ok
                if ok:
                    log.info("replica %s caught up with the store: serving again", self.config.replica_id)
                else:
                    log.warning("replica %s fenced: not caught up with the store", self.config.replica_id)
                await self.health.set(ok)
                self.metrics.serving.set(int(ok))

    def _bind(self, server: grpc.aio.Server) -> int:
        c = self.config
        if c.tls:
            assert c.tls_cert is not None and c.tls_key is not None
            ca = c.tls_client_ca.read_bytes() if c.tls_client_ca else None
            creds = grpc.ssl_server_credentials(
                [(c.tls_key.read_bytes(), c.tls_cert.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            bind = partial(server.add_secure_port, c.listen, creds)
        else:
            bind = partial(server.add_insecure_port, c.listen)
        try:
            port = bind()
        except RuntimeError:  # grpcio raises "Failed to bind to address" where older versions returned 0
            port = 0
        if port == 0:
            raise PreconditionError(
                f"cannot listen on {c.listen} (FACESEARCH_LISTEN): address in use or invalid", reason=Reason.BAD_CONFIG
            )
        return port

    async def _reload_credentials(self) -> None:
        """Re-read the token and client-scopes files when they change (a broken file keeps the old ones)."""
        assert self.auth is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.auth_reload_s)
            await loop.run_in_executor(self.io, self.auth.reload)

    def reload_credentials(self) -> None:
        """SIGHUP: re-read the credentials files now."""
        if self.auth is not None and self.auth.enabled:
            log.info("SIGHUP: reloading credentials")
            self.auth.reload(force=True)

    async def _install(self, base: BaseIndex | None) -> None:
        await asyncio.get_running_loop().run_in_executor(self.io, self.gallery.install, base)
        self._refused = None
        self.service.not_ready = None
        self.metrics.swaps.labels("ok").inc()
        self._update_gauges()
        serving = getattr(self.gallery, "serving", None)  # G: a fenced replica stays NOT_SERVING
        self._fence_ok = bool(serving()) if serving is not None else True
        await self.health.set(self._fence_ok)
        self.metrics.serving.set(int(self._fence_ok))

    async def _refuse(self, version: str | None, err: FaceSearchError) -> None:
        self.metrics.swaps.labels("refused" if err.reason == Reason.CONTRACT_MISMATCH else "failed").inc()
        if self.gallery.current is None:  # nothing served yet: stay NOT_SERVING and say why
            self._refused = err
            self.service.not_ready = PreconditionError(f"index version {version} refused: {err}", reason=err.reason)
            await self.health.set(False)
            self.metrics.serving.set(0)

    def _on_write_status(self, status: WriteStatus) -> None:
        """A journal write failed on storage, or writes resumed (called from the writing thread)."""
        if status.degraded:
            self.metrics.write_failures.labels(status.reason or "").inc()
        self._loop.call_soon_threadsafe(self._set_writes_health, not status.degraded)

    def _set_writes_health(self, ok: bool) -> None:
        task = self._loop.create_task(self.health.set_writes(ok))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    def _update_gauges(self) -> None:
        state = self.gallery.current
        if state is None:
            return
        stats = state.stats()
        m = self.metrics
        m.index_ntotal.set(stats.index_ntotal)
        m.live_faces.set_function(lambda: float(self._live_count()))
        m.tombstones.set_function(lambda: float(self._tomb_count()))
        m.identities.set(stats.identities)
        m.set_index(stats.index_version, self.bundle.contract_id)

    def _live_count(self) -> int:
        state = self.gallery.current
        return state.live.alive_count if state else 0

    def _tomb_count(self) -> int:
        state = self.gallery.current
        return state.live.base_tombstone_total if state else 0

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown; safe after a partial start and when called twice."""
        grace = self.config.shutdown_grace_s if grace is None else grace
        if self._stopped.is_set():
            return
        log.info("shutting down: health NOT_SERVING, %.1fs grace for in-flight calls", grace)
        if hasattr(self, "health"):
            await self.health.shutdown()
        self.metrics.serving.set(0)
        if hasattr(self, "watcher"):
            await self.watcher.stop()
        if self._reloader is not None:
            self._reloader.cancel()
            self._reloader = None
        if self._fence_task is not None:
            self._fence_task.cancel()
            self._fence_task = None
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if hasattr(self, "batcher"):
            await self.batcher.stop()
        for name in ("cpu", "io"):
            if hasattr(self, name):
                getattr(self, name).shutdown(wait=True)
        if hasattr(self, "journal"):
            self.journal.close()
        if hasattr(self, "ledger"):
            self.ledger.close()
        if hasattr(self, "gallery"):
            self.gallery.close()  # a replica leaves the store's registry here
        if hasattr(self, "store"):
            self.store.close()
        self.metrics.stop()
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


def create_server(config: ServerConfig) -> FaceSearchServer:
    return FaceSearchServer(config)


async def serve(config: ServerConfig) -> int:
    server = create_server(config)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[Any]] = []

    def on_signal(signum: int) -> None:
        if not stopping:
            log.info("received %s", signal.Signals(signum).name)
            stopping.append(loop.create_task(server.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, server.reload_credentials)
    try:
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    # One line on stdout once the port is bound (scripts and tests wait for it).
    print(
        f"facesearch-server listening on port {server.port} metrics {server.metrics_port or 'off'} service {SERVICE}",
        flush=True,
    )
    await server.wait()
    return ExitCode.OK


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesearch-server", description="the facesearch gRPC server")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except FaceSearchError as err:
        print(f"facesearch-server: error: {err}", file=sys.stderr)
        return exit_code(err)
    setup_logging(config.log_level)
    log.info("config: %s", config.describe())
    try:
        return asyncio.run(serve(config))
    except FaceSearchError as err:
        log.error("cannot start: %s", err)
        return exit_code(err)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
