"""The standard ``grpc.health.v1.Health`` service: NOT_SERVING until models and index are loaded.

Services: ``""`` and ``facesearch.v1.FaceSearch`` (kept equal): SERVING once the gallery is loaded.
``facesearch.v1.FaceSearch.Writes``: whether enroll and delete can be made durable; NOT_SERVING while
the live journal's storage is full or failing (searches go on meanwhile), SERVING again after the
next write that succeeds (``server/write_health.py``). A load balancer probes the first; an operator's
alert watches the second (or the metric ``facesearch_writes_degraded``).

Check, Watch (a stream of status changes, for client-side health checking) and List are public:
they need no credentials (``server/auth_scopes.py``).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

SERVICE = "facesearch.v1.FaceSearch"
WRITES_SERVICE = f"{SERVICE}.Writes"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Servicer(HealthServicer):
    """grpcio-health-checking's async servicer (Check, Watch) with List, which it leaves unimplemented."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, int] = {"": _SERVING}
        self.closing = False

    async def set(self, service: str, status: Any) -> None:
        if not self.closing:
            self.statuses[service] = status
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self.closing = True
        self.statuses = dict.fromkeys(self.statuses, _NOT_SERVING)
        await super().enter_graceful_shutdown()

    async def List(  # noqa: N802
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        statuses = {name: health_pb2.HealthCheckResponse(status=s) for name, s in self.statuses.items()}
        return health_pb2.HealthListResponse(statuses=statuses)


class Health:
    """Health of the server ("") and of the FaceSearch service, kept equal."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.servicer = _Servicer()
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
