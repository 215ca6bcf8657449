"""A Python client for the facesearch gRPC server.

    from facesearch.client.service_client import FaceSearchClient

    with FaceSearchClient("localhost:50051") as fs:
        fs.enroll("alice", [Path("alice1.jpg"), Path("alice2.jpg")], name="Alice")
        result = fs.identify(Path("group.jpg"), max_fpir=0.01)  # hold strangers matched at 1%
        for face in result.faces:
            print(face.box, face.match.identity_id if face.match else "unknown")
        print(result.threshold.reason)  # which threshold was applied, on which score, and why

Photos may be given as bytes or as paths. Failures raise :class:`~facesearch.errors.FaceSearchError`
subclasses carrying the server's stable ``reason`` (from its google.rpc ErrorInfo; compare it with
:class:`~facesearch.errors.Reason` members), or :class:`RpcFailedError` for transport-level statuses
(DEADLINE_EXCEEDED, ...), whose reason is the status's name when the server sent none. UNAVAILABLE
(no server at the address, a server stopping, its disk full: ``STORAGE_FULL``) raises
:class:`ServerUnavailableError`, an :class:`~facesearch.errors.UnavailableError` (and an
``RpcFailedError``): worth retrying later. A reason this client does not know (from a newer
server) is kept verbatim.

Enroll is safe to retry: each call carries a request id (a fresh UUID unless given), and on
UNAVAILABLE or DEADLINE_EXCEEDED the client retries it with the same id (``enroll_retries`` times,
with exponential backoff), so a retry of an enrollment that did happen returns its first result
instead of adding the faces twice. Adding faces to an identity that exists needs ``append=True``.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from facesearch.errors import (
    AlreadyExistsError,
    FaceSearchError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    Reason,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

T = TypeVar("T")
Photo = bytes | str | Path
Box = tuple[float, float, float, float]

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 32 << 20


class RpcFailedError(FaceSearchError):
    """A call failed with a status that is not one of facesearch's error classes."""

    default_reason = Reason.RPC_FAILED

    def __init__(self, message: str, *, status: grpc.StatusCode, reason: Reason | str | None = None) -> None:
        super().__init__(message, reason=reason or Reason.__members__.get(status.name, Reason.RPC_FAILED))
        self.status = status


class ServerUnavailableError(UnavailableError, RpcFailedError):
    """UNAVAILABLE: no server answers at the address, it is stopping, or its storage cannot take the
    write now (reason ``STORAGE_FULL`` / ``STORAGE_ERROR``: nothing was written). Retry later."""

    def __init__(
        self, message: str, *, status: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, reason: Reason | str | None = None
    ) -> None:
        RpcFailedError.__init__(self, message, status=status, reason=reason or Reason.UNAVAILABLE)


#: Statuses an Enroll is retried on (with its request id, so a retry never adds faces twice).
RETRY_STATUSES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_ERRORS: dict[grpc.StatusCode, type[FaceSearchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def error_reason(err: grpc.RpcError) -> str | None:
    """The ErrorInfo ``reason`` of a failed call, if the server sent one."""
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415 - optional dependency
            except ImportError:
                return None
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return None


def to_error(err: grpc.RpcError) -> FaceSearchError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    if code not in _ERRORS:
        message = f"{code.name}: {message}"
    return reported_error(code, message or code.name, error_reason(err))


def reported_error(status: grpc.StatusCode, message: str, reason: str | None) -> FaceSearchError:
    """The error a server reported: its class from ``status``, and ``reason`` as sent.

    A reason that is not a :class:`Reason` member (a newer server's) is kept verbatim rather
    than refused; no reason gives the class's default (the status's name for :class:`RpcFailedError`).
    """
    known = reason if reason in Reason.__members__ else None
    cls = _ERRORS.get(status)
    if status == grpc.StatusCode.UNAVAILABLE:
        error: FaceSearchError = ServerUnavailableError(message, reason=known)
    elif cls is None:
        error = RpcFailedError(message, status=status, reason=known)
    else:
        error = cls(message, reason=known)
    if reason and known is None:
        error.reason = reason
    return error


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScoreDetails:
    """normalised_score = identity_similarity - (probe_cohort_mean + identity_cohort_mean) / 2 (None: left out)."""

    identity_similarity: float  # the identity's template-rule score
    probe_cohort_mean: float | None
    identity_cohort_mean: float | None


@dataclass(frozen=True, slots=True)
class Candidate:
    identity_id: str
    name: str
    similarity: float  # cosine with the identity's best face, higher = more alike
    face_id: str
    normalised_score: float | None = None  # the open-set decision score (None: unavailable)
    details: ScoreDetails | None = None


@dataclass(frozen=True, slots=True)
class DecisionThreshold:
    """The threshold a decision used and why."""

    kind: str  # min_similarity | max_fmr | max_fpir | default
    value: float  # a match needs a score >= value
    score_kind: str  # raw (Candidate.similarity) | normalised (Candidate.normalised_score)
    gallery_size: int
    fmr: float | None  # per-comparison false-match rate it stands for (None: uncalibrated)
    fpir: float | None  # false-positive identification rate at gallery_size (None: uncalibrated)
    capped: bool  # the rate asked for is below what the calibration measured
    reason: str


@dataclass(frozen=True, slots=True)
class FaceResult:
    box: Box  # (x1, y1, x2, y2) pixels
    detection_score: float
    landmarks: list[tuple[float, float]]
    face_size: float
    blur: float
    match: Candidate | None = None  # None: unknown
    candidates: list[Candidate] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DetectionScope:
    """What the server's detector searched in a photo: faces down to ``min_face_px`` (a box side, in
    the photo's pixels); ``limited`` when its detection budget made that larger than its default."""

    min_face_px: int
    scanned_pixels: int
    limited: bool


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    faces: list[FaceResult]
    threshold: DecisionThreshold
    index_version: str
    width: int
    height: int
    detection: DetectionScope | None = None  # None: a server that does not say


@dataclass(frozen=True, slots=True)
class DetectResult:
    faces: list[FaceResult]
    width: int
    height: int
    detection: DetectionScope | None = None


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One reply of :meth:`FaceSearchClient.identify_stream`: a result or an error."""

    tag: str
    result: IdentifyResult | None
    error: FaceSearchError | None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    decision: str  # SAME | DIFFERENT | NO_FACE_IN_IMAGE | NO_FACE_IN_REFERENCE
    same: bool
    similarity: float
    min_similarity: float
    reference_face_id: str
    threshold: DecisionThreshold | None = None


@dataclass(frozen=True, slots=True)
class EnrollImage:
    index: int
    accepted: bool
    face_id: str
    reject_reason: str  # "" when accepted
    message: str
    detection: DetectionScope | None = None


@dataclass(frozen=True, slots=True)
class EnrollResult:
    identity_id: str
    created: bool
    images: list[EnrollImage]
    face_ids: list[str]
    face_count: int


@dataclass(frozen=True, slots=True)
class EnrolledFace:
    face_id: str
    source: str
    box: Box | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Identity:
    identity_id: str
    name: str
    metadata: dict[str, str]
    face_count: int
    faces: list[EnrolledFace] = field(default_factory=list)


def read_photo(photo: Photo) -> bytes:
    return photo if isinstance(photo, bytes) else Path(photo).read_bytes()


def _face(f: pb.DetectedFace) -> FaceResult:
    b = f.box
    return FaceResult(
        (b.x1, b.y1, b.x2, b.y2),
        f.detection_score,
        [(p.x, p.y) for p in f.landmarks],
        f.quality.face_size,
        f.quality.blur,
    )


def _opt(message: Any, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None


def _candidate(c: pb.Candidate) -> Candidate:
    d = c.score_details
    details = (
        ScoreDetails(d.identity_similarity, _opt(d, "probe_cohort_mean"), _opt(d, "identity_cohort_mean"))
        if c.HasField("score_details")
        else None
    )
    return Candidate(c.identity_id, c.name, c.similarity, c.face_id, _opt(c, "normalised_score"), details)


_THRESHOLD_KINDS = {
    pb.THRESHOLD_KIND_MIN_SIMILARITY: "min_similarity",
    pb.THRESHOLD_KIND_MAX_FMR: "max_fmr",
    pb.THRESHOLD_KIND_MAX_FPIR: "max_fpir",
    pb.THRESHOLD_KIND_DEFAULT: "default",
}
_SCORE_KINDS = {pb.SCORE_KIND_RAW: "raw", pb.SCORE_KIND_NORMALISED: "normalised"}


def _threshold(t: pb.DecisionThreshold) -> DecisionThreshold:
    return DecisionThreshold(
        _THRESHOLD_KINDS.get(t.kind, "unspecified"),
        t.value,
        _SCORE_KINDS.get(t.score_kind, "raw"),
        int(t.gallery_size),
        _opt(t, "fmr"),
        _opt(t, "fpir"),
        t.capped,
        t.reason,
    )


def _scope(message: Any) -> DetectionScope | None:
    """The ``detection`` field of a reply, None when the server did not set it."""
    if not message.HasField("detection"):
        return None
    d = message.detection
    return DetectionScope(int(d.min_face_px), int(d.scanned_pixels), bool(d.limited))


def _identify_result(r: pb.IdentifyResponse) -> IdentifyResult:
    faces = []
    for f in r.faces:
        base = _face(f.face)
        faces.append(
            FaceResult(
                base.box,
                base.detection_score,
                base.landmarks,
                base.face_size,
                base.blur,
                _candidate(f.match) if f.HasField("match") else None,
                [_candidate(c) for c in f.candidates],
            )
        )
    return IdentifyResult(faces, _threshold(r.threshold), r.index_version, r.image_width, r.image_height, _scope(r))


def _identity(r: pb.Identity) -> Identity:
    faces = [
        EnrolledFace(
            f.face_id, f.source, (f.box.x1, f.box.y1, f.box.x2, f.box.y2) if f.HasField("box") else None, f.created_at
        )
        for f in r.faces
    ]
    return Identity(r.identity_id, r.name, dict(r.metadata), r.face_count, faces)


def channel_target(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target and channel options for ``target``: one ``HOST:PORT`` (or any gRPC target URI) as
    it is; several, comma-separated (``10.0.0.1:50051,10.0.0.2:50051``, the replicas of one gallery),
    become one static ``ipv4:///``/``ipv6:///`` target balanced by gRPC's ``round_robin`` policy: each
    call goes to the next replica that is up, and a replica that stops answering is skipped until it
    is back. Host names are resolved here, once (IPv4 first)."""
    parts = [p.strip() for p in target.split(",") if p.strip()]
    if len(parts) <= 1:
        return target, []
    v4: list[str] = []
    v6: list[str] = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit():
            raise InvalidInputError(f"target {part!r} of {target!r}: expected HOST:PORT", reason=Reason.BAD_CONFIG)
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as err:
                raise InvalidInputError(
                    f"target {part!r}: cannot resolve {host!r} ({err})", reason=Reason.BAD_CONFIG
                ) from None
            addr = ipaddress.ip_address(sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0][4][0])
        (v4 if addr.version == 4 else v6).append(f"{addr}:{port}" if addr.version == 4 else f"[{addr}]:{port}")
    if v4 and v6:
        raise InvalidInputError(
            f"targets {target!r} mix IPv4 and IPv6 addresses: use one family", reason=Reason.BAD_CONFIG
        )
    uri = f"ipv4:///{','.join(v4)}" if v4 else f"ipv6:///{','.join(v6)}"
    return uri, [("grpc.lb_policy_name", "round_robin")]


class FaceSearchClient:
    """A connection to one server, or to several replicas of one gallery (``target`` comma-separated,
    balanced round-robin: :func:`channel_target`). Thread-safe; reuse it (channels are expensive to
    create)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: bool = False,
        ca_cert: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        server_name: str | None = None,
        timeout: float | None = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        enroll_retries: int = 3,
        retry_backoff_s: float = 0.5,
    ) -> None:
        channel_uri, balancing = channel_target(target)
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *balancing,
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls or ca_cert or client_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca_cert.read_bytes() if ca_cert else None,
                private_key=client_key.read_bytes() if client_key else None,
                certificate_chain=client_cert.read_bytes() if client_cert else None,
            )
            self._channel = grpc.secure_channel(channel_uri, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(channel_uri, options=options)
        self._stub = pb_grpc.FaceSearchStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.target = target
        self.enroll_retries = max(0, enroll_retries)  # retries of an Enroll on UNAVAILABLE / DEADLINE_EXCEEDED
        self.retry_backoff_s = retry_backoff_s  # first wait; doubled per retry (with jitter), at most 8 s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FaceSearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise to_error(err) from None

    def _retrying(self, method: Any, request: Any) -> Any:
        """An idempotent call, retried on UNAVAILABLE / DEADLINE_EXCEEDED (``enroll_retries`` times,
        exponential backoff with jitter); the last failure is raised."""
        for attempt in range(self.enroll_retries + 1):
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
                if code not in RETRY_STATUSES or attempt == self.enroll_retries:
                    raise to_error(err) from None
            wait = min(8.0, self.retry_backoff_s * 2**attempt)
            time.sleep(wait * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    # -- calls -------------------------------------------------------------------------------
    def identify(
        self,
        image: Photo,
        *,
        top_k: int = 5,
        min_similarity: float | None = None,
        largest_only: bool = False,
        max_fpir: float | None = None,
        max_fmr: float | None = None,
        min_face_px: int | None = None,
    ) -> IdentifyResult:
        """Faces of ``image`` with their top-k identities and the decision.

        Instead of ``min_similarity`` (a raw cosine): ``max_fpir``, the rate of people who are
        not enrolled that may be matched to someone, and/or ``max_fmr``, the false-match rate
        per comparison; the server turns them into a threshold for the current gallery size
        (needs a calibrated model bundle). ``result.threshold`` says what was applied and why.
        ``result.detection`` says the smallest face searched; ``min_face_px`` asks for smaller
        ones (up to the server's maximum cost, else ``MIN_FACE_TOO_SMALL``).
        """
        req = _identify_request(read_photo(image), top_k, min_similarity, largest_only, max_fpir, max_fmr, min_face_px)
        return _identify_result(self._call(self._stub.Identify, req))

    def identify_stream(
        self,
        items: Iterable[tuple[str, Photo]],
        *,
        top_k: int = 5,
        min_similarity: float | None = None,
        largest_only: bool = False,
        max_fpir: float | None = None,
        max_fmr: float | None = None,
        timeout: float | None = None,
        min_face_px: int | None = None,
    ) -> Iterator[StreamItem]:
        """Identify many photos over one StreamIdentify call; yields in input order.

        Photos are read lazily, so a long list never sits in memory. ``timeout`` bounds the
        whole stream (default: none).
        """

        def requests() -> Iterator[pb.StreamIdentifyRequest]:
            for tag, photo in items:
                req = _identify_request(
                    read_photo(photo), top_k, min_similarity, largest_only, max_fpir, max_fmr, min_face_px
                )
                yield pb.StreamIdentifyRequest(tag=tag, request=req)

        try:
            for reply in self._stub.StreamIdentify(requests(), timeout=timeout, metadata=self._metadata):
                if reply.HasField("error"):
                    status = _status_by_number(reply.error.code)
                    err = reported_error(status, reply.error.message, reply.error.reason)
                    yield StreamItem(reply.tag, None, err)
                else:
                    yield StreamItem(reply.tag, _identify_result(reply.result), None)
        except grpc.RpcError as err:
            raise to_error(err) from None

    def verify(
        self,
        image: Photo,
        *,
        reference_image: Photo | None = None,
        identity_id: str | None = None,
        min_similarity: float | None = None,
        max_fmr: float | None = None,
    ) -> VerifyResult:
        if (reference_image is None) == (identity_id is None):
            raise InvalidInputError("verify: give exactly one of reference_image and identity_id")
        req = pb.VerifyRequest(image=read_photo(image))
        if reference_image is not None:
            req.reference_image = read_photo(reference_image)
        else:
            req.identity_id = str(identity_id)
        if min_similarity is not None:
            req.min_similarity = min_similarity
        if max_fmr is not None:
            req.max_false_match_rate = max_fmr
        r = self._call(self._stub.Verify, req)
        return VerifyResult(
            pb.VerifyDecision.Name(r.decision),
            r.same,
            r.similarity,
            r.min_similarity,
            r.reference_face_id,
            _threshold(r.threshold) if r.HasField("threshold") else None,
        )

    def detect(self, image: Photo, *, largest_only: bool = False, min_face_px: int | None = None) -> list[FaceResult]:
        """The faces of ``image`` (:meth:`detect_result` also says the photo's size and what was searched)."""
        return self.detect_result(image, largest_only=largest_only, min_face_px=min_face_px).faces

    def detect_result(
        self, image: Photo, *, largest_only: bool = False, min_face_px: int | None = None
    ) -> DetectResult:
        req = pb.DetectRequest(image=read_photo(image), faces=pb.LARGEST_FACE if largest_only else pb.ALL_FACES)
        if min_face_px is not None:
            req.min_face_px = min_face_px
        r = self._call(self._stub.Detect, req)
        return DetectResult([_face(f) for f in r.faces], r.image_width, r.image_height, _scope(r))

    def enroll(
        self,
        identity_id: str,
        images: Sequence[Photo],
        *,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        create_only: bool = False,
        use_largest_face: bool = False,
        sources: Sequence[str] | None = None,
        min_face_px: int | None = None,
        append: bool = False,
        request_id: str | None = None,
    ) -> EnrollResult:
        """Enroll the faces of ``images`` into ``identity_id`` (created when new; an existing one
        needs ``append``, else :class:`AlreadyExistsError` ``IDENTITY_EXISTS``).

        ``request_id`` (default: a fresh UUID) makes the call idempotent: it is retried on
        UNAVAILABLE and DEADLINE_EXCEEDED with the same id, and a retry of an enrollment the server
        already made returns that first result. Pass your own id to retry across processes.
        """
        srcs = list(sources) if sources is not None else [str(p) if isinstance(p, str | Path) else "" for p in images]
        req = pb.EnrollRequest(
            identity_id=identity_id,
            display_name=name or "",
            metadata=metadata or {},
            images=[pb.EnrollImage(image=read_photo(p), source=s) for p, s in zip(images, srcs, strict=True)],
            create_only=create_only,
            use_largest_face=use_largest_face,
            append=append,
            request_id=request_id or str(uuid.uuid4()),
        )
        if min_face_px is not None:
            req.min_face_px = min_face_px
        r = self._retrying(self._stub.Enroll, req)
        results = [
            EnrollImage(
                x.image_index,
                x.accepted,
                x.face_id,
                pb.RejectReason.Name(x.reject_reason) if x.reject_reason else "",
                x.message,
                _scope(x),
            )
            for x in r.results
        ]
        return EnrollResult(r.identity_id, r.created, results, list(r.face_ids), r.face_count)

    def delete_identity(self, identity_id: str) -> int:
        return int(
            self._call(self._stub.DeleteIdentity, pb.DeleteIdentityRequest(identity_id=identity_id)).faces_deleted
        )

    def delete_faces(self, face_ids: Sequence[str]) -> int:
        return int(self._call(self._stub.DeleteFaces, pb.DeleteFacesRequest(face_ids=list(face_ids))).faces_deleted)

    def get_identity(self, identity_id: str, *, include_faces: bool = False) -> Identity:
        return _identity(
            self._call(
                self._stub.GetIdentity, pb.GetIdentityRequest(identity_id=identity_id, include_faces=include_faces)
            )
        )

    def list_page(self, page_size: int = 100, page_token: str = "") -> tuple[list[Identity], str]:
        r = self._call(self._stub.ListIdentities, pb.ListIdentitiesRequest(page_size=page_size, page_token=page_token))
        return [_identity(i) for i in r.identities], r.next_page_token

    def list_identities(self, page_size: int = 100) -> Iterator[Identity]:
        """Every identity, in id order, fetching a page at a time."""
        token = ""
        while True:
            page, token = self.list_page(page_size, token)
            yield from page
            if not token:
                return

    def stats(self) -> dict[str, Any]:
        r = self._call(self._stub.GetStats, pb.GetStatsRequest())
        return {f.name: getattr(r, f.name) for f in r.DESCRIPTOR.fields}

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """``SERVING``, ``NOT_SERVING``, ... of the standard health service."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415 - only for this call

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise to_error(err) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))


def _identify_request(  # noqa: PLR0917
    image: bytes,
    top_k: int,
    min_similarity: float | None,
    largest_only: bool,
    max_fpir: float | None = None,
    max_fmr: float | None = None,
    min_face_px: int | None = None,
) -> pb.IdentifyRequest:
    req = pb.IdentifyRequest(image=image, top_k=top_k, faces=pb.LARGEST_FACE if largest_only else pb.ALL_FACES)
    if min_similarity is not None:
        req.min_similarity = min_similarity
    if max_fpir is not None:
        req.max_false_positive_identification_rate = max_fpir
    if max_fmr is not None:
        req.max_false_match_rate = max_fmr
    if min_face_px is not None:
        req.min_face_px = min_face_px
    return req


def _status_by_number(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
