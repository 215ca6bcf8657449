"""The standard ``grpc.health.v1.Health`` service: NOT_SERVING until models and index are loaded."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

SERVICE = "facesearch.v1.FaceSearch"


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

    async def shutdown(self) -> None:
        self.serving = False
        await self.servicer.enter_graceful_shutdown()
