from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaceSelection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACE_SELECTION_UNSPECIFIED: _ClassVar[FaceSelection]
    ALL_FACES: _ClassVar[FaceSelection]
    LARGEST_FACE: _ClassVar[FaceSelection]

class ThresholdKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THRESHOLD_KIND_UNSPECIFIED: _ClassVar[ThresholdKind]
    THRESHOLD_KIND_MIN_SIMILARITY: _ClassVar[ThresholdKind]
    THRESHOLD_KIND_MAX_FMR: _ClassVar[ThresholdKind]
    THRESHOLD_KIND_MAX_FPIR: _ClassVar[ThresholdKind]
    THRESHOLD_KIND_DEFAULT: _ClassVar[ThresholdKind]

class ScoreKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_KIND_UNSPECIFIED: _ClassVar[ScoreKind]
    SCORE_KIND_RAW: _ClassVar[ScoreKind]
    SCORE_KIND_NORMALISED: _ClassVar[ScoreKind]

class VerifyDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFY_DECISION_UNSPECIFIED: _ClassVar[VerifyDecision]
    SAME: _ClassVar[VerifyDecision]
    DIFFERENT: _ClassVar[VerifyDecision]
    NO_FACE_IN_IMAGE: _ClassVar[VerifyDecision]
    NO_FACE_IN_REFERENCE: _ClassVar[VerifyDecision]

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    NO_FACE: _ClassVar[RejectReason]
    MULTIPLE_FACES: _ClassVar[RejectReason]
    FACE_TOO_SMALL: _ClassVar[RejectReason]
    FACE_TOO_BLURRY: _ClassVar[RejectReason]
FACE_SELECTION_UNSPECIFIED: FaceSelection
ALL_FACES: FaceSelection
LARGEST_FACE: FaceSelection
THRESHOLD_KIND_UNSPECIFIED: ThresholdKind
THRESHOLD_KIND_MIN_SIMILARITY: ThresholdKind
THRESHOLD_KIND_MAX_FMR: ThresholdKind
THRESHOLD_KIND_MAX_FPIR: ThresholdKind
THRESHOLD_KIND_DEFAULT: ThresholdKind
SCORE_KIND_UNSPECIFIED: ScoreKind
SCORE_KIND_RAW: ScoreKind
SCORE_KIND_NORMALISED: ScoreKind
VERIFY_DECISION_UNSPECIFIED: VerifyDecision
SAME: VerifyDecision
DIFFERENT: VerifyDecision
NO_FACE_IN_IMAGE: VerifyDecision
NO_FACE_IN_REFERENCE: VerifyDecision
REJECT_REASON_UNSPECIFIED: RejectReason
NO_FACE: RejectReason
MULTIPLE_FACES: RejectReason
FACE_TOO_SMALL: RejectReason
FACE_TOO_BLURRY: RejectReason

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class FaceQuality(_message.Message):
    __slots__ = ("face_size", "blur")
    FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLUR_FIELD_NUMBER: _ClassVar[int]
    face_size: float
    blur: float
    def __init__(self, face_size: _Optional[float] = ..., blur: _Optional[float] = ...) -> None: ...

class DetectedFace(_message.Message):
    __slots__ = ("box", "detection_score", "landmarks", "quality")
    BOX_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    box: Box
    detection_score: float
    landmarks: _containers.RepeatedCompositeFieldContainer[Point]
    quality: FaceQuality
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., detection_score: _Optional[float] = ..., landmarks: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., quality: _Optional[_Union[FaceQuality, _Mapping]] = ...) -> None: ...

class DetectionScope(_message.Message):
    __slots__ = ("min_face_px", "scanned_pixels", "limited")
    MIN_FACE_PX_FIELD_NUMBER: _ClassVar[int]
    SCANNED_PIXELS_FIELD_NUMBER: _ClassVar[int]
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    min_face_px: int
    scanned_pixels: int
    limited: bool
    def __init__(self, min_face_px: _Optional[int] = ..., scanned_pixels: _Optional[int] = ..., limited: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("identity_id", "name", "similarity", "face_id", "normalised_score", "score_details")
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    NORMALISED_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORE_DETAILS_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    name: str
    similarity: float
    face_id: str
    normalised_score: float
    score_details: ScoreDetails
    def __init__(self, identity_id: _Optional[str] = ..., name: _Optional[str] = ..., similarity: _Optional[float] = ..., face_id: _Optional[str] = ..., normalised_score: _Optional[float] = ..., score_details: _Optional[_Union[ScoreDetails, _Mapping]] = ...) -> None: ...

class ScoreDetails(_message.Message):
    __slots__ = ("identity_similarity", "probe_cohort_mean", "identity_cohort_mean")
    IDENTITY_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PROBE_COHORT_MEAN_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_COHORT_MEAN_FIELD_NUMBER: _ClassVar[int]
    identity_similarity: float
    probe_cohort_mean: float
    identity_cohort_mean: float
    def __init__(self, identity_similarity: _Optional[float] = ..., probe_cohort_mean: _Optional[float] = ..., identity_cohort_mean: _Optional[float] = ...) -> None: ...

class DecisionThreshold(_message.Message):
    __slots__ = ("kind", "value", "score_kind", "gallery_size", "fmr", "fpir", "capped", "reason")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORE_KIND_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    FMR_FIELD_NUMBER: _ClassVar[int]
    FPIR_FIELD_NUMBER: _ClassVar[int]
    CAPPED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: ThresholdKind
    value: float
    score_kind: ScoreKind
    gallery_size: int
    fmr: float
    fpir: float
    capped: bool
    reason: str
    def __init__(self, kind: _Optional[_Union[ThresholdKind, str]] = ..., value: _Optional[float] = ..., score_kind: _Optional[_Union[ScoreKind, str]] = ..., gallery_size: _Optional[int] = ..., fmr: _Optional[float] = ..., fpir: _Optional[float] = ..., capped: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("image", "top_k", "min_similarity", "faces", "max_false_positive_identification_rate", "max_false_match_rate", "min_face_px")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    MAX_FALSE_POSITIVE_IDENTIFICATION_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_FALSE_MATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_PX_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    top_k: int
    min_similarity: float
    faces: FaceSelection
    max_false_positive_identification_rate: float
    max_false_match_rate: float
    min_face_px: int
    def __init__(self, image: _Optional[bytes] = ..., top_k: _Optional[int] = ..., min_similarity: _Optional[float] = ..., faces: _Optional[_Union[FaceSelection, str]] = ..., max_false_positive_identification_rate: _Optional[float] = ..., max_false_match_rate: _Optional[float] = ..., min_face_px: _Optional[int] = ...) -> None: ...

class IdentifiedFace(_message.Message):
    __slots__ = ("face", "match", "candidates")
    FACE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    face: DetectedFace
    match: Candidate
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, face: _Optional[_Union[DetectedFace, _Mapping]] = ..., match: _Optional[_Union[Candidate, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("faces", "index_version", "image_width", "image_height", "threshold", "detection", "faces_found")
    FACES_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[IdentifiedFace]
    index_version: str
    image_width: int
    image_height: int
    threshold: DecisionThreshold
    detection: DetectionScope
    faces_found: int
    def __init__(self, faces: _Optional[_Iterable[_Union[IdentifiedFace, _Mapping]]] = ..., index_version: _Optional[str] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., threshold: _Optional[_Union[DecisionThreshold, _Mapping]] = ..., detection: _Optional[_Union[DetectionScope, _Mapping]] = ..., faces_found: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("image", "reference_image", "identity_id", "min_similarity", "max_false_match_rate")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MAX_FALSE_MATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    reference_image: bytes
    identity_id: str
    min_similarity: float
    max_false_match_rate: float
    def __init__(self, image: _Optional[bytes] = ..., reference_image: _Optional[bytes] = ..., identity_id: _Optional[str] = ..., min_similarity: _Optional[float] = ..., max_false_match_rate: _Optional[float] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("decision", "same", "similarity", "min_similarity", "face", "reference_face", "reference_face_id", "threshold")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SAME_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FACE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FACE_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    decision: VerifyDecision
    same: bool
    similarity: float
    min_similarity: float
    face: DetectedFace
    reference_face: DetectedFace
    reference_face_id: str
    threshold: DecisionThreshold
    def __init__(self, decision: _Optional[_Union[VerifyDecision, str]] = ..., same: _Optional[bool] = ..., similarity: _Optional[float] = ..., min_similarity: _Optional[float] = ..., face: _Optional[_Union[DetectedFace, _Mapping]] = ..., reference_face: _Optional[_Union[DetectedFace, _Mapping]] = ..., reference_face_id: _Optional[str] = ..., threshold: _Optional[_Union[DecisionThreshold, _Mapping]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("image", "faces", "min_face_px")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_PX_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    faces: FaceSelection
    min_face_px: int
    def __init__(self, image: _Optional[bytes] = ..., faces: _Optional[_Union[FaceSelection, str]] = ..., min_face_px: _Optional[int] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("faces", "image_width", "image_height", "detection", "faces_found")
    FACES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[DetectedFace]
    image_width: int
    image_height: int
    detection: DetectionScope
    faces_found: int
    def __init__(self, faces: _Optional[_Iterable[_Union[DetectedFace, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., detection: _Optional[_Union[DetectionScope, _Mapping]] = ..., faces_found: _Optional[int] = ...) -> None: ...

class EnrollImage(_message.Message):
    __slots__ = ("image", "source")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    source: str
    def __init__(self, image: _Optional[bytes] = ..., source: _Optional[str] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("identity_id", "display_name", "metadata", "images", "create_only", "use_largest_face", "min_face_px", "request_id", "append")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    USE_LARGEST_FACE_FIELD_NUMBER: _ClassVar[int]
    MIN_FACE_PX_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    display_name: str
    metadata: _containers.ScalarMap[str, str]
    images: _containers.RepeatedCompositeFieldContainer[EnrollImage]
    create_only: bool
    use_largest_face: bool
    min_face_px: int
    request_id: str
    append: bool
    def __init__(self, identity_id: _Optional[str] = ..., display_name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., images: _Optional[_Iterable[_Union[EnrollImage, _Mapping]]] = ..., create_only: _Optional[bool] = ..., use_largest_face: _Optional[bool] = ..., min_face_px: _Optional[int] = ..., request_id: _Optional[str] = ..., append: _Optional[bool] = ...) -> None: ...

class EnrollResult(_message.Message):
    __slots__ = ("image_index", "accepted", "face_id", "reject_reason", "message", "face", "detection")
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    image_index: int
    accepted: bool
    face_id: str
    reject_reason: RejectReason
    message: str
    face: DetectedFace
    detection: DetectionScope
    def __init__(self, image_index: _Optional[int] = ..., accepted: _Optional[bool] = ..., face_id: _Optional[str] = ..., reject_reason: _Optional[_Union[RejectReason, str]] = ..., message: _Optional[str] = ..., face: _Optional[_Union[DetectedFace, _Mapping]] = ..., detection: _Optional[_Union[DetectionScope, _Mapping]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("identity_id", "created", "results", "face_ids", "face_count")
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    created: bool
    results: _containers.RepeatedCompositeFieldContainer[EnrollResult]
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    face_count: int
    def __init__(self, identity_id: _Optional[str] = ..., created: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[EnrollResult, _Mapping]]] = ..., face_ids: _Optional[_Iterable[str]] = ..., face_count: _Optional[int] = ...) -> None: ...

class DeleteIdentityRequest(_message.Message):
    __slots__ = ("identity_id",)
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    def __init__(self, identity_id: _Optional[str] = ...) -> None: ...

class DeleteIdentityResponse(_message.Message):
    __slots__ = ("faces_deleted",)
    FACES_DELETED_FIELD_NUMBER: _ClassVar[int]
    faces_deleted: int
    def __init__(self, faces_deleted: _Optional[int] = ...) -> None: ...

class DeleteFacesRequest(_message.Message):
    __slots__ = ("face_ids",)
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, face_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteFacesResponse(_message.Message):
    __slots__ = ("faces_deleted",)
    FACES_DELETED_FIELD_NUMBER: _ClassVar[int]
    faces_deleted: int
    def __init__(self, faces_deleted: _Optional[int] = ...) -> None: ...

class GetIdentityRequest(_message.Message):
    __slots__ = ("identity_id", "include_faces")
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FACES_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    include_faces: bool
    def __init__(self, identity_id: _Optional[str] = ..., include_faces: _Optional[bool] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("face_id", "source", "box", "detection_score", "quality", "created_at")
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    face_id: str
    source: str
    box: Box
    detection_score: float
    quality: FaceQuality
    created_at: float
    def __init__(self, face_id: _Optional[str] = ..., source: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., detection_score: _Optional[float] = ..., quality: _Optional[_Union[FaceQuality, _Mapping]] = ..., created_at: _Optional[float] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("identity_id", "name", "metadata", "face_count", "faces")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    identity_id: str
    name: str
    metadata: _containers.ScalarMap[str, str]
    face_count: int
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    def __init__(self, identity_id: _Optional[str] = ..., name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., face_count: _Optional[int] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ...) -> None: ...

class ListIdentitiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIdentitiesResponse(_message.Message):
    __slots__ = ("identities", "next_page_token")
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[Identity]
    next_page_token: str
    def __init__(self, identities: _Optional[_Iterable[_Union[Identity, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("include_gallery_digest",)
    INCLUDE_GALLERY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    include_gallery_digest: bool
    def __init__(self, include_gallery_digest: _Optional[bool] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("model_id", "contract_id", "embedding_dim", "index_version", "index_ntotal", "live_faces", "tombstones", "faces", "identities", "default_min_similarity", "threshold_note", "index_factory", "enroll_min_face_size", "enroll_min_blur", "queue_depth", "default_threshold", "cohort_k", "template_rule", "default_fpir", "security_warnings", "writes_degraded", "writes_reason", "write_failures", "enroll_request_ids", "max_faces", "lanes", "gallery_digest")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_NTOTAL_FIELD_NUMBER: _ClassVar[int]
    LIVE_FACES_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_NOTE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FACTORY_FIELD_NUMBER: _ClassVar[int]
    ENROLL_MIN_FACE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENROLL_MIN_BLUR_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COHORT_K_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_RULE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FPIR_FIELD_NUMBER: _ClassVar[int]
    SECURITY_WARNINGS_FIELD_NUMBER: _ClassVar[int]
    WRITES_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    WRITES_REASON_FIELD_NUMBER: _ClassVar[int]
    WRITE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    ENROLL_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    LANES_FIELD_NUMBER: _ClassVar[int]
    GALLERY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    contract_id: str
    embedding_dim: int
    index_version: str
    index_ntotal: int
    live_faces: int
    tombstones: int
    faces: int
    identities: int
    default_min_similarity: float
    threshold_note: str
    index_factory: str
    enroll_min_face_size: float
    enroll_min_blur: float
    queue_depth: int
    default_threshold: DecisionThreshold
    cohort_k: int
    template_rule: str
    default_fpir: float
    security_warnings: _containers.RepeatedScalarFieldContainer[str]
    writes_degraded: bool
    writes_reason: str
    write_failures: int
    enroll_request_ids: int
    max_faces: int
    lanes: _containers.RepeatedCompositeFieldContainer[AdmissionLane]
    gallery_digest: GalleryDigest
    def __init__(self, model_id: _Optional[str] = ..., contract_id: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., index_version: _Optional[str] = ..., index_ntotal: _Optional[int] = ..., live_faces: _Optional[int] = ..., tombstones: _Optional[int] = ..., faces: _Optional[int] = ..., identities: _Optional[int] = ..., default_min_similarity: _Optional[float] = ..., threshold_note: _Optional[str] = ..., index_factory: _Optional[str] = ..., enroll_min_face_size: _Optional[float] = ..., enroll_min_blur: _Optional[float] = ..., queue_depth: _Optional[int] = ..., default_threshold: _Optional[_Union[DecisionThreshold, _Mapping]] = ..., cohort_k: _Optional[int] = ..., template_rule: _Optional[str] = ..., default_fpir: _Optional[float] = ..., security_warnings: _Optional[_Iterable[str]] = ..., writes_degraded: _Optional[bool] = ..., writes_reason: _Optional[str] = ..., write_failures: _Optional[int] = ..., enroll_request_ids: _Optional[int] = ..., max_faces: _Optional[int] = ..., lanes: _Optional[_Iterable[_Union[AdmissionLane, _Mapping]]] = ..., gallery_digest: _Optional[_Union[GalleryDigest, _Mapping]] = ...) -> None: ...

class GalleryDigest(_message.Message):
    __slots__ = ("faces", "identities", "faces_sha256", "open_set_identities", "open_set_failure", "identity_ids", "cohort_means", "template_projections")
    FACES_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    FACES_SHA256_FIELD_NUMBER: _ClassVar[int]
    OPEN_SET_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    OPEN_SET_FAILURE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_IDS_FIELD_NUMBER: _ClassVar[int]
    COHORT_MEANS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_PROJECTIONS_FIELD_NUMBER: _ClassVar[int]
    faces: int
    identities: int
    faces_sha256: str
    open_set_identities: int
    open_set_failure: str
    identity_ids: _containers.RepeatedScalarFieldContainer[str]
    cohort_means: _containers.RepeatedScalarFieldContainer[float]
    template_projections: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, faces: _Optional[int] = ..., identities: _Optional[int] = ..., faces_sha256: _Optional[str] = ..., open_set_identities: _Optional[int] = ..., open_set_failure: _Optional[str] = ..., identity_ids: _Optional[_Iterable[str]] = ..., cohort_means: _Optional[_Iterable[float]] = ..., template_projections: _Optional[_Iterable[float]] = ...) -> None: ...

class AdmissionLane(_message.Message):
    __slots__ = ("name", "depth", "peak_depth", "bound", "refused", "busy_threads")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    PEAK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    BUSY_THREADS_FIELD_NUMBER: _ClassVar[int]
    name: str
    depth: int
    peak_depth: int
    bound: int
    refused: int
    busy_threads: int
    def __init__(self, name: _Optional[str] = ..., depth: _Optional[int] = ..., peak_depth: _Optional[int] = ..., bound: _Optional[int] = ..., refused: _Optional[int] = ..., busy_threads: _Optional[int] = ...) -> None: ...

class StreamIdentifyRequest(_message.Message):
    __slots__ = ("tag", "request")
    TAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    tag: str
    request: IdentifyRequest
    def __init__(self, tag: _Optional[str] = ..., request: _Optional[_Union[IdentifyRequest, _Mapping]] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StreamIdentifyResponse(_message.Message):
    __slots__ = ("sequence", "tag", "result", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    tag: str
    result: IdentifyResponse
    error: RequestError
    def __init__(self, sequence: _Optional[int] = ..., tag: _Optional[str] = ..., result: _Optional[_Union[IdentifyResponse, _Mapping]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ...) -> None: ...
