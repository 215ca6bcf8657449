"""Protobuf <-> domain: the only server module that knows the wire types (besides the servicer).

Requests are validated here (fields, sizes, identity ids, page tokens) and become the
service's frozen query types; results become response messages.

Every string, bytes and repeated field of a request is bounded (the constants below; the proto
documents each): over its bound is INVALID_ARGUMENT naming the field and the limit. Identity ids
given to Enroll must be printable: no code point of the Unicode categories in
:data:`FORBIDDEN_ID_CATEGORIES` (controls, format characters such as bidi overrides and zero-width
joiners, line/paragraph separators, private use, unassigned, surrogates). Ids used to look an
identity up are only length-checked, so an identity enrolled before the rule can still be deleted.

Scores leave the server rounded to :data:`SCORE_DECIMALS` decimals (similarities, normalised
scores and their parts, thresholds): exact similarities would let a caller steer a search for a
matching image. Rounding is monotone, so a matched score never shows below its threshold.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.errors import InvalidInputError, Reason
from facesearch.scoring.decision import DecisionThreshold, ScoredCandidate, ScoreKind, ThresholdKind, VerifyDecision
from facesearch.vision.detection_plan import DetectionPlan
from facesearch.vision.pipeline import Face
from server.engine import AnalyzedPhoto
from server.gallery import FaceView, IdentityView, check_request_id
from server.gallery_digest import GalleryDigest
from server.service import (
    DEFAULT_TOP_K,
    MAX_TOP_K,
    EnrollQuery,
    EnrollResult,
    IdentifyQuery,
    IdentifyResult,
    LaneStats,
    ServiceStats,
    VerifyQuery,
    VerifyResult,
)

MAX_IDENTITY_ID_BYTES = 256
MAX_NAME_BYTES = 1024
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 4096
MAX_METADATA_BYTES = 16 << 10
MAX_SOURCE_BYTES = 1024
MAX_TAG_BYTES = 1024
MAX_PAGE_TOKEN_BYTES = 1024
MAX_FACE_ID_BYTES = 64
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_DELETE_FACES = 1000
SCORE_DECIMALS = 3
#: Unicode categories an enrolled identity id may not hold: control, format (bidi controls, zero-width),
#: line and paragraph separators, private use, unassigned, surrogate.
FORBIDDEN_ID_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Cs"})


# -- validation ------------------------------------------------------------------------------
def _utf8_len(value: str, field: str, reason: Reason) -> int:
    try:
        return len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate (protobuf's Python runtime rejects most, not all)
        raise InvalidInputError(f"{field} is not valid UTF-8 (it holds a surrogate)", reason=reason) from None


def bounded(value: str, field: str, limit: int, reason: Reason = Reason.FIELD_TOO_LONG) -> str:
    """``value`` if it is at most ``limit`` bytes of UTF-8, else INVALID_ARGUMENT naming both."""
    n = _utf8_len(value, field, reason)
    if n > limit:
        raise InvalidInputError(f"{field} is {n} bytes, more than the limit of {limit} bytes", reason=reason)
    return value


def identity_id(value: str, field: str = "identity_id", *, new: bool = False) -> str:
    """An identity id: 1..256 bytes; with ``new`` (an id Enroll may create) printable characters only."""
    if not value:
        raise InvalidInputError(f"{field} is required", reason=Reason.BAD_IDENTITY_ID)
    bounded(value, field, MAX_IDENTITY_ID_BYTES, Reason.BAD_IDENTITY_ID)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInputError(f"{field} holds control characters", reason=Reason.BAD_IDENTITY_ID)
    if new:
        for i, c in enumerate(value):
            category = unicodedata.category(c)
            if category in FORBIDDEN_ID_CATEGORIES:
                name = unicodedata.name(c, "unnamed")
                raise InvalidInputError(
                    f"{field} holds U+{ord(c):04X} ({name}, category {category}) at character {i}: identity ids "
                    "may hold only printable characters (no control, bidi, zero-width, separator, private-use or "
                    "unassigned code points)",
                    reason=Reason.BAD_IDENTITY_ID,
                )
    return value


def image(value: bytes, field: str = "image") -> bytes:
    if not value:
        raise InvalidInputError(f"{field} is empty: send the photo's encoded bytes", reason=Reason.IMAGE_EMPTY)
    return value


def _threshold(message: object, field: str) -> float | None:
    return float(getattr(message, field)) if message.HasField(field) else None  # type: ignore[attr-defined]


def metadata(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_METADATA_KEYS:
        raise InvalidInputError(
            f"metadata has {len(values)} keys, at most {MAX_METADATA_KEYS}", reason=Reason.BAD_METADATA
        )
    total = 0
    for k, v in values.items():
        if not k:
            raise InvalidInputError("metadata has an empty key", reason=Reason.BAD_METADATA)
        total += len(bounded(k, "a metadata key", MAX_METADATA_KEY_BYTES, Reason.BAD_METADATA).encode())
        total += len(bounded(v, f"metadata[{k[:40]!r}]", MAX_METADATA_VALUE_BYTES, Reason.BAD_METADATA).encode())
    if total > MAX_METADATA_BYTES:
        raise InvalidInputError(
            f"metadata is {total} bytes, more than the limit of {MAX_METADATA_BYTES} bytes", reason=Reason.BAD_METADATA
        )
    return dict(values)


def stream_tag(value: str) -> str:
    """A StreamIdentify item's tag (at most :data:`MAX_TAG_BYTES`)."""
    return bounded(value, "tag", MAX_TAG_BYTES)


# -- requests --------------------------------------------------------------------------------
def identify_query(req: pb.IdentifyRequest) -> IdentifyQuery:
    top_k = req.top_k or DEFAULT_TOP_K
    if top_k > MAX_TOP_K:
        raise InvalidInputError(f"top_k must be 1..{MAX_TOP_K}, got {top_k}", reason=Reason.BAD_TOP_K)
    return IdentifyQuery(
        image(req.image),
        top_k,
        _threshold(req, "min_similarity"),
        largest_only(req.faces),
        max_fmr=_threshold(req, "max_false_match_rate"),
        max_fpir=_threshold(req, "max_false_positive_identification_rate"),
        min_face=min_face(req),
    )


def min_face(req: pb.IdentifyRequest | pb.DetectRequest | pb.EnrollRequest) -> int | None:
    """The request's ``min_face_px`` (None: unset); its lower bound and cost are checked per photo."""
    return int(req.min_face_px) if req.HasField("min_face_px") else None


def largest_only(selection: int) -> bool:
    if selection not in (pb.FACE_SELECTION_UNSPECIFIED, pb.ALL_FACES, pb.LARGEST_FACE):
        raise InvalidInputError(f"faces: unknown FaceSelection {selection}", reason=Reason.BAD_FACE_SELECTION)
    return selection == pb.LARGEST_FACE


def verify_query(req: pb.VerifyRequest) -> VerifyQuery:
    which = req.WhichOneof("reference")
    if which is None:
        raise InvalidInputError("set reference_image or identity_id", reason=Reason.NO_REFERENCE)
    ref_image = image(req.reference_image, "reference_image") if which == "reference_image" else None
    ident = identity_id(req.identity_id) if which == "identity_id" else None
    return VerifyQuery(
        image(req.image), ref_image, ident, _threshold(req, "min_similarity"), _threshold(req, "max_false_match_rate")
    )


def enroll_query(req: pb.EnrollRequest) -> EnrollQuery:
    bounded(req.display_name, "display_name", MAX_NAME_BYTES, Reason.BAD_NAME)
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in req.display_name):
        raise InvalidInputError("display_name holds control characters", reason=Reason.BAD_NAME)
    images = [
        (image(im.image, f"images[{i}].image"), bounded(im.source, f"images[{i}].source", MAX_SOURCE_BYTES))
        for i, im in enumerate(req.images)
    ]
    return EnrollQuery(
        identity_id(req.identity_id, new=True),
        req.display_name or None,
        metadata(dict(req.metadata)),
        images,
        req.create_only,
        req.use_largest_face,
        min_face(req),
        request_id=check_request_id(req.request_id),  # D1: idempotency key and explicit append
        append=req.append,
    )


def face_ids(req: pb.DeleteFacesRequest) -> list[str]:
    if not req.face_ids:
        raise InvalidInputError("face_ids is empty", reason=Reason.NO_FACE_IDS)
    if len(req.face_ids) > MAX_DELETE_FACES:
        raise InvalidInputError(f"at most {MAX_DELETE_FACES} face ids per call", reason=Reason.TOO_MANY_FACE_IDS)
    return [bounded(f, f"face_ids[{i}]", MAX_FACE_ID_BYTES) for i, f in enumerate(req.face_ids)]


def page(req: pb.ListIdentitiesRequest) -> tuple[str, int]:
    """``(after identity id, page size)`` from a list request."""
    size = req.page_size or DEFAULT_PAGE_SIZE
    if size > MAX_PAGE_SIZE:
        raise InvalidInputError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {size}", reason=Reason.BAD_PAGE_SIZE)
    return decode_page_token(req.page_token), size


def encode_page_token(after: str) -> str:
    raw = json.dumps({"v": 1, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    bounded(token, "page_token", MAX_PAGE_TOKEN_BYTES, Reason.BAD_PAGE_TOKEN)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("after"), str):
            raise ValueError("bad token")
        return str(data["after"])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError("page_token is not a token this server issued", reason=Reason.BAD_PAGE_TOKEN) from None


# -- responses -------------------------------------------------------------------------------
def detected_face(face: Face) -> pb.DetectedFace:
    x1, y1, x2, y2 = face.box
    return pb.DetectedFace(
        box=pb.Box(x1=x1, y1=y1, x2=x2, y2=y2),
        detection_score=face.score,
        landmarks=[pb.Point(x=float(x), y=float(y)) for x, y in face.landmarks],
        quality=pb.FaceQuality(face_size=face.quality.face_size, blur=face.quality.blur),
    )


def detection_scope(plan: DetectionPlan | None) -> pb.DetectionScope | None:
    """What the detector searched (None, so the field stays unset, when unknown)."""
    if plan is None:
        return None
    return pb.DetectionScope(min_face_px=plan.min_face_px, scanned_pixels=plan.pyramid_pixels, limited=plan.limited)


def score(value: float) -> float:
    """A score as replies show it: rounded to :data:`SCORE_DECIMALS` decimals."""
    return round(float(value), SCORE_DECIMALS)


def candidate(s: ScoredCandidate) -> pb.Candidate:
    out = pb.Candidate(
        identity_id=s.identity_id,
        name=s.name,
        similarity=score(s.similarity),
        face_id=s.face_id,
        score_details=pb.ScoreDetails(identity_similarity=score(s.identity_similarity)),
    )
    if s.normalised is not None:
        out.normalised_score = score(s.normalised)
    if s.probe_mean is not None:
        out.score_details.probe_cohort_mean = score(s.probe_mean)
    if s.identity_mean is not None:
        out.score_details.identity_cohort_mean = score(s.identity_mean)
    return out


_THRESHOLD_KINDS = {
    ThresholdKind.MIN_SIMILARITY: pb.THRESHOLD_KIND_MIN_SIMILARITY,
    ThresholdKind.MAX_FMR: pb.THRESHOLD_KIND_MAX_FMR,
    ThresholdKind.MAX_FPIR: pb.THRESHOLD_KIND_MAX_FPIR,
    ThresholdKind.DEFAULT: pb.THRESHOLD_KIND_DEFAULT,
}
_SCORE_KINDS = {ScoreKind.RAW: pb.SCORE_KIND_RAW, ScoreKind.NORMALISED: pb.SCORE_KIND_NORMALISED}
_VERIFY_DECISIONS = {
    VerifyDecision.SAME: pb.SAME,
    VerifyDecision.DIFFERENT: pb.DIFFERENT,
    VerifyDecision.NO_FACE_IN_IMAGE: pb.NO_FACE_IN_IMAGE,
    VerifyDecision.NO_FACE_IN_REFERENCE: pb.NO_FACE_IN_REFERENCE,
}


def decision_threshold(t: DecisionThreshold) -> pb.DecisionThreshold:
    out = pb.DecisionThreshold(
        kind=_THRESHOLD_KINDS[t.kind],
        value=score(t.value),
        score_kind=_SCORE_KINDS[t.score_kind],
        gallery_size=t.gallery_size,
        capped=t.capped,
        reason=t.reason,
    )
    if t.fmr is not None:
        out.fmr = t.fmr
    if t.fpir is not None:
        out.fpir = t.fpir
    return out


def identify_response(result: IdentifyResult) -> pb.IdentifyResponse:
    faces = []
    for f in result.faces:
        item = pb.IdentifiedFace(face=detected_face(f.face), candidates=[candidate(c) for c in f.candidates])
        if f.match is not None:
            item.match.CopyFrom(candidate(f.match))
        faces.append(item)
    return pb.IdentifyResponse(
        faces=faces,
        index_version=result.index_version,
        image_width=result.width,
        image_height=result.height,
        threshold=decision_threshold(result.threshold),
        detection=detection_scope(result.detection),
        faces_found=len(result.faces) if result.faces_found < 0 else result.faces_found,
    )


def detect_response(photo: AnalyzedPhoto) -> pb.DetectResponse:
    return pb.DetectResponse(
        faces=[detected_face(f) for f in photo.faces],
        image_width=photo.width,
        image_height=photo.height,
        detection=detection_scope(photo.plan),
        faces_found=photo.total_faces,
    )


def verify_response(result: VerifyResult) -> pb.VerifyResponse:
    out = pb.VerifyResponse(
        decision=_VERIFY_DECISIONS[result.decision],
        same=result.decision is VerifyDecision.SAME,
        similarity=score(result.similarity),
        min_similarity=score(result.threshold.value),
        reference_face_id=result.reference_face_id,
        threshold=decision_threshold(result.threshold),
    )
    if result.face is not None:
        out.face.CopyFrom(detected_face(result.face))
    if result.reference_face is not None:
        out.reference_face.CopyFrom(detected_face(result.reference_face))
    return out


def enroll_response(result: EnrollResult) -> pb.EnrollResponse:
    results = []
    for r in result.results:
        item = pb.EnrollResult(
            image_index=r.index,
            accepted=r.accepted,
            face_id=r.face_id,
            message=r.message,
            reject_reason=pb.RejectReason.Value(r.reject_reason or "REJECT_REASON_UNSPECIFIED"),
        )
        if r.face is not None:
            item.face.CopyFrom(detected_face(r.face))
        scope = detection_scope(r.detection)
        if scope is not None:
            item.detection.CopyFrom(scope)
        results.append(item)
    return pb.EnrollResponse(
        identity_id=result.identity_id,
        created=result.created,
        results=results,
        face_ids=result.face_ids,
        face_count=result.face_count,
    )


def face(view: FaceView) -> pb.Face:
    out = pb.Face(face_id=view.face_id, source=view.source, detection_score=view.det_score, created_at=view.created_at)
    if view.box is not None:
        x1, y1, x2, y2 = view.box
        out.box.CopyFrom(pb.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    if view.face_size is not None or view.blur is not None:
        out.quality.CopyFrom(pb.FaceQuality(face_size=view.face_size or 0.0, blur=view.blur or 0.0))
    return out


def identity(view: IdentityView, faces: list[FaceView] | None = None) -> pb.Identity:
    return pb.Identity(
        identity_id=view.identity_id,
        name=view.name,
        metadata=view.metadata,
        face_count=view.face_count,
        faces=[face(f) for f in faces or []],
    )


def list_response(views: list[IdentityView], more: bool) -> pb.ListIdentitiesResponse:
    token = encode_page_token(views[-1].identity_id) if more and views else ""
    return pb.ListIdentitiesResponse(identities=[identity(v) for v in views], next_page_token=token)


def stats(s: ServiceStats, model_id: str, contract_id: str, dim: int) -> pb.Stats:
    g = s.gallery
    out = pb.Stats(
        model_id=model_id,
        contract_id=contract_id,
        embedding_dim=dim,
        index_version=g.index_version,
        index_ntotal=g.index_ntotal,
        live_faces=g.live_faces,
        tombstones=g.tombstones,
        faces=g.faces,
        identities=g.identities,
        default_min_similarity=s.default_min_similarity,
        threshold_note=s.threshold_note,
        index_factory=g.index_factory,
        enroll_min_face_size=s.enroll_min_face_size,
        enroll_min_blur=s.enroll_min_blur,
        queue_depth=s.queue_depth,
        default_threshold=decision_threshold(s.default_threshold),
        cohort_k=s.cohort_k,
        template_rule=s.template_rule,
    )
    if s.default_fpir is not None:
        out.default_fpir = s.default_fpir
    out.max_faces = s.max_faces
    out.lanes.extend(admission_lane(name, lane) for name, lane in s.lanes.items())
    if s.writes is not None:  # D1: write health
        out.writes_degraded = s.writes.degraded
        out.writes_reason = s.writes.reason
        out.write_failures = s.writes.failures
        out.enroll_request_ids = s.writes.request_ids
    return out


def gallery_digest(d: GalleryDigest) -> pb.GalleryDigest:
    return pb.GalleryDigest(
        faces=d.faces,
        identities=d.identities,
        faces_sha256=d.faces_sha256,
        open_set_identities=d.open_set_identities,
        open_set_failure=d.open_set_failure,
        identity_ids=d.identity_ids,
        cohort_means=d.cohort_means,
        template_projections=d.template_projections,
    )


def admission_lane(name: str, lane: LaneStats) -> pb.AdmissionLane:
    return pb.AdmissionLane(
        name=name,
        depth=lane.depth,
        peak_depth=lane.peak_depth,
        bound=lane.bound,
        refused=lane.refused,
        busy_threads=lane.busy_threads,
    )
