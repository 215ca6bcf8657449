"""The FaceSearch gRPC servicer: request -> convert -> service -> convert -> response.

Handlers raise; the error interceptor turns exceptions into status codes (one place).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from facesearch.errors import FaceSearchError, Reason
from server import convert
from server.admission import Deadline, DeadlineExceeded
from server.errors import status_of
from server.service import FaceSearchService

log = logging.getLogger(f"facesearch.{__name__}")


def deadline_of(context: grpc.aio.ServicerContext) -> Deadline:
    return Deadline.after(context.time_remaining())


class FaceSearchServicer(pb_grpc.FaceSearchServicer):
    def __init__(
        self,
        service: FaceSearchService,
        model_id: str,
        contract_id: str,
        dim: int,
        stream_window: int,
        security_warnings: tuple[str, ...] = (),  # helper A: Stats.security_warnings (server/config.py)
    ) -> None:
        self.security_warnings = security_warnings
        self.service = service
        self.model_id = model_id
        self.contract_id = contract_id
        self.dim = dim
        self.stream_window = stream_window

    async def Identify(self, request: pb.IdentifyRequest, context: grpc.aio.ServicerContext) -> pb.IdentifyResponse:  # noqa: N802
        result = await self.service.identify(convert.identify_query(request), deadline_of(context))
        return convert.identify_response(result)

    async def Verify(self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext) -> pb.VerifyResponse:  # noqa: N802
        result = await self.service.verify(convert.verify_query(request), deadline_of(context))
        return convert.verify_response(result)

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:  # noqa: N802
        photo = await self.service.detect(
            convert.image(request.image),
            convert.largest_only(request.faces),
            deadline_of(context),
            convert.min_face(request),
        )
        return convert.detect_response(photo)

    async def Enroll(self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext) -> pb.EnrollResponse:  # noqa: N802
        result = await self.service.enroll(convert.enroll_query(request), deadline_of(context))
        return convert.enroll_response(result)

    async def DeleteIdentity(  # noqa: N802
        self,
        request: pb.DeleteIdentityRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.DeleteIdentityResponse:
        n = await self.service.delete_identity(convert.identity_id(request.identity_id))
        return pb.DeleteIdentityResponse(faces_deleted=n)

    async def DeleteFaces(  # noqa: N802
        self,
        request: pb.DeleteFacesRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.DeleteFacesResponse:
        n = await self.service.delete_faces(convert.face_ids(request))
        return pb.DeleteFacesResponse(faces_deleted=n)

    async def GetIdentity(self, request: pb.GetIdentityRequest, context: grpc.aio.ServicerContext) -> pb.Identity:  # noqa: N802
        view, faces = await self.service.get_identity(convert.identity_id(request.identity_id), request.include_faces)
        return convert.identity(view, faces)

    async def ListIdentities(  # noqa: N802
        self,
        request: pb.ListIdentitiesRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListIdentitiesResponse:
        after, size = convert.page(request)
        views, more = await self.service.list_identities(after, size)
        return convert.list_response(views, more)

    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.Stats:  # noqa: N802
        stats = convert.stats(await self.service.stats(), self.model_id, self.contract_id, self.dim)
        stats.security_warnings.extend(self.security_warnings)  # helper A: what makes this server unsafe
        return stats

    async def StreamIdentify(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.StreamIdentifyRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamIdentifyResponse]:
        """Up to ``stream_window`` requests of the stream are processed at once; replies keep order."""
        deadline = deadline_of(context)
        pending: asyncio.Queue[asyncio.Task[pb.StreamIdentifyResponse] | None] = asyncio.Queue(self.stream_window)

        async def one(seq: int, item: pb.StreamIdentifyRequest) -> pb.StreamIdentifyResponse:
            try:
                query = convert.identify_query(item.request)
                result = await self.service.identify(query, deadline, wait=True)
                return pb.StreamIdentifyResponse(sequence=seq, tag=item.tag, result=convert.identify_response(result))
            except DeadlineExceeded:
                raise
            except FaceSearchError as err:
                code, reason = status_of(err)
                error = pb.RequestError(code=code.value[0], reason=reason, message=err.message)
            except Exception:
                log.exception("StreamIdentify item %d failed", seq)
                error = pb.RequestError(
                    code=grpc.StatusCode.INTERNAL.value[0], reason=Reason.INTERNAL, message="internal error"
                )
            return pb.StreamIdentifyResponse(sequence=seq, tag=item.tag, error=error)

        async def reader() -> None:
            seq = 0
            try:
                async for item in request_iterator:
                    await pending.put(asyncio.create_task(one(seq, item)))
                    seq += 1
            finally:
                await pending.put(None)

        feeder = asyncio.create_task(reader())
        try:
            while True:
                task = await pending.get()
                if task is None:
                    break
                yield await task
            await feeder
        finally:
            feeder.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
