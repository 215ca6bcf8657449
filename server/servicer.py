"""The FaceSearch gRPC servicer: request -> convert -> service -> convert -> response.

Handlers raise; the error interceptor turns exceptions into status codes (one place).

Every handler passes the call's :class:`~server.admission.Deadline` (its deadline, and a cancel flag
the worker threads check) to the service, which admits every call through a bounded lane.
StreamIdentify items are admitted one by one like unary calls: an item the CPU lane cannot queue
gets a per-item ``RequestError`` (RESOURCE_EXHAUSTED, reason QUEUE_FULL) and the stream goes on. A
stream that sends no item for ``stream_idle_s`` (FACESEARCH_STREAM_IDLE_S) while it has no reply
pending is closed with DEADLINE_EXCEEDED, reason STREAM_IDLE.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import grpc

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from facesearch.errors import FaceSearchError, Reason
from server import convert
from server.admission import Deadline, StreamIdle, WorkStopped
from server.errors import status_of
from server.gallery_digest import gallery_digest
from server.service import FaceSearchService

log = logging.getLogger(f"facesearch.{__name__}")

#: FACESEARCH_STREAM_IDLE_S's default: a stream with no item (and no reply pending) for this long is closed.
DEFAULT_STREAM_IDLE_S = 60.0


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
        *,
        stream_idle_s: float = DEFAULT_STREAM_IDLE_S,
        security_warnings: tuple[str, ...] = (),  # helper A: Stats.security_warnings (server/config.py)
    ) -> None:
        self.security_warnings = security_warnings
        self.service = service
        self.model_id = model_id
        self.contract_id = contract_id
        self.dim = dim
        self.stream_window = stream_window
        self.stream_idle_s = stream_idle_s

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
        n = await self.service.delete_identity(convert.identity_id(request.identity_id), deadline_of(context))
        return pb.DeleteIdentityResponse(faces_deleted=n)

    async def DeleteFaces(  # noqa: N802
        self,
        request: pb.DeleteFacesRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.DeleteFacesResponse:
        n = await self.service.delete_faces(convert.face_ids(request), deadline_of(context))
        return pb.DeleteFacesResponse(faces_deleted=n)

    async def GetIdentity(self, request: pb.GetIdentityRequest, context: grpc.aio.ServicerContext) -> pb.Identity:  # noqa: N802
        ident = convert.identity_id(request.identity_id)
        view, faces = await self.service.get_identity(ident, request.include_faces, deadline_of(context))
        return convert.identity(view, faces)

    async def ListIdentities(  # noqa: N802
        self,
        request: pb.ListIdentitiesRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListIdentitiesResponse:
        after, size = convert.page(request)
        views, more = await self.service.list_identities(after, size, deadline_of(context))
        return convert.list_response(views, more)

    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.Stats:  # noqa: N802
        stats = convert.stats(await self.service.stats(deadline_of(context)), self.model_id, self.contract_id, self.dim)
        stats.security_warnings.extend(self.security_warnings)  # helper A: what makes this server unsafe
        if request.include_gallery_digest:  # issue 14: replicas compared value by value
            state = self.service.state()
            digest = await self.service.read_lane.run(deadline_of(context), functools.partial(gallery_digest, state))
            stats.gallery_digest.CopyFrom(convert.gallery_digest(digest))
        return stats

    async def StreamIdentify(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.StreamIdentifyRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamIdentifyResponse]:
        """Up to ``stream_window`` requests of the stream are processed at once; replies keep order. Each
        item is admitted like a unary Identify (QUEUE_FULL per item when the queue is full)."""
        stream_deadline = deadline_of(context)
        pending: asyncio.Queue[asyncio.Task[pb.StreamIdentifyResponse] | StreamIdle | None] = asyncio.Queue(
            self.stream_window
        )
        outstanding = 0  # items read whose reply is not sent yet

        async def one(seq: int, item: pb.StreamIdentifyRequest) -> pb.StreamIdentifyResponse:
            try:
                convert.stream_tag(item.tag)
                query = convert.identify_query(item.request)
                deadline = Deadline(stream_deadline.at)  # the stream's deadline, this item's own cancel flag
                result = await self.service.identify(query, deadline)
                return pb.StreamIdentifyResponse(sequence=seq, tag=item.tag, result=convert.identify_response(result))
            except WorkStopped:
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
            nonlocal outstanding
            seq = 0
            items = aiter(request_iterator)
            nxt: asyncio.Future[pb.StreamIdentifyRequest] | None = None
            try:
                while True:
                    nxt = asyncio.ensure_future(anext(items))
                    while True:  # idle only while nothing is pending: a client waiting for replies is not idle
                        done, _ = await asyncio.wait({nxt}, timeout=self.stream_idle_s)
                        if done or outstanding == 0:
                            break
                    if not done:
                        nxt.cancel()
                        await pending.put(
                            StreamIdle(
                                f"no StreamIdentify item for {self.stream_idle_s:g} s (FACESEARCH_STREAM_IDLE_S): "
                                "stream closed"
                            )
                        )
                        return
                    try:
                        item = nxt.result()
                    except StopAsyncIteration:
                        return
                    outstanding += 1
                    await pending.put(asyncio.create_task(one(seq, item)))
                    seq += 1
            finally:
                if nxt is not None and not nxt.done():
                    nxt.cancel()
                await pending.put(None)

        feeder = asyncio.create_task(reader())
        try:
            while True:
                task = await pending.get()
                if task is None:
                    break
                if isinstance(task, StreamIdle):
                    raise task
                reply = await task
                outstanding -= 1
                yield reply
            await feeder
        finally:
            feeder.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if isinstance(leftover, asyncio.Task):
                    leftover.cancel()
