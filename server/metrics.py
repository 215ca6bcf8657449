"""Prometheus metrics of one server (its own registry, served on FACESEARCH_METRICS_LISTEN)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(f"facesearch.{__name__}")

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "facesearch_requests", "gRPC calls finished, by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "facesearch_request_seconds",
            "gRPC call latency, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "facesearch_stage_seconds",
            "time per pipeline stage (decode, detect, align, embed, search)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("facesearch_queue_depth", "requests waiting for or holding a worker", registry=r)
        self.batch_size = Histogram(
            "facesearch_embed_batch_size", "face chips per embedding batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "facesearch_embed_batch_seconds", "embedding batch inference time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.index_ntotal = Gauge("facesearch_index_ntotal", "faces in the published index version", registry=r)
        self.live_faces = Gauge("facesearch_live_faces", "faces enrolled since the published version", registry=r)
        self.tombstones = Gauge("facesearch_tombstones", "published faces deleted since the version", registry=r)
        self.identities = Gauge("facesearch_identities", "identities in the gallery", registry=r)
        self.index_info = Gauge(
            "facesearch_index_info", "the index version served (value 1)", ["version", "contract_id"], registry=r
        )
        self.swaps = Counter(
            "facesearch_index_swaps", "index version loads, by result (ok, refused, failed)", ["result"], registry=r
        )
        self.serving = Gauge("facesearch_serving", "1 when the health status is SERVING", registry=r)
        self.writes_degraded = Gauge(
            "facesearch_writes_degraded",
            "1 while the live journal's storage refuses writes (disk full or failing): enroll and delete "
            "return UNAVAILABLE, searches go on",
            registry=r,
        )
        self.write_failures = Counter(
            "facesearch_write_failures",
            "journal writes the storage refused, by reason (STORAGE_FULL, STORAGE_ERROR)",
            ["reason"],
            registry=r,
        )
        self._server: Any = None

    def start(self, listen: str) -> int:
        """Serve ``/metrics`` on ``HOST:PORT``; returns the bound port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def set_index(self, version: str, contract_id: str) -> None:
        self.index_info.clear()
        self.index_info.labels(version or "none", contract_id).set(1)
