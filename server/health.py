"""The standard ``grpc.health.v1.Health`` service: NOT_SERVING until models and index are loaded.

Services: ``""`` and ``facesearch.v1.FaceSearch`` (kept equal): SERVING once the gallery is loaded.
``facesearch.v1.FaceSearch.Writes``: whether enroll and delete can be made durable; NOT_SERVING while
the live journal's storage is full or failing (searches go on meanwhile), SERVING again after the
next write that succeeds (``server/write_health.py``). A load balancer probes the first; an operator's
alert watches the second (or the metric ``facesearch_writes_degraded``).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

SERVICE = "facesearch.v1.FaceSearch"
WRITES_SERVICE = f"{SERVICE}.Writes"


class Health:
    """Health of the server ("") and of the FaceSearch service, kept equal."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        self.serving = False

    async def set(self, serving: bool) -> None:
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.servicer.set(name, status)

    async def set_writes(self, ok: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.servicer.set(WRITES_SERVICE, status)

    async def shutdown(self) -> None:
        self.serving = False
        await self.servicer.enter_graceful_shutdown()
