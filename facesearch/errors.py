"""The one error hierarchy of facesearch, and the exit-code policy of its command lines.

Every failure that a caller can act on is a :class:`FaceSearchError` subclass with a
transport-neutral ``code`` (mapped to a gRPC status in one place, at the server edge, by
``server/errors.py``) and a stable machine-readable ``reason``, a :class:`Reason` declared once
in :mod:`facesearch.reasons`, that clients may branch on. The class decides the status code a
client sees; each class has a default reason, and a raise site names a more specific one:
``InvalidInputError("top_k must be 1..100", reason=Reason.BAD_TOP_K)``.

:class:`ExitCode` is the exit status of every console script (``facesearch``, ``facesearch-index``,
``facesearch-export``, ``facesearch-server``, ``facesearch-train``); :func:`exit_code` maps a
:class:`FaceSearchError` that ends a command to its status.
"""

from __future__ import annotations

from enum import IntEnum

from facesearch.reasons import ErrorCode, Reason

__all__ = [
    "AlreadyExistsError",
    "BundleError",
    "ContractMismatchError",
    "ErrorCode",
    "ExitCode",
    "FaceSearchError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "IndexBuildError",
    "IndexFormatError",
    "InvalidInputError",
    "MemoryBudgetError",
    "ModelFormatError",
    "NotFoundError",
    "PermissionDeniedError",
    "PreconditionError",
    "Reason",
    "ResourceExhaustedError",
    "TrainingError",
    "UnauthenticatedError",
    "UnavailableError",
    "exit_code",
]


class FaceSearchError(Exception):
    """Base of every facesearch error.

    ``reason`` is a stable :class:`Reason` (e.g. ``Reason.IMAGE_TRUNCATED``), the class's
    ``default_reason`` when none is given; the message is for humans and may change. A string
    is accepted while the raise sites move to :class:`Reason`, but it must name a member:
    ``Reason(text)`` raises ``ValueError`` on anything else, so a typo fails loudly.

    The ``reason`` attribute is typed ``str`` because an error that the client rebuilds from a
    server's reply keeps the server's reason verbatim, which may be one that a newer server
    added; every error raised in this process carries a :class:`Reason`.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    default_reason: Reason = Reason.INTERNAL
    reason: str

    def __init__(self, message: str, *, reason: Reason | str | None = None) -> None:
        super().__init__(message)
        self.reason = Reason(reason) if reason else self.default_reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidInputError(FaceSearchError):
    """The caller sent something unusable (bad field, bad file)."""

    code = ErrorCode.INVALID_ARGUMENT
    default_reason = Reason.INVALID_ARGUMENT


class ImageDecodeError(InvalidInputError):
    """Bytes that are not a decodable photo (empty, truncated, unknown format...)."""

    default_reason = Reason.IMAGE_UNDECODABLE


class ImageTooLargeError(InvalidInputError):
    """A photo over the configured pixel or byte limit (decompression-bomb guard)."""

    default_reason = Reason.IMAGE_TOO_LARGE


class NotFoundError(FaceSearchError):
    code = ErrorCode.NOT_FOUND
    default_reason = Reason.NOT_FOUND


class AlreadyExistsError(FaceSearchError):
    code = ErrorCode.ALREADY_EXISTS
    default_reason = Reason.ALREADY_EXISTS


class PreconditionError(FaceSearchError):
    """The system is not in a state that allows the operation."""

    code = ErrorCode.FAILED_PRECONDITION
    default_reason = Reason.FAILED_PRECONDITION


class ModelFormatError(PreconditionError):
    """A model file or bundle that is unknown, corrupt or inconsistent."""

    default_reason = Reason.MODEL_FORMAT


class BundleError(PreconditionError):
    """A model bundle that is missing files, fails its sha256 or has a bad manifest."""

    default_reason = Reason.BUNDLE_INVALID


class ContractMismatchError(PreconditionError):
    """Embeddings or an index made with a different model contract."""

    default_reason = Reason.CONTRACT_MISMATCH


class ResourceExhaustedError(FaceSearchError):
    code = ErrorCode.RESOURCE_EXHAUSTED
    default_reason = Reason.RESOURCE_EXHAUSTED


class UnauthenticatedError(FaceSearchError):
    code = ErrorCode.UNAUTHENTICATED
    default_reason = Reason.UNAUTHENTICATED


class PermissionDeniedError(FaceSearchError):
    """An authenticated caller whose credentials lack what the operation needs (a scope, named)."""

    code = ErrorCode.PERMISSION_DENIED
    default_reason = Reason.PERMISSION_DENIED


class UnavailableError(FaceSearchError):
    """The operation cannot be done now but may succeed if retried: the server's storage is full or
    failing (``STORAGE_FULL``, ``STORAGE_ERROR``); nothing was written."""

    code = ErrorCode.UNAVAILABLE
    default_reason = Reason.UNAVAILABLE


class MemoryBudgetError(ResourceExhaustedError):
    """A job that would exceed its memory budget; raised before the work starts, naming the knob."""

    default_reason = Reason.MEMORY_BUDGET


class IndexFormatError(PreconditionError):
    """An index version that is missing files, fails its sha256 or has a bad manifest."""

    default_reason = Reason.INDEX_INVALID


class IndexBuildError(FaceSearchError):
    """A batch indexing job that failed (a worker, a shard, a stage); the message names which."""

    default_reason = Reason.INDEX_BUILD_FAILED


class TrainingError(FaceSearchError):
    """A training run that cannot start or continue: bad data, a checkpoint from another run or format.

    Reasons: ``TRAINING_DATA`` (too few usable identities or faces), ``CHECKPOINT_FORMAT`` (not a
    readable training checkpoint), ``CHECKPOINT_MISMATCH`` (resume with a different config, data or
    base bundle), ``BASE_WEIGHTS`` (the base bundle's source weights are missing or differ).
    """

    code = ErrorCode.FAILED_PRECONDITION
    default_reason = Reason.TRAINING_FAILED


class ExitCode(IntEnum):
    """The exit status of every facesearch command line; ``main(argv) -> int`` returns one.

    0 and 1 answer the question the command asks; 2 says it could not answer. Like ``grep`` and
    ``diff``: a script can tell "no" from "broken".
    """

    OK = 0
    #: The command ran and the answer is no: a check failed (``facesearch-index verify``), a model
    #: was refused (``facesearch models promote``), some photos failed (``facesearch identify``), or
    #: no photo was enrolled (``facesearch enroll``).
    FAILED = 1
    #: The command could not do its work: bad usage (argparse), invalid input or settings, or any
    #: :class:`FaceSearchError` it stopped on (see :func:`exit_code`); the message is on stderr.
    ERROR = 2
    #: Stopped by Ctrl-C (128 + SIGINT); a batch job rerun with the same arguments resumes.
    INTERRUPTED = 130


def exit_code(err: FaceSearchError) -> ExitCode:
    """The exit status of a command that stops on ``err``: :attr:`ExitCode.ERROR`, whatever its class.

    The class and reason say what went wrong (on stderr); the status only says that the command
    did not do its work. ``facesearch-index`` keeps an older rule (see its ``main``): 2 for
    :class:`InvalidInputError`, 1 for any other error.
    """
    return ExitCode.ERROR  # one status for every class, by policy
