"""The stable machine reasons of facesearch errors, declared once, each with its status code.

A reason is the ``reason`` of a :class:`~facesearch.errors.FaceSearchError`; over gRPC it is the
``reason`` of the call's google.rpc.ErrorInfo (domain ``facesearch.v1``) and of a StreamIdentify
``RequestError``. Clients branch on it; the message is for humans and may change.

* :class:`Reason` is a :class:`~enum.StrEnum`: a member *is* its wire string
  (``Reason.IMAGE_EMPTY == "IMAGE_EMPTY"``, and it prints, formats and serialises as that string).
  ``Reason(text)`` raises ``ValueError`` on a string that is not a reason, so a typo fails loudly.
* Each member carries the transport-neutral :class:`ErrorCode` it is sent with and a one-line
  meaning. ``ErrorCode`` names the canonical google.rpc codes; ``server/errors.py`` is the one
  place that maps them to ``grpc.StatusCode`` (this layer never imports grpc).
* The exception class decides the status a client sees (``FaceSearchError.code``); a reason's
  ``code`` is the code of the class that raises it, so the two agree. tests/unit/test_reasons.py
  checks every raise site; the one recorded exception is ``BAD_CONFIG``, which the server also
  raises as a ``PreconditionError`` when it refuses to start (never sent to a client).
* Reasons named after a status (``INVALID_ARGUMENT``, ``UNAVAILABLE``...) are the generic reason of
  an error class, or what the client reports when a call failed without a facesearch reason
  (every ``ErrorCode`` but OK has one). ``DEADLINE_EXCEEDED``, ``CANCELLED`` and
  ``SHUTTING_DOWN`` come from the server edge rather than from an exception class.
* Adding a member is compatible; renaming or removing one breaks clients. The proto's comments
  document some reasons; tests/unit/test_reasons.py checks that each exists here with the
  documented status.
"""

from __future__ import annotations

from enum import Enum, StrEnum, auto

__all__ = ["ErrorCode", "Reason"]


class ErrorCode(Enum):
    """Transport-neutral status codes, named as the canonical google.rpc codes (OK excluded)."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


# Short names for the table below (an Enum body turns every assignment into a member).
_INVALID = ErrorCode.INVALID_ARGUMENT
_NOT_FOUND = ErrorCode.NOT_FOUND
_EXISTS = ErrorCode.ALREADY_EXISTS
_PRECONDITION = ErrorCode.FAILED_PRECONDITION
_EXHAUSTED = ErrorCode.RESOURCE_EXHAUSTED
_UNAUTHENTICATED = ErrorCode.UNAUTHENTICATED
_DENIED = ErrorCode.PERMISSION_DENIED
_INTERNAL = ErrorCode.INTERNAL
_UNAVAILABLE = ErrorCode.UNAVAILABLE


class Reason(StrEnum):
    """A stable UPPER_SNAKE error reason: its wire string, its :class:`ErrorCode` and its meaning."""

    code: ErrorCode
    meaning: str

    def __new__(cls, value: str, code: ErrorCode = ErrorCode.UNKNOWN, meaning: str = "") -> Reason:
        # The defaults only let ``Reason("TEXT")`` (a lookup) type-check; every member sets both.
        member = str.__new__(cls, value)
        member._value_ = value
        member.code = code
        member.meaning = meaning
        return member

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name  # auto() is the member's own name: the wire string

    # -- generic reasons of the error classes, and a failed call's status name on the client ----
    INVALID_ARGUMENT = auto(), _INVALID, "the caller sent something unusable (no more specific reason)"
    NOT_FOUND = auto(), _NOT_FOUND, "something named does not exist (no more specific reason)"
    ALREADY_EXISTS = auto(), _EXISTS, "something to be created exists already (no more specific reason)"
    FAILED_PRECONDITION = auto(), _PRECONDITION, "the system is not in a state that allows the operation"
    RESOURCE_EXHAUSTED = auto(), _EXHAUSTED, "a limit was reached (no more specific reason)"
    UNAUTHENTICATED = auto(), _UNAUTHENTICATED, "the call carries no valid credentials"
    INTERNAL = auto(), _INTERNAL, "an unexpected failure; the server log has the details"
    CANCELLED = auto(), ErrorCode.CANCELLED, "the call was cancelled before it finished"
    DEADLINE_EXCEEDED = auto(), ErrorCode.DEADLINE_EXCEEDED, "the call's deadline passed before the work was done"
    UNAVAILABLE = auto(), _UNAVAILABLE, "the server cannot be reached or is not serving"
    UNKNOWN = auto(), ErrorCode.UNKNOWN, "the call failed with gRPC status UNKNOWN and no facesearch reason"
    PERMISSION_DENIED = auto(), ErrorCode.PERMISSION_DENIED, "the call failed with PERMISSION_DENIED, no reason"
    ABORTED = auto(), ErrorCode.ABORTED, "the call failed with gRPC status ABORTED and no facesearch reason"
    OUT_OF_RANGE = auto(), ErrorCode.OUT_OF_RANGE, "the call failed with OUT_OF_RANGE and no facesearch reason"
    UNIMPLEMENTED = auto(), ErrorCode.UNIMPLEMENTED, "the server does not implement the method called"
    DATA_LOSS = auto(), ErrorCode.DATA_LOSS, "the call failed with gRPC status DATA_LOSS and no facesearch reason"
    RPC_FAILED = auto(), ErrorCode.UNKNOWN, "a call failed with a status that is not one of facesearch's"

    # -- photos ----------------------------------------------------------------------------------
    IMAGE_EMPTY = auto(), _INVALID, "the photo has 0 bytes"
    IMAGE_UNREADABLE = auto(), _INVALID, "a photo file cannot be read (missing, a folder, no permission)"
    IMAGE_FORMAT_UNSUPPORTED = auto(), _INVALID, "the bytes are not a JPEG, PNG, WebP, BMP, TIFF or GIF photo"
    IMAGE_TRUNCATED = auto(), _INVALID, "the photo's data ends early"
    IMAGE_UNDECODABLE = auto(), _INVALID, "the photo's data is corrupt"
    IMAGE_TOO_SMALL = auto(), _INVALID, "a side of the photo is below the decode limits' min_side"
    IMAGE_TOO_LARGE = auto(), _INVALID, "the photo is over the decode limits on pixels or bytes"
    IMAGE_LAYOUT = auto(), _INVALID, "a decoded image array that is not HxWx3 uint8 RGB"

    # -- requests ---------------------------------------------------------------------------------
    BAD_IDENTITY_ID = auto(), _INVALID, "an identity id: empty, too long, or with control, bidi or invisible characters"
    BAD_NAME = auto(), _INVALID, "a display name over the byte limit"
    BAD_METADATA = auto(), _INVALID, "identity metadata with too many keys or bytes"
    BAD_TOP_K = auto(), _INVALID, "top_k outside 1..the server's maximum"
    BAD_FACE_SELECTION = auto(), _INVALID, "an unknown FaceSelection value"
    BAD_PAGE_SIZE = auto(), _INVALID, "a page_size outside 1..the maximum"
    BAD_PAGE_TOKEN = auto(), _INVALID, "a page_token this server did not issue"
    NO_REFERENCE = auto(), _INVALID, "Verify names neither a reference photo nor an identity"
    NO_IMAGES = auto(), _INVALID, "no photo to enroll (or, on the command line, to identify)"
    TOO_MANY_IMAGES = auto(), _INVALID, "more photos in one Enroll call than the server takes"
    NO_FACE_IDS = auto(), _INVALID, "a face deletion that names no face id"
    TOO_MANY_FACE_IDS = auto(), _INVALID, "more face ids in one DeleteFaces call than the server takes"
    IDENTITY_NOT_FOUND = auto(), _NOT_FOUND, "the identity does not exist"
    FACE_NOT_FOUND = auto(), _NOT_FOUND, "a face id that does not exist"
    IDENTITY_EXISTS = auto(), _EXISTS, "the identity exists already (a create-only enroll, or one without append)"
    BAD_REQUEST_ID = auto(), _INVALID, "an Enroll request_id over 128 bytes or with characters outside printable ASCII"
    REQUEST_ID_REUSED = auto(), _INVALID, "an Enroll request_id already used by a request with other content"
    IDENTITY_ERASED = auto(), _PRECONDITION, "the identity was erased; enrolling it again needs an unerase first"
    NOT_ERASED = auto(), _NOT_FOUND, "an unerase names an identity that the erasure ledger does not hold as erased"
    DUPLICATE_IDENTITY = auto(), _EXISTS, "one identity id twice where each must appear once"
    NOT_READY = auto(), _PRECONDITION, "the server has no index to serve yet (loading, or the version was refused)"
    QUEUE_FULL = auto(), _EXHAUSTED, "every worker is busy and the admission queue is full: retry later"
    WORK_MEMORY_FULL = auto(), _EXHAUSTED, "the photos in flight hold the server's work memory: retry later"
    MIN_FACE_TOO_SMALL = auto(), _INVALID, "a min_face_px under 10 px, or costlier in this photo than the server allows"
    SHUTTING_DOWN = auto(), _UNAVAILABLE, "the server is stopping and takes no new work"
    MISSING_TOKEN = auto(), _UNAUTHENTICATED, "no 'authorization: Bearer <token>' metadata"
    BAD_TOKEN = auto(), _UNAUTHENTICATED, "a bearer token that is not one of the server's"
    # authorization (server/auth_scopes.py): an authenticated caller without the scope a method needs
    SCOPE_REQUIRED = auto(), _DENIED, "the caller's token or certificate lacks the scope the method needs (named)"
    CLIENT_NOT_MAPPED = auto(), _DENIED, "a client certificate subject with no scopes in FACESEARCH_TLS_CLIENT_SCOPES"
    METHOD_NOT_MAPPED = auto(), _DENIED, "a method with no entry in the server's method -> scope table"
    MALFORMED_REQUEST = auto(), _INVALID, "request bytes that do not parse as the method's protobuf message"

    # service bounds (issue 13, helper B): fields, thresholds, streams
    FIELD_TOO_LONG = auto(), _INVALID, "a string, bytes or repeated field over its documented bound (named, with it)"
    THRESHOLD_BELOW_FLOOR = auto(), _INVALID, "a threshold looser than the server's default decision threshold"
    STREAM_IDLE = auto(), ErrorCode.DEADLINE_EXCEEDED, "a stream sent no item for FACESEARCH_STREAM_IDLE_S: closed"

    # -- thresholds and calibration ---------------------------------------------------------------
    BAD_MIN_SIMILARITY = auto(), _INVALID, "a min_similarity outside [-1, 1]"
    BAD_FMR = auto(), _INVALID, "a false-match rate outside (0, 1)"
    BAD_FPIR = auto(), _INVALID, "a false-positive identification rate outside (0, 1)"
    BAD_THRESHOLD = auto(), _INVALID, "min_similarity together with an error rate: set one"
    NO_CALIBRATION = auto(), _PRECONDITION, "an error rate asked of a bundle with no calibration for the gallery"
    GALLERY_TOO_SMALL = auto(), _INVALID, "a gallery smaller than the open-set calibration covers"
    BAD_CALIBRATION = auto(), _INVALID, "a calibration file that is malformed, or too little data to calibrate"
    BAD_SCORES = auto(), _INVALID, "score, neighbour or cohort arrays that do not fit together"
    BAD_GALLERY = auto(), _INVALID, "gallery embeddings, templates or statistics that do not fit together"

    # -- settings and command lines ---------------------------------------------------------------
    BAD_CONFIG = auto(), _INVALID, "an invalid setting (FACESEARCH_* variable, flag, job option); the message names it"
    BAD_ARGS = auto(), _INVALID, "command-line arguments that are missing or contradict each other"
    BAD_TOKEN_FILE = auto(), _INVALID, "the client's --token-file cannot be read"
    NO_REPLY = auto(), _INVALID, "the server ended a stream without answering for a photo"

    # -- model bundles, indices, journals ---------------------------------------------------------
    MODEL_FORMAT = auto(), _PRECONDITION, "a model file or bundle that is unknown, corrupt or inconsistent"
    BUNDLE_INVALID = auto(), _PRECONDITION, "a model bundle with a bad manifest"
    BUNDLE_MISSING = auto(), _PRECONDITION, "no model bundle where one was expected"
    BUNDLE_CHECKSUM = auto(), _PRECONDITION, "a bundle file whose sha256 differs from its manifest"
    CONTRACT_MISMATCH = auto(), _PRECONDITION, "embeddings or an index made with a different model contract"
    INDEX_INVALID = auto(), _PRECONDITION, "an index version with missing files, a bad sha256 or a bad manifest"
    JOURNAL_MISSING = auto(), _PRECONDITION, "no live journal where one was expected"
    JOURNAL_DAMAGED = auto(), _PRECONDITION, "a live journal record fails its checksum or is missing (journal repair)"
    LOCK_HELD = auto(), _PRECONDITION, "another process (named by pid) writes the live journal or index root"
    STORAGE_FULL = auto(), _UNAVAILABLE, "the server's disk or quota is full (ENOSPC, EDQUOT): nothing was written"
    STORAGE_ERROR = auto(), _UNAVAILABLE, "an I/O error on the server's disk (EIO): nothing was written; retry later"
    LEDGER_INVALID = auto(), _PRECONDITION, "an erasure ledger that cannot be opened or has an unknown schema"
    EMPTY_INDEX = auto(), _PRECONDITION, "an operation that would publish an index with no faces"
    EXPORT_PARITY = auto(), _PRECONDITION, "an exported ONNX model that disagrees with the torch model"

    # -- the PostgreSQL store (facesearch.store.postgres) ------------------------------------------
    STORE_UNAVAILABLE = auto(), _UNAVAILABLE, "the PostgreSQL store cannot be reached (down, restarting): not written"
    STORE_OUTCOME_UNKNOWN = (
        auto(),
        _UNAVAILABLE,
        "the store connection broke during a commit: the write may have been made; retry with the same request id",
    )
    STORE_SCHEMA = auto(), _PRECONDITION, "a PostgreSQL store not migrated, or newer than this code (db migrate)"
    STORE_LOG_PRUNED = (
        auto(),
        _PRECONDITION,
        "changes asked of the PostgreSQL store's log were pruned: use a newer version",
    )
    STORE_DRIVER_MISSING = auto(), _PRECONDITION, "a postgresql:// store without the postgres extra (psycopg) installed"
    STORE_ROOT = (
        auto(),
        _PRECONDITION,
        "an index root published from a PostgreSQL store, opened without it: its erasures are in that store's ledger",
    )
    REPLICA_FENCED = (
        auto(),
        _UNAVAILABLE,
        "this replica has not caught up with the shared store for FACESEARCH_STORE_FENCE_S: it may miss a deletion, "
        "so it does not answer searches until it has (try another replica)",
    )

    # -- batch jobs and evaluation ----------------------------------------------------------------
    MEMORY_BUDGET = auto(), _EXHAUSTED, "a job that would exceed its memory budget; the message names the knob"
    RESUME_MISMATCH = auto(), _PRECONDITION, "a partial run of other inputs, model or options where a job resumes"
    INDEX_BUILD_FAILED = auto(), _INTERNAL, "an indexing job failed (a worker, a shard, a stage)"
    EMPTY_INPUT = auto(), _INVALID, "an image list or folder that names no images"
    BAD_LIST = auto(), _INVALID, "an image list that cannot be read"
    BAD_TREE = auto(), _INVALID, "a path that is not a folder of <Person>/<photo>"
    BAD_PAIRS = auto(), _INVALID, "a pairs file that is malformed, or pair photos that are missing or unreadable"
    BAD_IMAGES = auto(), _INVALID, "evaluation photos that cannot be read"
    BAD_FACE_SET = auto(), _INVALID, "an evaluation face set that is inconsistent or too small"
    BAD_SEARCHES = auto(), _INVALID, "identification search arrays that do not fit together"
    NO_NONMATED = auto(), _INVALID, "no non-mated searches, so FPIR cannot be measured"
    BAD_SPLIT = auto(), _INVALID, "a gallery/probe split that cannot be evaluated"
    BAD_GROUPS = auto(), _INVALID, "a groups CSV that cannot be read or lacks its columns"

    # -- training ---------------------------------------------------------------------------------
    TRAINING_FAILED = auto(), _PRECONDITION, "a training run that cannot start or continue (no more specific reason)"
    TRAINING_DATA = auto(), _PRECONDITION, "too few usable identities or faces to train"
    BAD_DATA = auto(), _INVALID, "training --data that is neither a folder nor a chips manifest"
    CHECKPOINT_FORMAT = auto(), _PRECONDITION, "not a readable training checkpoint of this format version"
    CHECKPOINT_MISMATCH = auto(), _PRECONDITION, "a resume with a different config, data or base bundle"
    BASE_WEIGHTS = auto(), _PRECONDITION, "the base bundle's source weights are missing or differ"
    ARCH = auto(), _PRECONDITION, "a network whose layers do not match the weights loaded into it"
