"""A recorded history of concurrent writes, with kill -9 at random moments, checked against a model.

Four clients enroll, delete faces and delete identities concurrently (each on identities of its
own, so the model is exact) and read back what they were told (GetIdentity right after an
acknowledged write), against a real server that is SIGKILLed at seeded random moments and
restarted, five times; once, ``facesearch-index compact`` runs and the server swaps to the new
version while the clients write. Every call is recorded with its outcome: acknowledged (with its
result), refused (the server answered an error: nothing happened), or unknown (the call died with
the server: it may or may not have happened). Afterwards a server started on the root must serve:

* every acknowledged enrollment's faces, unless an acknowledged (or unknown) deletion came later;
* no acknowledged deletion: the identity is not fetched or listed, the faces not in any listing
  and never a candidate of Identify;
* an unknown call whole or not at all (an identity of one photo has one face or does not exist);
* nothing that was never sent: every listed identity and face id was in the history;

and every read made during the run agreed with the writes acknowledged before it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.errors import AlreadyExistsError, FaceSearchError, InvalidInputError, NotFoundError, PreconditionError
from indexer.compact import compact
from tests.integration.crash_fixtures import check_at_rest
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, build_index, start_server, synthetic_embeddings, wait_until

pytestmark = pytest.mark.slow

SEED = 20261207
WORKERS = 4
ROUNDS = 5
COMPACT_ROUND = 2

ACKED, REFUSED, UNKNOWN = "acked", "refused", "unknown"
#: Errors the server answers having done nothing; any other error may come from a call that died with it.
_REFUSALS = (NotFoundError, AlreadyExistsError, InvalidInputError, PreconditionError)


@dataclass
class Event:
    worker: int
    op: str  # enroll | delete_identity | delete_faces | read
    identity_id: str
    outcome: str
    face_ids: tuple[str, ...] = ()  # enroll: the faces it returned; delete_faces: the faces named
    photos: int = 0  # enroll: photos sent (each one accepted: one face each)
    at: float = field(default_factory=time.monotonic)


class History:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.read_violations: list[str] = []

    def add(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)


class Target:
    """The live server's address; workers reconnect when it changes."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.generation = 0
        self.cond = threading.Condition()

    def swap(self, srv: ServerProcess | None) -> None:
        with self.cond:
            if srv is not None:
                self.srv = srv
                self.generation += 1
            self.cond.notify_all()


def _outcome(err: FaceSearchError) -> str:
    return REFUSED if isinstance(err, _REFUSALS) else UNKNOWN


def _worker(worker: int, target: Target, photos: list[Path], history: History, stop: threading.Event) -> None:
    rng = random.Random(SEED + worker)
    mine: dict[str, list[str]] = {}  # acknowledged live identities of this worker -> current face ids
    n = 0
    while not stop.is_set():
        srv, generation = target.srv, target.generation
        with srv.client(timeout=10) as c:
            while not stop.is_set() and target.generation == generation:
                choice = rng.random()
                try:
                    if choice < 0.55 or not mine:
                        ident = f"w{worker}-{n:04d}"
                        n += 1
                        chosen = rng.sample(photos, 2 if rng.random() < 0.5 else 1)
                        event = Event(worker, "enroll", ident, UNKNOWN, photos=len(chosen))
                        history.add(event)
                        r = c.enroll(ident, chosen, use_largest_face=True, create_only=True)
                        event.outcome, event.face_ids = ACKED, tuple(r.face_ids)
                        mine[ident] = list(r.face_ids)
                        _read_back(c, worker, ident, set(r.face_ids), history)
                    elif choice < 0.75:
                        ident = rng.choice(sorted(mine))
                        faces = mine[ident]
                        if len(faces) < 2:
                            continue
                        doomed = (faces[0],)
                        event = Event(worker, "delete_faces", ident, UNKNOWN, doomed)
                        history.add(event)
                        c.delete_faces(list(doomed))
                        event.outcome = ACKED
                        mine[ident] = faces[1:]
                        _read_back(c, worker, ident, set(faces[1:]), history)
                    else:
                        ident = rng.choice(sorted(mine))
                        event = Event(worker, "delete_identity", ident, UNKNOWN)
                        history.add(event)
                        c.delete_identity(ident)
                        event.outcome = ACKED
                        del mine[ident]
                        _read_back(c, worker, ident, None, history)
                except FaceSearchError as err:
                    event.outcome = _outcome(err)
                    if event.outcome == UNKNOWN:
                        # the server died: what this worker's identities hold is decided at the end
                        mine = {i: f for i, f in mine.items() if i != event.identity_id}
                        break
        with target.cond:
            if target.generation == generation and not stop.is_set():
                target.cond.wait(timeout=30)


def _read_back(c: object, worker: int, ident: str, faces: set[str] | None, history: History) -> None:
    """A read right after an acknowledged write must show it (None: the identity is gone)."""
    try:
        got = c.get_identity(ident, include_faces=True)  # type: ignore[attr-defined]
        seen: set[str] | None = {f.face_id for f in got.faces}
    except NotFoundError:
        seen = None
    except FaceSearchError:
        return  # the server died meanwhile: no answer, nothing to check
    history.add(Event(worker, "read", ident, ACKED, tuple(sorted(seen or ()))))
    if seen != faces:
        history.read_violations.append(f"{ident}: read {seen} right after an acknowledged write of {faces}")


@dataclass
class Model:
    """What the history allows for one identity."""

    sent: bool = False
    enroll: str | None = None  # the enroll's outcome
    faces: set[str] = field(default_factory=set)  # acknowledged faces not acknowledged deleted
    deleted_faces: set[str] = field(default_factory=set)  # acknowledged deleted faces
    maybe_deleted_faces: set[str] = field(default_factory=set)
    deleted: str | None = None  # the delete_identity outcome (acked or unknown)
    sent_faces: int = 0


def _model(events: list[Event]) -> dict[str, Model]:
    out: dict[str, Model] = {}
    for e in events:
        m = out.setdefault(e.identity_id, Model())
        if e.op == "enroll":
            m.sent, m.enroll, m.sent_faces = True, e.outcome, e.photos
            m.faces |= set(e.face_ids)
        elif e.op == "delete_faces" and e.outcome == ACKED:
            m.faces -= set(e.face_ids)
            m.deleted_faces |= set(e.face_ids)
        elif e.op == "delete_faces" and e.outcome == UNKNOWN:
            m.maybe_deleted_faces |= set(e.face_ids)
        elif e.op == "delete_identity" and e.outcome in (ACKED, UNKNOWN):
            m.deleted = e.outcome
    return out


def _photos(bundle: Path, people: dict[str, list[Path]], work: Path) -> list[Path]:
    """Photos Enroll accepts (some LFW photos fail its blur gate), found on a scratch server."""
    srv = start_server(bundle, work / "scratch", work / "logs")
    try:
        with srv.client(timeout=60) as c:
            good = []
            for person, candidates in people.items():
                r = c.enroll(person, candidates[:6], use_largest_face=True)
                good += [candidates[x.index] for x in r.images if x.accepted]
    finally:
        assert srv.stop() == 0
    assert len(good) >= 12
    return good


def test_concurrent_writes_with_kill_9_keep_every_acknowledged_change(
    server_bundle: Path, people: dict[str, list[Path]], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root = tmp_path / "root"
    emb, ids = synthetic_embeddings(200, seed=5)
    build_index(root, emb, ids, contract, work=tmp_path / "build")
    photos = _photos(server_bundle, people, tmp_path)
    logs = tmp_path / "logs"
    env = {"FACESEARCH_INDEX_POLL_S": "0.3"}

    history = History()
    target = Target(start_server(server_bundle, root, logs, env=env))
    stop = threading.Event()
    threads = [
        threading.Thread(target=_worker, args=(w, target, photos, history, stop), daemon=True) for w in range(WORKERS)
    ]
    for t in threads:
        t.start()
    kills = 0
    try:
        for round_ in range(ROUNDS):
            if round_ == COMPACT_ROUND:  # a compaction and a hot swap while the clients write
                job = compact(root, keep_versions=2).job
                assert job is not None
                version = job.version_dir.name
                with target.srv.client() as c:
                    wait_until(lambda c=c, v=version: c.stats()["index_version"] == v, timeout=60, what="swap")
            time.sleep(rng.uniform(0.5, 2.5))
            target.srv.kill()
            assert target.srv.proc.returncode == -9
            kills += 1
            target.swap(start_server(server_bundle, root, logs, env=env))
        time.sleep(rng.uniform(0.5, 1.5))
    finally:
        stop.set()
        target.swap(None)
        for t in threads:
            t.join(60)
    assert target.srv.stop() == 0
    check_at_rest(root)

    events = list(history.events)
    acked = [e for e in events if e.outcome == ACKED and e.op != "read"]
    unknown = [e for e in events if e.outcome == UNKNOWN]
    assert kills == ROUNDS and len(acked) >= 20, f"{len(acked)} acknowledged writes"
    assert not history.read_violations, history.read_violations[:5]

    model = _model(events)
    final = start_server(server_bundle, root, logs, env=env)
    try:
        with final.client(timeout=60) as c:
            assert c.health() == "SERVING"
            listed = {i.identity_id: i for i in c.list_identities(page_size=500)}
            live = {i for i in listed if not i.startswith("syn-")}
            assert live <= {i for i, m in model.items() if m.sent}, f"never sent: {live - set(model)}"
            served_faces: dict[str, set[str]] = {}
            for ident, m in model.items():
                try:
                    served: set[str] | None = {f.face_id for f in c.get_identity(ident, include_faces=True).faces}
                except NotFoundError:
                    served = None
                assert (served is not None) == (ident in listed), f"{ident}: GetIdentity and ListIdentities disagree"
                if served is not None:
                    served_faces[ident] = served
                    assert listed[ident].face_count == len(served), ident
                    assert not served & m.deleted_faces, f"{ident}: acknowledged deleted faces served"
                    assert len(served) <= m.sent_faces, f"{ident}: more faces than sent"
                if m.deleted == ACKED:
                    assert served is None, f"{ident}: acknowledged deletion undone"
                elif m.enroll == ACKED and m.deleted is None:
                    assert served is not None, f"{ident}: acknowledged enrollment lost"
                    assert m.faces - m.maybe_deleted_faces <= served <= m.faces, (ident, served, m)
                elif m.enroll == ACKED:  # deletion unknown: whole or gone
                    assert served is None or m.faces - m.maybe_deleted_faces <= served <= m.faces, (ident, served, m)
                elif m.enroll == UNKNOWN:  # enrollment unknown: whole or nothing
                    assert served is None or len(served) == m.sent_faces, (ident, served, m)
                else:  # refused
                    assert served is None, f"{ident}: a refused enrollment is served"
            gone = {f for m in model.values() for f in m.deleted_faces} | {
                f for i, m in model.items() if m.deleted == ACKED for f in m.faces
            }
            for photo in photos:  # deleted faces are never candidates
                faces = c.identify(photo, largest_only=True, top_k=20).faces
                for cand in faces[0].candidates if faces else []:
                    assert cand.face_id not in gone, f"deleted face {cand.face_id} ({cand.identity_id}) matched"
        assert final.stop() == 0
    finally:
        final.stop()
    print(f"history: {len(events)} events, {len(acked)} acknowledged writes, {len(unknown)} unknown, {kills} kills")
