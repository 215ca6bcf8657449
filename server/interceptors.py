"""The server edge, applied to every call: bearer-token auth, error mapping, metrics, access log.

* Auth: with a token file configured, every call except the health service must carry
  ``authorization: Bearer <token>`` matching one of the file's tokens (constant-time
  comparison), else UNAUTHENTICATED (reason ``MISSING_TOKEN`` / ``BAD_TOKEN``).
* Errors: whatever a handler raises becomes a status code through :mod:`server.errors`
  (the one mapping), with a google.rpc ErrorInfo; unknown exceptions become INTERNAL with a
  generic message and the traceback goes to the server log only.
* Metrics: calls and latency by method and status code.
* Access log: one JSON line per call on the ``facesearch.access`` logger.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from facesearch.errors import InvalidInputError, Reason, UnauthenticatedError
from server.errors import details_trailer, public_message, reason_status, status_of
from server.metrics import Metrics

log = logging.getLogger(f"facesearch.{__name__}")
access = logging.getLogger("facesearch.access")

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)


def read_tokens(path: Path) -> list[bytes]:
    """Bearer tokens, one a line; blank lines and ``#`` comments are skipped."""
    tokens = [line.strip() for line in path.read_text().splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise InvalidInputError(f"FACESEARCH_AUTH_TOKENS_FILE {path} holds no tokens", reason=Reason.BAD_CONFIG)
    return [t.encode() for t in tokens]


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, tokens: list[bytes] | None, access_log: bool) -> None:
        self.metrics = metrics
        self.tokens = tokens
        self.access_log = access_log

    def _auth_error(self, metadata: dict[str, str]) -> UnauthenticatedError | None:
        if not self.tokens:
            return None
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return UnauthenticatedError(
                "missing bearer token: send metadata 'authorization: Bearer <token>'", reason=Reason.MISSING_TOKEN
            )
        given = token.strip().encode()
        ok = False
        for expected in self.tokens:  # compare with every token: timing says nothing about which
            ok |= hmac.compare_digest(given, expected)
        return None if ok else UnauthenticatedError("invalid bearer token", reason=Reason.BAD_TOKEN)

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
        denied = None if method.startswith(PUBLIC_PREFIXES) else self._auth_error(metadata)
        call = _Call(self, method, metadata.get("x-request-id") or uuid.uuid4().hex[:16], denied)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.streaming(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            call.streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )


class _Call:
    """One call's bookkeeping: wraps its behaviour with auth, error mapping and recording."""

    def __init__(self, edge: EdgeInterceptor, method: str, request_id: str, denied: Exception | None) -> None:
        self.edge = edge
        self.method = method
        self.short = method.rsplit("/", 1)[-1]
        self.request_id = request_id
        self.denied = denied
        self.start = time.perf_counter()

    def unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            code = grpc.StatusCode.OK
            reason = ""
            try:
                if self.denied is not None:
                    raise self.denied
                return await behavior(request, context)
            except BaseException as err:
                code, reason = self._classify(err, context)
                await self._abort(err, code, reason, context)
                raise
            finally:
                self._record(code, reason, context)

        return run

    def streaming(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            code = grpc.StatusCode.OK
            reason = ""
            try:
                if self.denied is not None:
                    raise self.denied
                async for item in behavior(request, context):
                    yield item
            except BaseException as err:
                code, reason = self._classify(err, context)
                await self._abort(err, code, reason, context)
                raise
            finally:
                self._record(code, reason, context)

        return run

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
                "request_id": self.request_id,
            }
            if reason:
                entry["reason"] = reason
            access.info(json.dumps(entry, separators=(",", ":")))


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
