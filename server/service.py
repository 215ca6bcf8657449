"""The service's behaviour in domain terms: queries in, results out, no protobuf.

:class:`FaceSearchService` is what the gRPC servicer calls after converting a request. It
owns admission (bounded queue + deadlines), runs the CPU stages through the engine and the
gallery reads/writes on a small I/O pool, and asks for the decision: each face's shortlist is
scored (raw best-face similarity, template score, normalised score: :mod:`server.open_set_state`)
and decided by the one rule of :mod:`facesearch.scoring.decision` under the threshold the
request gets (:mod:`facesearch.scoring.thresholds`): ranked by the score the threshold is on, the
best candidate is the match when its score is at or above the threshold.

No leaks (issue 13): a reply lists only the candidates whose score reaches the decision threshold
(a stranger's face gets no candidates, just "unknown"), unless the caller's principal holds the
opt-in ``candidates`` scope (operators). A threshold the request sets may only be *stricter* than
the server's default decision threshold (the floor): a looser one is refused with INVALID_ARGUMENT,
reason ``THRESHOLD_BELOW_FLOOR``, naming the floor, so nobody can lower it to enumerate the gallery.
Scores leave the server rounded (:mod:`server.convert`).

Bounds: every call passes through admission (:mod:`server.admission`): photos in the CPU lane, and
reads (GetIdentity, ListIdentities, GetStats) and writes (Enroll's store, DeleteIdentity,
DeleteFaces) in two light lanes with their own threads and bounded queues
(:class:`ServiceLimits`). Faces per photo are capped (``max_faces``: the largest are searched and
the reply says how many were found).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from facesearch.errors import InvalidInputError, PreconditionError, Reason
from facesearch.scoring.decision import (
    DecisionThreshold,
    ScoredCandidate,
    ScoreKind,
    VerifyDecision,
    decide,
    matches,
    verify_decision,
)
from facesearch.scoring.thresholds import ThresholdPolicy, ThresholdRequest
from facesearch.store.live_journal import NewFace
from facesearch.vision.detection_plan import DetectionPlan
from facesearch.vision.pipeline import Face
from facesearch.vision.selection import Audience, Policy, QualityGate, Rejection, choose_face
from server.admission import Admission, Busy, Deadline, run_stoppable
from server.engine import AnalyzedPhoto, FaceEngine, PreparedPhoto
from server.erasures import refuse_erased
from server.gallery import (
    EnrollOutcome,
    EnrollRequest,
    FaceView,
    Gallery,
    GalleryState,
    GalleryStats,
    IdentityView,
    ImageOutcome,
    WriteSummary,
    enroll_digest,
)
from server.principal import Scope, current_principal

log = logging.getLogger(f"facesearch.{__name__}")

T = TypeVar("T")

MAX_TOP_K = 100
DEFAULT_TOP_K = 5
MAX_ENROLL_IMAGES = 64
#: Faces searched per photo by default (FACESEARCH_MAX_FACES): a class or team photo holds 20-60
#: people; 64 faces take ~1-2 s of embedding on one core. Of more, the largest are searched.
DEFAULT_MAX_FACES = 64


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Per-photo face cap and the light lanes' sizes (threads, queued requests)."""

    max_faces: int = DEFAULT_MAX_FACES
    read_workers: int = 2
    read_queue: int = 64
    write_workers: int = 2
    write_queue: int = 64


class Lane:
    """A light admission lane: bounded concurrency and queue, its own threads."""

    def __init__(self, name: str, workers: int, queue_size: int) -> None:
        self.admission = Admission(workers, queue_size, name=f"{name} lane queue")
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.busy = Busy()

    async def run(self, deadline: Deadline, fn: Callable[[], T]) -> T:
        async with self.admission.slot(deadline):
            deadline.check("the call")
            return await run_stoppable(self.executor, deadline, fn, self.busy)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


# -- queries ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IdentifyQuery:
    image: bytes
    top_k: int = DEFAULT_TOP_K
    min_similarity: float | None = None
    largest_only: bool = False
    max_fmr: float | None = None  # per-comparison false-match rate to hold
    max_fpir: float | None = None  # false-positive identification rate to hold at the current gallery size
    min_face: int | None = None  # the smallest face to search for (px); None: the server's default, within budget


@dataclass(frozen=True, slots=True)
class VerifyQuery:
    image: bytes
    reference_image: bytes | None
    identity_id: str | None
    min_similarity: float | None
    max_fmr: float | None = None


@dataclass(frozen=True, slots=True)
class EnrollQuery:
    identity_id: str
    name: str | None
    metadata: dict[str, str]
    images: list[tuple[bytes, str]]  # (photo, source)
    create_only: bool = False
    use_largest_face: bool = False
    min_face: int | None = None  # the smallest face to search for in each photo (px)
    request_id: str | None = None  # idempotency key (server.gallery: a retry gets the first result)
    append: bool = False  # add faces to an identity that exists (else IDENTITY_EXISTS)


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IdentifiedFace:
    face: Face
    candidates: tuple[ScoredCandidate, ...]  # best first by the score the threshold is on
    match: ScoredCandidate | None


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    width: int
    height: int
    faces: list[IdentifiedFace]
    threshold: DecisionThreshold
    index_version: str
    detection: DetectionPlan | None = None  # what the detector searched
    faces_found: int = -1  # faces the detector found (more than faces[] when capped by max_faces); -1: len(faces)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    decision: VerifyDecision
    similarity: float
    threshold: DecisionThreshold
    face: Face | None
    reference_face: Face | None
    reference_face_id: str

    @property
    def min_similarity(self) -> float:
        return self.threshold.value


@dataclass(frozen=True, slots=True)
class EnrollImageResult:
    index: int
    accepted: bool
    face_id: str = ""
    reject_reason: str = ""  # NO_FACE | MULTIPLE_FACES | FACE_TOO_SMALL | FACE_TOO_BLURRY
    message: str = ""
    face: Face | None = None
    detection: DetectionPlan | None = None  # what the detector searched in this photo


@dataclass(frozen=True, slots=True)
class EnrollResult:
    identity_id: str
    created: bool
    results: list[EnrollImageResult]
    face_ids: list[str] = field(default_factory=list)
    face_count: int = 0


@dataclass(frozen=True, slots=True)
class ServiceStats:
    gallery: GalleryStats
    default_min_similarity: float
    threshold_note: str
    enroll_min_face_size: float
    enroll_min_blur: float
    queue_depth: int
    default_threshold: DecisionThreshold
    cohort_k: int
    template_rule: str
    default_fpir: float | None = None  # the FPIR the default Identify decision holds at every gallery size
    lanes: dict[str, LaneStats] = field(default_factory=dict)  # cpu, read, write
    max_faces: int = DEFAULT_MAX_FACES  # faces searched per photo (FACESEARCH_MAX_FACES)
    writes: WriteSummary | None = None  # D1: write health (degraded storage), request ids


@dataclass(frozen=True, slots=True)
class LaneStats:
    depth: int  # waiting + running now
    peak_depth: int  # the most ever waiting + running
    bound: int  # workers + queue size: depth never exceeds it
    refused: int  # requests refused (QUEUE_FULL / WORK_MEMORY_FULL) since start
    busy_threads: int = 0  # threads executing the lane's work now (abandoned work included until it stops)

    @classmethod
    def of(cls, a: Admission, busy: int = 0) -> LaneStats:
        return cls(a.depth, a.peak_depth, a.workers + a.queue_size, a.refused, busy)


@dataclass(frozen=True, slots=True)
class EnrollRules:
    """Enrollment quality gates."""

    min_face_size: float
    min_blur: float


class FaceSearchService:
    def __init__(
        self,
        engine: FaceEngine,
        gallery: Gallery,
        admission: Admission,
        *,
        policy: ThresholdPolicy,
        enroll_rules: EnrollRules,
        io: ThreadPoolExecutor,
        limits: ServiceLimits | None = None,
    ) -> None:
        self.engine = engine
        self.gallery = gallery
        self.admission = admission
        self.policy = policy
        self.enroll_rules = enroll_rules
        self.io = io
        self.limits = limits or ServiceLimits()
        engine.max_faces = self.limits.max_faces
        self.read_lane = Lane("read", self.limits.read_workers, self.limits.read_queue)
        self.write_lane = Lane("write", self.limits.write_workers, self.limits.write_queue)
        self.not_ready: PreconditionError | None = PreconditionError("the index is loading", reason=Reason.NOT_READY)

    # -- helpers -------------------------------------------------------------------------
    def state(self) -> GalleryState:
        state = self.gallery.state
        if state is None or self.not_ready is not None:
            raise self.not_ready or PreconditionError("the index is loading", reason=Reason.NOT_READY)
        return state

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    def close(self) -> None:
        """Stop the light lanes' threads (after the gRPC server stopped)."""
        self.read_lane.close()
        self.write_lane.close()

    def _raw_equivalent(self, floor: DecisionThreshold) -> float | None:
        """The raw cosine threshold standing for the same per-comparison FMR as a normalised ``floor``
        (calibration.json's; None without it): a raw threshold at or above it is no looser."""
        raw = self.policy.raw
        if floor.score_kind is ScoreKind.RAW or raw is None or floor.fmr is None:
            return None
        return float(raw.threshold_for_fmr(floor.fmr))

    def identify_threshold(self, state: GalleryState, query: IdentifyQuery) -> DecisionThreshold:
        """The request's threshold; one it sets must be at least as strict as the default (the floor)."""
        open_set = state.open_set
        n = open_set.gallery_size if open_set.ready else state.identity_count()
        asked = ThresholdRequest(query.min_similarity, query.max_fmr, query.max_fpir)
        t = self.policy.identify(asked, n, normalised=open_set.ready)
        if asked != ThresholdRequest(None, None, None):
            floor = self.policy.identify(ThresholdRequest(None, None, None), n, normalised=open_set.ready)
            require_stricter(t, floor, "Identify", raw_floor=self._raw_equivalent(floor))
        if not open_set.ready and self.policy.open_set is not None:
            t = dataclasses.replace(t, reason=f"{t.reason}; normalised scores unavailable ({open_set.failure})")
        return t

    # -- calls ---------------------------------------------------------------------------
    async def identify(self, query: IdentifyQuery, deadline: Deadline) -> IdentifyResult:
        """Identify the faces of a photo. Unless the caller holds the ``candidates`` scope, each face's
        candidates are only those at or above the threshold."""
        if not 1 <= query.top_k <= MAX_TOP_K:
            raise InvalidInputError(f"top_k must be 1..{MAX_TOP_K}, got {query.top_k}", reason=Reason.BAD_TOP_K)
        state = self.state()
        threshold = self.identify_threshold(state, query)
        below = current_principal().has(Scope.CANDIDATES)
        survey = self.engine.survey(query.image, query.min_face)
        async with self.admission.slot(deadline, cost=survey.cost):
            photo = await self.engine.analyze(query.image, deadline, largest_only=query.largest_only, survey=survey)
            deadline.check("search")
            queries = np.stack([f.embedding for f in photo.faces]) if photo.faces else np.zeros((0, self.engine.dim))
            t0 = asyncio.get_running_loop().time()
            search = functools.partial(
                self._search_and_decide,
                state,
                photo.faces,
                queries.astype(np.float32),
                top_k=query.top_k,
                threshold=threshold,
                below_threshold=below,
            )
            faces = await run_stoppable(self.engine.executor, deadline, search, self.engine.busy)
            self.engine.observe("search", asyncio.get_running_loop().time() - t0)
        version = state.base.version if state.base is not None else ""
        return IdentifyResult(
            photo.width, photo.height, faces, threshold, version, photo.plan, faces_found=photo.total_faces
        )

    @staticmethod
    def _search_and_decide(
        state: GalleryState,
        faces: list[Face],
        queries: np.ndarray,
        *,
        top_k: int,
        threshold: DecisionThreshold,
        below_threshold: bool = False,
    ) -> list[IdentifiedFace]:
        ranked = state.search(queries, state.open_set.shortlist(top_k))
        out = []
        for face, query, cands in zip(faces, queries, ranked, strict=True):
            decision = decide(state.open_set.score(query, cands), threshold, limit=top_k)
            shown = decision.candidates if below_threshold else passing(decision.candidates, threshold)
            out.append(IdentifiedFace(face, shown, decision.match))
        return out

    async def detect(
        self, image: bytes, largest_only: bool, deadline: Deadline, min_face: int | None = None
    ) -> AnalyzedPhoto:
        survey = self.engine.survey(image, min_face)
        async with self.admission.slot(deadline, cost=survey.cost):
            photo: PreparedPhoto = await self.engine.prepare_async(image, deadline, largest_only, survey)
        return self.engine.unembedded(photo)

    async def verify(self, query: VerifyQuery, deadline: Deadline) -> VerifyResult:
        threshold = self.policy.verify(query.min_similarity, query.max_fmr)
        if query.min_similarity is not None or query.max_fmr is not None:
            require_stricter(threshold, self.policy.verify(None, None), "Verify")
        state = self.state() if query.identity_id is not None else None
        if state is not None and query.identity_id is not None:
            await self.read_lane.run(deadline, functools.partial(state.require, query.identity_id))
        reference: AnalyzedPhoto | None = None
        surveys = [self.engine.survey(query.image)]
        if query.reference_image is not None:
            surveys.append(self.engine.survey(query.reference_image))
        async with self.admission.slot(deadline, cost=max(s.cost for s in surveys)):  # one photo at a time
            probe = await self.engine.analyze(query.image, deadline, largest_only=True, survey=surveys[0])
            if query.reference_image is not None:
                reference = await self.engine.analyze(
                    query.reference_image, deadline, largest_only=True, survey=surveys[1]
                )
        face = probe.faces[0] if probe.faces else None
        if face is None:
            return VerifyResult(VerifyDecision.NO_FACE_IN_IMAGE, 0.0, threshold, None, None, "")
        if reference is not None:
            ref = reference.faces[0] if reference.faces else None
            if ref is None:
                return VerifyResult(VerifyDecision.NO_FACE_IN_REFERENCE, 0.0, threshold, face, None, "")
            sim = float(np.dot(face.embedding, ref.embedding))
            return VerifyResult(verify_decision(sim, threshold), sim, threshold, face, ref, "")
        assert state is not None and query.identity_id is not None
        vids, embeddings = await self.read_lane.run(deadline, functools.partial(state.embeddings_of, query.identity_id))
        if len(vids) == 0:
            return VerifyResult(VerifyDecision.NO_FACE_IN_REFERENCE, 0.0, threshold, face, None, "")
        sims = embeddings @ face.embedding
        best = int(np.argmax(sims))
        sim = float(sims[best])
        return VerifyResult(verify_decision(sim, threshold), sim, threshold, face, None, str(int(vids[best])))

    async def enroll(self, query: EnrollQuery, deadline: Deadline) -> EnrollResult:
        if not query.images:
            raise InvalidInputError("enroll needs at least one image", reason=Reason.NO_IMAGES)
        if len(query.images) > MAX_ENROLL_IMAGES:
            raise InvalidInputError(
                f"at most {MAX_ENROLL_IMAGES} images per enroll call, got {len(query.images)}",
                reason=Reason.TOO_MANY_IMAGES,
            )
        state = self.state()
        await self._io(refuse_erased, self.gallery.ledger, query.identity_id)  # before the photos' work
        who = current_principal().name  # D1: the audit log's principal (the write thread has no call context)
        request = enroll_request(query)
        if request is not None and (first := await self._io(self.gallery.replay, request)) is not None:
            return replayed_result(query.identity_id, first)  # a retry: the first result, nothing written
        await self._io(self.gallery.refuse_existing, state, query.identity_id, query.create_only, query.append)
        surveys = []
        for i, (data, _) in enumerate(query.images):
            try:
                surveys.append(self.engine.survey(data, query.min_face))
            except InvalidInputError as err:
                raise type(err)(f"image {i}: {err.message}", reason=err.reason) from err
        async with self.admission.slot(deadline, cost=max(s.cost for s in surveys)):  # one photo at a time
            photos = []
            for i, (data, _) in enumerate(query.images):
                deadline.check(f"enroll photo {i}")
                try:
                    photos.append(await self.engine.prepare_async(data, deadline, False, surveys[i]))
                except InvalidInputError as err:
                    raise type(err)(f"image {i}: {err.message}", reason=err.reason) from err
            results, accepted = self._gate(photos, query.use_largest_face)
            faces = await self.engine.embed_rows([(photos[i], row) for i, row in accepted], deadline)
        new = [
            NewFace(f.embedding, query.images[i][1] or None, f.box, f.score, f.quality.face_size, f.quality.blur)
            for (i, _), f in zip(accepted, faces, strict=True)
        ]
        deadline.check("store")

        def store() -> EnrollOutcome:
            deadline.check("the durable write")  # on the write thread, right before the gallery's commit
            return self.gallery.enroll(
                query.identity_id,
                query.name,
                query.metadata,
                new,
                query.create_only,
                append=query.append,
                request=request and dataclasses.replace(request, images=tuple(image_outcome(r) for r in results)),
                deadline=deadline,
                principal=who,
            )

        outcome = await self.write_lane.run(deadline, store)
        ids = iter(outcome.face_ids)
        by_index = {i: f for (i, _), f in zip(accepted, faces, strict=True)}
        final = [
            dataclasses.replace(
                EnrollImageResult(r.index, True, next(ids), face=by_index[r.index]) if r.accepted else r,
                detection=photos[r.index].plan,
            )
            for r in results
        ]
        return EnrollResult(query.identity_id, outcome.created, final, outcome.face_ids, outcome.face_count)

    def _gate(
        self, photos: list[PreparedPhoto], use_largest: bool
    ) -> tuple[list[EnrollImageResult], list[tuple[int, int]]]:
        """Enrollment's face choice and quality gate (:mod:`facesearch.vision.selection`, Enroll wording):
        results (accepted ones without face id yet) and (photo, row) to embed. Of several faces, the
        dominant one (the largest when clearly larger than the next; else MULTIPLE_FACES), or the
        largest with ``use_largest_face``."""
        policy = Policy.LARGEST if use_largest else Policy.DOMINANT
        gate = QualityGate(min_face_size=self.enroll_rules.min_face_size, min_blur=self.enroll_rules.min_blur)
        results: list[EnrollImageResult] = []
        accepted: list[tuple[int, int]] = []
        for i, photo in enumerate(photos):
            row = choose_face(photo.found, policy, image_shape=(photo.height, photo.width), audience=Audience.ENROLL)
            if isinstance(row, Rejection):
                results.append(EnrollImageResult(i, False, reject_reason=row.reason, message=row.detail))
                continue
            f = photo.found[row]
            low = gate.check(f.quality, Audience.ENROLL)
            if low is None:
                results.append(EnrollImageResult(i, True))
                accepted.append((i, row))
                continue
            chosen = PreparedPhoto(photo.width, photo.height, [f], photo.chips[row : row + 1])
            face = self.engine.unembedded(chosen).faces[0]
            results.append(EnrollImageResult(i, False, reject_reason=low.reason, face=face, message=low.detail))
        return results, accepted

    async def delete_identity(self, identity_id: str, deadline: Deadline | None = None) -> int:
        self.state()
        work = functools.partial(self.gallery.delete_identity, identity_id, principal=current_principal().name)
        return await self.write_lane.run(deadline or Deadline(), work)

    async def delete_faces(self, face_ids: list[str], deadline: Deadline | None = None) -> int:
        self.state()
        work = functools.partial(self.gallery.delete_faces, face_ids, principal=current_principal().name)
        return await self.write_lane.run(deadline or Deadline(), work)

    async def get_identity(
        self, identity_id: str, include_faces: bool, deadline: Deadline | None = None
    ) -> tuple[IdentityView, list[FaceView]]:
        state = self.state()

        def read() -> tuple[IdentityView, list[FaceView]]:
            view = state.require(identity_id)
            return view, state.faces(identity_id) if include_faces else []

        return await self.read_lane.run(deadline or Deadline(), read)

    async def list_identities(
        self, after: str, limit: int, deadline: Deadline | None = None
    ) -> tuple[list[IdentityView], bool]:
        state = self.state()
        return await self.read_lane.run(deadline or Deadline(), functools.partial(state.list_page, after, limit))

    async def stats(self, deadline: Deadline | None = None) -> ServiceStats:
        state = self.state()
        gallery = await self.read_lane.run(deadline or Deadline(), state.stats)
        p, r = self.policy, self.enroll_rules
        default = self.identify_threshold(state, IdentifyQuery(b""))
        return ServiceStats(
            gallery,
            p.default_min_similarity,
            p.note,
            r.min_face_size,
            r.min_blur,
            self.admission.depth,
            default,
            state.open_set.k,
            state.open_set.rule,
            p.default_fpir,
            lanes={
                "cpu": LaneStats.of(self.admission, self.engine.busy.count + self.engine.batcher.busy.count),
                "read": LaneStats.of(self.read_lane.admission, self.read_lane.busy.count),
                "write": LaneStats.of(self.write_lane.admission, self.write_lane.busy.count),
            },
            max_faces=self.limits.max_faces,
            writes=await self.read_lane.run(deadline or Deadline(), self.gallery.write_summary),
        )


def passing(candidates: tuple[ScoredCandidate, ...], threshold: DecisionThreshold) -> tuple[ScoredCandidate, ...]:
    """The candidates whose score (on the threshold's score) reaches it: what a reply may show."""
    return tuple(c for c in candidates if matches(c.decision_score(threshold.score_kind), threshold.value))


def require_stricter(
    asked: DecisionThreshold, floor: DecisionThreshold, call: str, *, raw_floor: float | None = None
) -> None:
    """Refuse a threshold a request set that is looser than the server's default (``floor``).

    Stricter means: on the same score, a value at or above the floor's; a raw cosine against a
    normalised floor, at or above ``raw_floor`` (the cosine of the floor's FMR), or else a
    false-positive identification rate at or below the floor's (both calibrated). Anything that
    cannot be shown stricter is refused: the floor protects the gallery from enumeration.
    """
    eps = 1e-9
    if asked.score_kind is floor.score_kind:
        ok = asked.value >= floor.value - eps
    elif asked.score_kind is ScoreKind.RAW and raw_floor is not None and asked.value >= raw_floor - eps:
        ok = True
    else:
        ok = asked.fpir is not None and floor.fpir is not None and asked.fpir <= floor.fpir + eps
    if ok:
        return
    score = "cosine" if floor.score_kind is ScoreKind.RAW else "normalised score"
    rate = f", FPIR {floor.fpir:.3g} at gallery size {floor.gallery_size}" if floor.fpir is not None else ""
    asked_rate = f" (FPIR {asked.fpir:.3g})" if asked.fpir is not None else ""
    raise InvalidInputError(
        f"{call}: the threshold asked for ({asked.score_kind} {asked.value:.4f}{asked_rate}) is looser than the "
        f"server's floor, its default decision threshold ({score} {floor.value:.4f}{rate}); a request may only ask "
        "for a stricter threshold",
        reason=Reason.THRESHOLD_BELOW_FLOOR,
    )


# -- idempotent Enroll (D1, issue 12: server.gallery keeps the request ids) --------------------------
def enroll_request(query: EnrollQuery) -> EnrollRequest | None:
    """The query's idempotency key and content digest (None: no request id)."""
    if query.request_id is None:
        return None
    options = {
        "create_only": query.create_only,
        "append": query.append,
        "use_largest_face": query.use_largest_face,
        "min_face": query.min_face,
    }
    digest = enroll_digest(query.identity_id, query.name, query.metadata, query.images, options)
    return EnrollRequest(query.request_id, digest)


def image_outcome(r: EnrollImageResult) -> ImageOutcome:
    return ImageOutcome(r.index, r.accepted, r.face_id, r.reject_reason, r.message)


def replayed_result(identity_id: str, first: EnrollOutcome) -> EnrollResult:
    """A retried request's first result (the photos' outcomes as recorded: no face boxes)."""
    images = [EnrollImageResult(i.index, i.accepted, i.face_id, i.reject_reason, i.message) for i in first.images]
    return EnrollResult(identity_id, first.created, images, first.face_ids, first.face_count)
