"""Protobuf mutation fuzzing of every RPC of ``facesearch.v1.FaceSearch`` against a real server process.

The methods, their request types and every field are read from the service descriptor, so a method or
field added later is fuzzed too. Each request goes on the wire as raw bytes (a channel with identity
serializers), made one of these ways: a valid request of the method (``SEEDS``; a new method starts from
its empty request) with one or two fields overridden, or a message built field by field from the
descriptor (values at the edges of each type, odd Unicode, photos from ``tests/data/odd_images``, huge
repeated fields and maps within the message limit); random bytes; a valid message truncated or
byte-mutated; hostile wire encodings (wrong wire types, lengths past the end, deep nesting, overlong
varints, unterminated groups, unknown fields). StreamIdentify gets streams of such items; call metadata
is fuzzed too.

Asserted: a request that parses is never answered INTERNAL or UNKNOWN (nor UNIMPLEMENTED, nor a dead
server's UNAVAILABLE, nor DEADLINE_EXCEEDED); one that does not parse is INVALID_ARGUMENT with reason
MALFORMED_REQUEST (or RESOURCE_EXHAUSTED over the size limit); an OK reply parses as the method's
response type; a stream item's own error is never INTERNAL/UNKNOWN; after each method's run the server
is alive and its health check says SERVING.

Deterministic (hypothesis ``derandomize=True``, no example database): the same examples on every run.
A failure prints the request bytes (hex) and the server log's tail.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facesearch.api.v1 import facesearch_pb2 as pb
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, ServerProcess, start_server

pytestmark = pytest.mark.slow

SERVICE = pb.DESCRIPTOR.services_by_name["FaceSearch"]
METHODS: dict[str, MethodDescriptor] = {m.name: m for m in SERVICE.methods}
UNARY = sorted(name for name, m in METHODS.items() if not m.client_streaming and not m.server_streaming)
STREAMING = sorted(name for name, m in METHODS.items() if m.client_streaming or m.server_streaming)
CORPUS = REPO / "tests" / "data" / "odd_images"
MAX_MESSAGE_BYTES = 4 << 20  # the fuzzed server's limit, so "huge" stays cheap
CALL_TIMEOUT_S = 60.0
EXAMPLES_PER_METHOD = 60

# Status codes a hostile request may get. INTERNAL and UNKNOWN are bugs; UNIMPLEMENTED, UNAVAILABLE and
# DEADLINE_EXCEEDED would mean a missing handler, a dead server or a request that hangs it.
EXPECTED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ABORTED,
    }
)
BAD_ITEM_CODES = frozenset({grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]})


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def method_path(method: MethodDescriptor) -> str:
    return f"/{SERVICE.full_name}/{method.name}"


# --- values ----------------------------------------------------------------------------------

_I32 = (-(2**31), 2**31 - 1)
_I64 = (-(2**63), 2**63 - 1)
_U32 = (0, 2**32 - 1)
_U64 = (0, 2**64 - 1)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: _I32,
    FieldDescriptor.TYPE_SINT32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32,
    FieldDescriptor.TYPE_INT64: _I64,
    FieldDescriptor.TYPE_SINT64: _I64,
    FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_UINT32: _U32,
    FieldDescriptor.TYPE_FIXED32: _U32,
    FieldDescriptor.TYPE_UINT64: _U64,
    FieldDescriptor.TYPE_FIXED64: _U64,
}
ODD_STRINGS = [
    "",
    " ",
    "a",
    "Colin_Powell",
    "\u202eevil\u202c",  # bidi override
    "a\u200bb",  # zero-width space
    "\ufeffbom",
    "\x00nul",
    "\x1b[31mred",
    "名前",
    "🙂" * 10,
    "e\u0301" * 50,  # combining marks
    "../../etc/passwd",
    "%s%n%x",
    "x" * 300,
    "\U0010ffff",
    "\u2028line\u2029",
]


def _photos() -> list[bytes]:
    names = ["baseline.jpg", "rgba.png", "animated.gif", "bomb_60000x60000.png", "scan_bomb.jpg", "tiny_8x8.png"]
    photos = [(CORPUS / name).read_bytes() for name in names]
    lfw = sorted((REPO / "tests" / "data" / "lfw-dev" / "images").glob("*/*.jpg"))
    photos.append(lfw[0].read_bytes())  # a real face, so the full pipeline runs now and then
    return photos


PHOTOS = _photos()


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, 2, 7, 100, 1000, 2**16, 2**31 - 1, 2**32 - 1, 2**63 - 1, lo, hi) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD_STRINGS),
        st.text(st.characters(codec="utf-8"), max_size=40),
        st.integers(1_000, 200_000).map(lambda n: "é" * n),  # long, multi-byte
    )


def _bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(PHOTOS),
        st.binary(max_size=64),
        st.tuples(st.sampled_from(PHOTOS), st.integers(0, 1 << 16)).map(lambda p: p[0][: p[1] % (len(p[0]) + 1)]),
    )


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INT_RANGES:
        return _ints(*INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, -1e308]), st.floats())
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5]), st.floats(width=32))
    if kind == FieldDescriptor.TYPE_STRING:
        return _text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _ints(*_I32))  # open enums keep unknown numbers
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated) if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


def _fill(value: object, count: int) -> list[object]:
    """``count`` copies of ``value``, fewer if they would not fit the message limit."""
    size = len(value) * 2 if isinstance(value, str | bytes) else 8
    return [value] * max(1, min(count, MAX_MESSAGE_BYTES // (size + 4)))


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0, sparse: bool = False) -> Message:
    """A message of ``descriptor`` with a random subset of its fields (about half, or at most two when
    ``sparse``) set to hostile values."""
    msg = message_class(descriptor)()
    fields = list(descriptor.fields)
    if sparse and fields:
        chosen = draw(st.sets(st.sampled_from(fields), max_size=2))
        fields = [f for f in fields if f in chosen]
    for field in fields:
        if not sparse and not draw(st.booleans()):
            continue
        target = getattr(msg, field.name) if _is_repeated(field) else None
        if _is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = draw(
                st.one_of(
                    st.dictionaries(_scalar(key_field), _scalar(value_field), max_size=4),
                    st.integers(100, 20_000).map(lambda n: {f"k{i}": "v" for i in range(n)}),  # huge map
                )
            )
            for key, value in entries.items():
                target[key] = value  # type: ignore[index]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            element = messages(field.message_type, depth + 1)
            if target is not None:
                items = draw(
                    st.one_of(
                        st.lists(element, max_size=4),
                        st.tuples(element, st.integers(50, 2_000)).map(lambda p: [p[0]] * p[1]),  # huge
                    )
                )
                fits = MAX_MESSAGE_BYTES // (max((i.ByteSize() for i in items), default=0) + 4)
                for item in items[:fits]:
                    target.add().CopyFrom(item)
            else:
                getattr(msg, field.name).CopyFrom(draw(element))
        elif target is not None:
            element = _scalar(field)
            items = draw(
                st.one_of(
                    st.lists(element, max_size=6),
                    st.tuples(element, st.integers(1_000, 100_000)).map(lambda p: _fill(p[0], p[1])),  # huge
                    st.integers(1_000, 100_000).map(lambda n: [f"face-{i}" for i in range(n)])
                    if field.type == FieldDescriptor.TYPE_STRING
                    else st.nothing(),
                )
            )
            target.extend(items)
        else:
            setattr(msg, field.name, draw(_scalar(field)))
    return msg


# --- wire-level mutations ------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        at = where % (len(out) + 1)
        if kind == 0 and out:
            out[at % len(out)] = value
        elif kind == 1:
            del out[at : at + 1 + value % 16]
        elif kind == 2:
            out[at:at] = bytes([value]) * (1 + value % 4)
        elif kind == 3 and out:
            out[at % len(out)] ^= 1 << (value % 8)
        else:
            del out[at:]  # truncate
    return bytes(out)


@st.composite
def hostile_wire(draw: st.DrawFn, descriptor: Descriptor) -> bytes:
    """Encodings a parser must refuse or skip: known field numbers with the wrong wire type, lengths
    past the end, nesting past protobuf's recursion limit, overlong varints, unknown fields, groups."""
    numbers = [f.number for f in descriptor.fields] or [1]
    number = draw(st.sampled_from([*numbers, 999, 2**29 - 1]))
    wire = draw(st.integers(0, 7))
    key = _varint((number << 3) | wire)
    choice = draw(st.integers(0, 5))
    if choice == 0:  # length-delimited with a length past the end
        return key[:-1] + _varint((number << 3) | 2) + _varint(draw(st.integers(1, 2**32))) + b"x"
    if choice == 1:  # deep nesting of a message field (or anything) by length prefixes
        body = b""
        for _ in range(draw(st.integers(50, 200))):
            body = _varint((number << 3) | 2) + _varint(len(body)) + body
        return body
    if choice == 2:  # an overlong varint
        return key + b"\xff" * draw(st.integers(10, 20)) + b"\x01"
    if choice == 3:  # an unterminated group
        return _varint((number << 3) | 3) * draw(st.integers(1, 200))
    if choice == 4:  # fixed-width values cut short
        return _varint((number << 3) | draw(st.sampled_from([1, 5]))) + b"\x00\x01"
    return key + draw(st.binary(max_size=32))


def _seeds() -> dict[str, list[Message]]:
    """Valid requests of the methods known today; fuzzing overrides a few of their fields, so it
    reaches deep into the handlers. A method added later starts from its empty request."""
    photo = PHOTOS[-1]
    identify = [pb.IdentifyRequest(image=photo), pb.IdentifyRequest(image=photo, top_k=3, min_face_px=80)]
    return {
        pb.IdentifyRequest.DESCRIPTOR.full_name: identify,
        pb.VerifyRequest.DESCRIPTOR.full_name: [
            pb.VerifyRequest(image=photo, identity_id="AJ_Cook"),
            pb.VerifyRequest(image=photo, reference_image=photo),
        ],
        pb.DetectRequest.DESCRIPTOR.full_name: [pb.DetectRequest(image=photo)],
        pb.EnrollRequest.DESCRIPTOR.full_name: [
            pb.EnrollRequest(identity_id="fuzz-person", images=[pb.EnrollImage(image=photo)], use_largest_face=True),
            pb.EnrollRequest(identity_id="AJ_Cook", images=[pb.EnrollImage(image=photo, source="a.jpg")]),
        ],
        pb.DeleteIdentityRequest.DESCRIPTOR.full_name: [pb.DeleteIdentityRequest(identity_id="nobody")],
        pb.DeleteFacesRequest.DESCRIPTOR.full_name: [pb.DeleteFacesRequest(face_ids=["nobody-face"])],
        pb.GetIdentityRequest.DESCRIPTOR.full_name: [pb.GetIdentityRequest(identity_id="AJ_Cook", include_faces=True)],
        pb.ListIdentitiesRequest.DESCRIPTOR.full_name: [pb.ListIdentitiesRequest(page_size=1)],
        pb.StreamIdentifyRequest.DESCRIPTOR.full_name: [pb.StreamIdentifyRequest(request=r, tag="t") for r in identify],
    }


SEEDS = _seeds()


def _merged(seed: Message, override: Message) -> Message:
    out = type(seed)()
    out.CopyFrom(seed)
    out.MergeFrom(override)  # scalars set in override win; repeated fields grow; messages merge
    return out


def requests(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    seeds = SEEDS.get(descriptor.full_name) or [message_class(descriptor)()]
    seeded = st.tuples(st.sampled_from(seeds), messages(descriptor, sparse=True)).map(lambda p: _merged(*p))
    structured = st.one_of(seeded, seeded, messages(descriptor)).map(lambda m: m.SerializeToString())
    edits = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)
    return st.one_of(
        structured,
        structured,  # twice as likely: it reaches the handlers
        st.binary(max_size=512),
        st.tuples(structured, edits).map(lambda p: _mutate(*p)),
        hostile_wire(descriptor),
        st.tuples(structured, hostile_wire(descriptor)).map(lambda p: p[0] + p[1]),
    )


# --- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(server_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = start_server(
        server_bundle,
        tmp / "index",
        tmp / "logs",
        env={"FACESEARCH_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES), "FACESEARCH_WORKERS": "2"},
    )
    try:
        lfw = sorted((REPO / "tests" / "data" / "lfw-dev" / "images").glob("*/*.jpg"))
        with srv.client() as client:  # someone to find, get and delete
            for person in ("AJ_Cook", "Colin_Powell"):
                photos = [p for p in lfw if p.parent.name == person][:1] or lfw[:1]
                client.enroll(person, photos, use_largest_face=True)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        fuzz_server.target,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    ) as ch:
        yield ch


def _identity(data: bytes) -> bytes:
    return data


def _assert_healthy(srv: ServerProcess, channel: grpc.Channel) -> None:
    assert srv.proc.poll() is None, f"server exited ({srv.proc.returncode}):\n{srv.log()[-4000:]}"
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _check_code(
    code: grpc.StatusCode,
    details: str | None,
    request: bytes,
    srv: ServerProcess,
    expected: frozenset[grpc.StatusCode] = EXPECTED_CODES,
) -> None:
    assert code in expected, (
        f"{code.name}: {details!r} for request bytes {request[:2000].hex()} ({len(request)} bytes); "
        f"server log tail:\n{srv.log()[-3000:]}"
    )


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_METHOD,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)


def _parses(descriptor: Descriptor, data: bytes) -> bool:
    try:
        message_class(descriptor).FromString(data)
    except DecodeError:
        return False
    return True


def reason_of(trailing: Any) -> str:
    """The ErrorInfo reason in a call's status details trailer ("" when there is none)."""
    from google.rpc import error_details_pb2, status_pb2

    raw = dict(trailing or ()).get("grpc-status-details-bin")
    if not raw:
        return ""
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def _unary_call(
    method: MethodDescriptor, channel: grpc.Channel, srv: ServerProcess, expected: frozenset[grpc.StatusCode]
) -> Callable[[bytes], tuple[grpc.StatusCode, str]]:
    call: Any = channel.unary_unary(method_path(method), request_serializer=_identity, response_deserializer=_identity)
    response_class = message_class(method.output_type)

    def send(request: bytes) -> tuple[grpc.StatusCode, str]:
        try:
            reply, rpc = call.with_call(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            code, details, reason = err.code(), err.details(), reason_of(err.trailing_metadata())
        else:
            code, details, reason = rpc.code(), rpc.details(), ""
            response_class.FromString(reply)  # an OK reply is a well-formed response
        _check_code(code, details, request, srv, expected)
        return code, reason

    return send


@pytest.mark.parametrize("name", UNARY)
def test_fuzzed_unary_requests_never_get_internal_or_unknown(
    name: str, fuzz_server: ServerProcess, channel: grpc.Channel
) -> None:
    """Requests that parse as the method's type (built, mutated or with unknown fields): handled, never
    INTERNAL/UNKNOWN."""
    method = METHODS[name]
    send = _unary_call(method, channel, fuzz_server, EXPECTED_CODES)
    seen: dict[str, int] = {}

    @FUZZ_SETTINGS
    @given(request=requests(method.input_type).filter(lambda r: _parses(method.input_type, r)))
    def one(request: bytes) -> None:
        code, _ = send(request)
        seen[code.name] = seen.get(code.name, 0) + 1

    one()
    _assert_healthy(fuzz_server, channel)
    # The fuzzer reached the handlers: both answers and refusals came back (GetStats has no fields to refuse).
    assert "OK" in seen or name not in ("GetStats", "ListIdentities"), seen
    assert set(seen) - {"OK"} or name == "GetStats", seen


@pytest.mark.parametrize("name", [*UNARY, "StreamIdentify"])
def test_unparseable_requests_are_invalid_argument(
    name: str, fuzz_server: ServerProcess, channel: grpc.Channel
) -> None:
    """Bytes that are not the request type (random, truncated, hostile wire encodings): INVALID_ARGUMENT
    (or RESOURCE_EXHAUSTED over the size limit), for a unary call and for a stream's item alike."""
    method = METHODS[name]
    edits = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)
    structured = messages(method.input_type).map(lambda m: m.SerializeToString())
    garbage = st.one_of(
        st.binary(min_size=1, max_size=512),
        hostile_wire(method.input_type),
        st.tuples(structured, edits).map(lambda p: _mutate(*p)),
    ).filter(lambda r: not _parses(method.input_type, r))
    refused = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED})
    call: Any = channel.stream_stream(
        method_path(method), request_serializer=_identity, response_deserializer=_identity
    )

    def send_item(request: bytes) -> tuple[grpc.StatusCode, str]:
        replies = call(iter([request]), timeout=CALL_TIMEOUT_S)
        try:
            for _ in replies:
                pass
            code, details, reason = replies.code(), replies.details(), reason_of(replies.trailing_metadata())
        except grpc.RpcError as err:
            code, details, reason = err.code(), err.details(), reason_of(err.trailing_metadata())
        _check_code(code, details, request, fuzz_server, refused)
        return code, reason

    send = send_item if method.client_streaming else _unary_call(method, channel, fuzz_server, refused)

    @settings(FUZZ_SETTINGS, max_examples=15)
    @given(request=garbage)
    def one(request: bytes) -> None:
        code, reason = send(request)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert reason == "MALFORMED_REQUEST", (reason, request.hex())

    one()
    _assert_healthy(fuzz_server, channel)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    item = METHODS["StreamIdentify"].input_type
    return draw(st.lists(requests(item).filter(lambda r: _parses(item, r)), min_size=0, max_size=5))


def test_fuzzed_streams_never_get_internal_or_unknown(fuzz_server: ServerProcess, channel: grpc.Channel) -> None:
    for name in STREAMING:
        method = METHODS[name]
        assert method.client_streaming and method.server_streaming, f"{name}: a new streaming shape to fuzz"
    method = METHODS["StreamIdentify"]
    call: Callable[..., Any] = channel.stream_stream(
        method_path(method), request_serializer=_identity, response_deserializer=_identity
    )
    response_class = message_class(method.output_type)

    @FUZZ_SETTINGS
    @given(items=streams())
    def one(items: list[bytes]) -> None:
        replies = call(iter(items), timeout=CALL_TIMEOUT_S)
        try:
            for raw in replies:
                try:
                    reply = response_class.FromString(raw)
                except DecodeError as err:
                    raise AssertionError(f"reply does not parse: {raw[:200].hex()}") from err
                if reply.HasField("error"):
                    assert reply.error.code not in BAD_ITEM_CODES, (reply, [i.hex() for i in items])
            code, details = replies.code(), replies.details()
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
        _check_code(code, details, b"".join(struct.pack(">I", len(i)) + i for i in items), fuzz_server)

    one()
    _assert_healthy(fuzz_server, channel)


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)
METADATA = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["x-request-id", "authorization", "user-agent", "grpc-timeout", "te", "x-forwarded-for"]),
            st.one_of(_PRINTABLE, st.integers(100, 6_000).map(lambda n: "x" * n)),
        ),
        st.tuples(st.from_regex(r"\A[a-z][a-z0-9_.-]{0,20}\Z"), _PRINTABLE),
        st.tuples(st.from_regex(r"\A[a-z][a-z0-9]{0,10}-bin\Z"), st.binary(max_size=64)),
    ),
    max_size=6,
)


def test_fuzzed_metadata_never_gets_internal_or_unknown(fuzz_server: ServerProcess, channel: grpc.Channel) -> None:
    """Odd call metadata (request ids of any length, malformed authorization, reserved names, binary
    headers) on a valid GetStats and Identify: handled, never INTERNAL/UNKNOWN."""
    calls = [
        (channel.unary_unary(method_path(METHODS["GetStats"]), _identity, _identity), b""),
        (
            channel.unary_unary(method_path(METHODS["Identify"]), _identity, _identity),
            SEEDS[pb.IdentifyRequest.DESCRIPTOR.full_name][0].SerializeToString(),
        ),
    ]
    expected = EXPECTED_CODES

    @settings(FUZZ_SETTINGS, max_examples=60)
    @given(metadata=METADATA, which=st.integers(0, 1))
    def one(metadata: list[tuple[str, str | bytes]], which: int) -> None:
        call, request = calls[which]
        try:
            call.with_call(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
        except ValueError:
            return  # metadata grpc refuses to send (client side): nothing reached the server
        sent.append(code)
        _check_code(code, details, repr(metadata).encode(), fuzz_server, expected)

    sent: list[grpc.StatusCode] = []
    one()
    _assert_healthy(fuzz_server, channel)
    assert len(sent) >= 30, f"only {len(sent)} of 60 metadata sets went out"


def test_fuzzed_health_and_reflection_requests_never_get_internal_or_unknown(
    fuzz_server: ServerProcess, channel: grpc.Channel
) -> None:
    """The other services on the port, fuzzed from their descriptors the same way: Health.Check and
    reflection (v1alpha, and v1 by path: the same messages) with odd service, file and symbol names."""
    from grpc_reflection.v1alpha import reflection_pb2

    check = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]
    reflect = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].methods_by_name["ServerReflectionInfo"]
    check_call: Any = channel.unary_unary("/grpc.health.v1.Health/Check", _identity, _identity)
    reflect_calls: list[Any] = [
        channel.stream_stream(f"/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo", _identity, _identity)
        for v in ("v1alpha", "v1")
    ]
    seen: set[str] = set()

    @settings(FUZZ_SETTINGS, max_examples=40)
    @given(
        which=st.integers(0, 2),
        check_request=requests(check.input_type),
        reflect_items=st.lists(requests(reflect.input_type), max_size=3),
    )
    def one(which: int, check_request: bytes, reflect_items: list[bytes]) -> None:
        if which == 0:
            try:
                check_call(check_request, timeout=CALL_TIMEOUT_S)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as err:
                code, details = err.code(), err.details()
            request = check_request
        else:
            replies = reflect_calls[which - 1](iter(reflect_items), timeout=CALL_TIMEOUT_S)
            try:
                for _ in replies:
                    pass
                code, details = replies.code(), replies.details()
            except grpc.RpcError as err:
                code, details = err.code(), err.details()
            request = b"".join(struct.pack(">I", len(i)) + i for i in reflect_items)
        seen.add(code.name)
        _check_code(code, details, request, fuzz_server)

    one()
    _assert_healthy(fuzz_server, channel)
    assert {"OK", "INVALID_ARGUMENT"} <= seen or {"OK", "NOT_FOUND"} <= seen, seen


def test_every_method_is_fuzzed() -> None:
    """The descriptor drives the fuzzing: every method of the service is in the tests above."""
    assert set(UNARY) | {"StreamIdentify"} == set(METHODS), json.dumps(sorted(METHODS))
    assert len(UNARY) >= 9
