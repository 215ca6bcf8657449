"""The server edge, applied to every call: authentication before the body, scopes, errors, metrics, access log.

* Authentication reads only the call's metadata and TLS peer (:class:`server.auth.Authenticator`):
  every method is served through a request-streaming handler whose behaviour authenticates and
  authorizes first and reads (deserialises) the request message only once the call is allowed. A
  refused call never reads its body: what an unauthenticated caller can make the server hold is
  bounded by HTTP/2 flow control, not by FACESEARCH_MAX_MESSAGE_BYTES. (Unary and streaming
  requests are framed the same on the wire, so clients see no difference.)
* Authorization: the method's scope from :mod:`server.auth_scopes` (public for health), else
  PERMISSION_DENIED (reason ``SCOPE_REQUIRED``, naming the scope); a missing or unknown token is
  UNAUTHENTICATED (``MISSING_TOKEN`` / ``BAD_TOKEN``). The call's principal is bound with
  :func:`server.principal.bind_principal` before the handler runs.
* Errors: whatever a handler raises becomes a status code through :mod:`server.errors`
  (the one mapping), with a google.rpc ErrorInfo; unknown exceptions become INTERNAL with a
  generic message and the traceback goes to the server log only.
* Streaming replies: a handler may yield them (async generator) or write them with
  ``context.write`` and return (as the health service's Watch does); both are served.
* Metrics: calls and latency by method and status code.
* Access log: one JSON line per call on the ``facesearch.access`` logger, with the principal.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from facesearch.errors import InvalidInputError, Reason
from server.admission import StreamIdle
from server.auth import PUBLIC, Authenticator
from server.auth_scopes import METHOD_SCOPES, authorize, required_scope
from server.errors import details_trailer, public_message, reason_status, status_of
from server.metrics import Metrics
from server.principal import Principal, Scope, bind_principal, reset_principal

log = logging.getLogger(f"facesearch.{__name__}")
access = logging.getLogger("facesearch.access")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]

#: How long a unary call's request message may take to arrive after its headers (FACESEARCH_STREAM_IDLE_S).
DEFAULT_BODY_TIMEOUT_S = 60.0


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        metrics: Metrics,
        auth: Authenticator | None,
        access_log: bool,
        scopes: Mapping[str, Scope | None] = METHOD_SCOPES,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    ) -> None:
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self.auth = auth or Authenticator(None, None)
        self.access_log = access_log
        self.scopes = scopes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}
        call = _Call(self, method, metadata, handler.request_deserializer)
        ser = handler.response_serializer
        # Every method is served request-streaming, its requests as bytes: a request is read only after
        # admission, and deserialised here (bytes that do not parse: INVALID_ARGUMENT, MALFORMED_REQUEST).
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(call.unary(handler.unary_unary, False), None, ser)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(call.unary(handler.stream_unary, True), None, ser)
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(call.streaming(handler.unary_stream, False), None, ser)
        return grpc.stream_stream_rpc_method_handler(call.streaming(handler.stream_stream, True), None, ser)


def _decode(data: bytes, deserialize: Callable[[bytes], Any] | None, method: str) -> Any:
    if deserialize is None:
        return data
    try:
        return deserialize(data)
    except Exception as err:  # protobuf's DecodeError, or whatever a generic handler's deserializer raises
        raise InvalidInputError(
            f"the request of {method} does not parse as its message type ({err})", reason=Reason.MALFORMED_REQUEST
        ) from None


async def _decoded(
    raw: AsyncIterator[bytes], deserialize: Callable[[bytes], Any] | None, method: str
) -> AsyncIterator[Any]:
    async for data in raw:
        yield _decode(data, deserialize, method)


async def _single(
    raw: AsyncIterator[bytes], deserialize: Callable[[bytes], Any] | None, method: str, timeout_s: float
) -> Any:
    """The one request message of a unary-request method, which must arrive within ``timeout_s``: a call
    that opens its stream and never sends its message would otherwise hold a server-wide RPC slot forever."""
    try:
        data = await asyncio.wait_for(anext(aiter(raw)), timeout_s)
    except StopAsyncIteration:
        raise InvalidInputError(
            f"the call of {method} carries no request message", reason=Reason.INVALID_ARGUMENT
        ) from None
    except TimeoutError:
        raise StreamIdle(
            f"the request message of {method} did not arrive within {timeout_s:g} s (FACESEARCH_STREAM_IDLE_S)"
        ) from None
    return _decode(data, deserialize, method)


class _Call:
    """One call's bookkeeping: wraps its behaviour with admission, error mapping and recording."""

    def __init__(
        self,
        edge: EdgeInterceptor,
        method: str,
        metadata: Mapping[str, str],
        deserialize: Callable[[bytes], Any] | None,
    ) -> None:
        self.edge = edge
        self.method = method
        self.deserialize = deserialize
        self.metadata = metadata
        self.short = method.rsplit("/", 1)[-1]
        self.request_id = metadata.get("x-request-id") or uuid.uuid4().hex[:16]
        self.principal: Principal | None = None
        self.start = time.perf_counter()

    async def _request(self, requests: AsyncIterator[bytes], streaming_request: bool) -> Any:
        """The call's request: its decoded stream, or its one message (which must arrive in time)."""
        if streaming_request:
            return _decoded(requests, self.deserialize, self.short)
        return await _single(requests, self.deserialize, self.short, self.edge.body_timeout_s)

    def unary(self, behavior: Behavior, streaming_request: bool) -> Callable[..., Awaitable[Any]]:
        async def run(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            code = grpc.StatusCode.OK
            reason = ""
            try:
                token = bind_principal(self._admit(context))
                try:
                    request = await self._request(requests, streaming_request)
                    reply = behavior(request, context)
                    return await reply if inspect.isawaitable(reply) else reply
                finally:
                    reset_principal(token)
            except BaseException as err:
                code, reason = self._classify(err, context)
                await self._abort(err, code, reason, context)
                raise
            finally:
                self._record(code, reason, context)

        return run

    def streaming(self, behavior: Behavior, streaming_request: bool) -> Callable[..., Awaitable[None]]:
        async def run(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            code = grpc.StatusCode.OK
            reason = ""
            try:
                token = bind_principal(self._admit(context))
                try:
                    request = await self._request(requests, streaming_request)
                    replies = behavior(request, context)
                    if inspect.isawaitable(replies):  # writes with context.write itself (health Watch)
                        await replies
                    elif hasattr(replies, "__aiter__"):
                        async for reply in replies:
                            await context.write(reply)
                    else:  # a plain generator
                        for reply in replies:
                            await context.write(reply)
                finally:
                    reset_principal(token)
            except BaseException as err:
                code, reason = self._classify(err, context)
                await self._abort(err, code, reason, context)
                raise
            finally:
                self._record(code, reason, context)

        return run

    def _admit(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller, if it may call this method; raises UNAUTHENTICATED or PERMISSION_DENIED. A caller
        refused for want of a scope is named in the access log all the same."""
        required = required_scope(self.method, self.edge.scopes)
        if required is None:
            self.principal = PUBLIC
            return PUBLIC
        self.principal = self.edge.auth.principal(self.metadata, context.auth_context())
        authorize(self.principal, self.method, required)
        return self.principal

    def _classify(self, err: BaseException, context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str]:
        if isinstance(err, asyncio.CancelledError):
            return reason_status(Reason.CANCELLED)
        if isinstance(err, grpc.aio.AbortError):  # already aborted by the handler
            return _code_of(context), ""
        return status_of(err)

    async def _abort(
        self, err: BaseException, code: grpc.StatusCode, reason: str, context: grpc.aio.ServicerContext
    ) -> None:
        """Abort the call with ``code`` (raises), unless it is cancelled or already aborted."""
        if isinstance(err, asyncio.CancelledError | grpc.aio.AbortError):
            return
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed (request %s)", self.method, self.request_id, exc_info=err)
        message = public_message(err)
        await context.abort(code, message, trailing_metadata=details_trailer(code, message, reason))

    def _record(self, code: grpc.StatusCode, reason: str, context: grpc.aio.ServicerContext) -> None:
        seconds = time.perf_counter() - self.start
        m = self.edge.metrics
        m.requests.labels(self.short, code.name).inc()
        m.latency.labels(self.short, code.name).observe(seconds)
        if self.edge.access_log:
            entry = {
                "method": self.method,
                "code": code.name,
                "ms": round(seconds * 1e3, 2),
                "peer": context.peer(),
                "principal": self.principal.name if self.principal is not None else "-",
                "request_id": self.request_id,
            }
            if reason:
                entry["reason"] = reason
            access.info(json.dumps(entry, separators=(",", ":")))


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
