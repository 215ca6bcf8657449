"""The one error hierarchy of facesearch.

Every failure that a caller can act on is a :class:`FaceSearchError` subclass with a
transport-neutral ``code`` (mapped to a gRPC status in one place, at the server edge)
and a stable machine-readable ``reason`` that clients may branch on.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    """Transport-neutral error classes; the server maps each to one gRPC status."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"


class FaceSearchError(Exception):
    """Base of every facesearch error.

    ``reason`` is a stable UPPER_SNAKE identifier (e.g. ``IMAGE_TRUNCATED``);
    the message is for humans and may change.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    default_reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidInputError(FaceSearchError):
    """The caller sent something unusable (bad field, bad file)."""

    code = ErrorCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class ImageDecodeError(InvalidInputError):
    """Bytes that are not a decodable photo (empty, truncated, unknown format...)."""

    default_reason = "IMAGE_UNDECODABLE"


class ImageTooLargeError(InvalidInputError):
    """A photo over the configured pixel or byte limit (decompression-bomb guard)."""

    default_reason = "IMAGE_TOO_LARGE"


class NotFoundError(FaceSearchError):
    code = ErrorCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExistsError(FaceSearchError):
    code = ErrorCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class PreconditionError(FaceSearchError):
    """The system is not in a state that allows the operation."""

    code = ErrorCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ModelFormatError(PreconditionError):
    """A model file or bundle that is unknown, corrupt or inconsistent."""

    default_reason = "MODEL_FORMAT"


class BundleError(PreconditionError):
    """A model bundle that is missing files, fails its sha256 or has a bad manifest."""

    default_reason = "BUNDLE_INVALID"


class ContractMismatchError(PreconditionError):
    """Embeddings or an index made with a different model contract."""

    default_reason = "CONTRACT_MISMATCH"


class ResourceExhaustedError(FaceSearchError):
    code = ErrorCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class UnauthenticatedError(FaceSearchError):
    code = ErrorCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class MemoryBudgetError(ResourceExhaustedError):
    """A job that would exceed its memory budget; raised before the work starts, naming the knob."""

    default_reason = "MEMORY_BUDGET"


class IndexFormatError(PreconditionError):
    """An index version that is missing files, fails its sha256 or has a bad manifest."""

    default_reason = "INDEX_INVALID"


class IndexBuildError(FaceSearchError):
    """A batch indexing job that failed (a worker, a shard, a stage); the message names which."""

    default_reason = "INDEX_BUILD_FAILED"


class TrainingError(FaceSearchError):
    """A training run that cannot start or continue: bad data, a checkpoint from another run or format.

    Reasons: ``TRAINING_DATA`` (too few usable identities or faces), ``CHECKPOINT_FORMAT`` (not a
    readable training checkpoint), ``CHECKPOINT_MISMATCH`` (resume with a different config, data or
    base bundle), ``BASE_WEIGHTS`` (the base bundle's source weights are missing or differ).
    """

    code = ErrorCode.FAILED_PRECONDITION
    default_reason = "TRAINING_FAILED"
