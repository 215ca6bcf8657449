"""The PostgreSQL store's failpoints (``facesearch.util.failpoints.SITES`` of ``Store.POSTGRESQL``) hit in
real ``facesearch-server`` replicas sharing one real PostgreSQL: issue 12's invariants hold across
replicas.

The matrix is generated from the declarations (a new PostgreSQL site is covered when declared):

* ``kill`` at every site x every operation that reaches it (Enroll, DeleteIdentity, DeleteFaces): the
  replica ``rf`` started with ``FACESEARCH_FAILPOINTS=<site>:crash`` dies there (SIGKILL) in the call;
  it is restarted (same replica id) and must report SERVING caught up; the client's retry goes to the
  other replica ``r0`` (an Enroll with the same request id, a deletion again);
* ``eio`` at every site (a connection to PostgreSQL broken there; every operation reaching it, on one
  ``rf``): the call fails UNAVAILABLE with the site's reason (``STORE_UNAVAILABLE`` when nothing was
  committed, ``STORE_OUTCOME_UNKNOWN`` when it may have been), then the retry on ``r0``;
* ``slow`` at every site an Enroll reaches (the append lock held, the reply or the catch-up delayed):
  an Enroll racing one of ``r0`` for the same new identity: exactly one creates it, the other gets
  IDENTITY_EXISTS. (A stall in a deletion's windows only delays its reply: what can go wrong there is
  what the kill and eio cases and the retried-deletion test below cover.)

After each: every acknowledged enrollment is on both replicas with exactly its face ids (and the
store's log holds it once: a retried request id is never applied twice), nothing whose deletion was
acknowledged (OK, or NOT_FOUND for a retry) is fetched, listed or matched by either replica, an
erased identity cannot be enrolled again, and a write that failed before its COMMIT left nothing in
the store (no silent write anywhere). One PostgreSQL database, one index root and ``r0`` are shared by
the module; every case works on identities of its own.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import AlreadyExistsError, FaceSearchError, NotFoundError, PreconditionError
from facesearch.store.postgres import migrate
from facesearch.util import failpoints
from facesearch.util.failpoints import Operation
from tests.integration.crash_fixtures import wait_dead
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import ServerProcess, build_index, start_server, synthetic_embeddings
from tests.integration.server_fixtures import wait_until as until
from tests.pg_fixtures import *  # noqa: F403
from tests.pg_fixtures import PgServer

pytestmark = pytest.mark.slow

PG_SITES = [s for s in failpoints.SITES.values() if s.store is failpoints.Store.POSTGRESQL]
KILLS = [(s.name, op) for s in PG_SITES for op in s.operations]
#: Where an injected broken connection leaves the write: not committed (nothing written) or committed
#: (the caller could not be told). The reason the client gets follows from it.
UNCOMMITTED = {"pg.write", "pg.commit"}
EIO_REASON = {
    "pg.write": "STORE_UNAVAILABLE",
    "pg.commit": "STORE_OUTCOME_UNKNOWN",
    "pg.committed": "STORE_OUTCOME_UNKNOWN",
    "replica.apply": "STORE_OUTCOME_UNKNOWN",
    "replica.propagate": "STORE_OUTCOME_UNKNOWN",
}


@dataclass
class Cluster:
    bundle: Path
    root: Path
    logs: Path
    dsn: str
    r0: ServerProcess
    photos: list[list[Path]]  # per person, photos Enroll accepts (two or more)
    rf: ServerProcess | None = None
    used: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def replica(self, name: str, env: dict[str, str] | None = None) -> ServerProcess:
        srv = start_server(
            self.bundle,
            self.root,
            self.logs,
            env={
                "FACESEARCH_STORE": self.dsn,
                "FACESEARCH_REPLICA_ID": name,
                "FACESEARCH_STORE_POLL_S": "0.5",
                "FACESEARCH_STORE_FENCE_S": "4",
                **(env or {}),
            },
        )
        with srv.client(timeout=60) as c:
            until(lambda: _health(c) == "SERVING", timeout=120, what=f"{name} SERVING")
        return srv

    def start_rf(self, spec: str | None) -> ServerProcess:
        """The replica under test (id ``rf``), started anew with failpoints ``spec``."""
        self.stop_rf()
        self.rf = self.replica("rf", {failpoints.ENV: spec} if spec else None)
        return self.rf

    def stop_rf(self) -> None:
        if self.rf is not None:
            self.rf.stop()  # a clean stop leaves the registry (a killed one is already gone)
            self.rf = None

    def pair(self) -> list[Path]:
        """Two photos of one person for a new identity (people reused round-robin)."""
        self.used += 1
        return self.photos[self.used % len(self.photos)][:2]

    def log_count(self, identity_id: str, kind: str) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM changes WHERE identity_id = %s AND kind = %s", (identity_id, kind)
            ).fetchone()
        return int(row[0]) if row else 0

    def high_water(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
        return int(row[0]) if row else 0


def _health(c: FaceSearchClient) -> str:
    try:
        return c.health()
    except FaceSearchError:
        return "DOWN"


@pytest.fixture(scope="module")
def cluster(
    server_bundle: Path,
    people: dict[str, list[Path]],
    pg_server: PgServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("pg-crash")
    dsn = pg_server.create_database("pg_crash_points")
    with psycopg.connect(dsn) as conn:
        migrate(conn)
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    emb, ids = synthetic_embeddings(100, seed=11, prefix="pub")
    build_index(work / "index", emb, ids, contract, work=work / "build")
    r0: ServerProcess | None = None
    cl: Cluster | None = None
    try:
        cl = Cluster(server_bundle, work / "index", work / "logs", dsn, r0=None, photos=[])  # type: ignore[arg-type]
        r0 = cl.r0 = cl.replica("r0")
        with r0.client(timeout=120) as c:  # photos Enroll accepts (some LFW photos fail its blur gate)
            for i, photos in enumerate(list(people.values())[:6]):
                r = c.enroll(f"probe-{i}", photos[:3], use_largest_face=True)
                good = [photos[x.index] for x in r.images if x.accepted]
                if len(good) >= 2:
                    cl.photos.append(good)
                c.delete_identity(f"probe-{i}")
        assert len(cl.photos) >= 4, "too few fixture people with two enrollable photos"
        yield cl
    finally:
        if cl is not None:
            cl.stop_rf()
        if r0 is not None:
            r0.stop()
        pg_server.drop_database("pg_crash_points")


def _name(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())


# -- what both replicas must serve -------------------------------------------------------------------
def _present(cl: Cluster, identity_id: str, faces: set[str], photo: Path) -> None:
    assert cl.rf is not None
    for srv in (cl.r0, cl.rf):
        with srv.client(timeout=60) as c:

            def served(c: FaceSearchClient = c) -> bool:
                try:
                    got = c.get_identity(identity_id, include_faces=True)
                except NotFoundError:
                    return False
                return {f.face_id for f in got.faces} == faces

            until(served, timeout=30, what=f"{identity_id} with faces {sorted(faces)} on {srv.target}")
            assert identity_id in {i.identity_id for i in c.list_identities(page_size=500)}
            assert identity_id in _matched(c, photo), (srv.target, identity_id)


def _gone(cl: Cluster, identity_id: str, photos: list[Path]) -> None:
    """Deleted (acknowledged): neither replica fetches, lists or matches it, nor enrolls it again."""
    assert cl.rf is not None
    for srv in (cl.r0, cl.rf):
        with srv.client(timeout=60, enroll_retries=0) as c:
            with pytest.raises(NotFoundError):
                c.get_identity(identity_id)
            assert identity_id not in {i.identity_id for i in c.list_identities(page_size=500)}
            for photo in photos:
                assert identity_id not in _matched(c, photo), (srv.target, identity_id, photo.name)
            with pytest.raises(PreconditionError) as refused:
                c.enroll(identity_id, photos[:1], use_largest_face=True)
            assert refused.value.reason == "IDENTITY_ERASED"


def _matched(c: FaceSearchClient, photo: Path) -> set[str]:
    return {x.identity_id for f in c.identify(photo, top_k=50).faces for x in f.candidates}


def _face_gone(cl: Cluster, identity_id: str, face: str, left: set[str], photo: Path) -> None:
    """One face deleted (acknowledged): neither replica holds or matches it; the others stay."""
    _present(cl, identity_id, left, photo)
    for srv in (cl.r0, cl.rf):
        assert srv is not None
        with srv.client(timeout=60) as c:
            got = c.get_identity(identity_id, include_faces=True)
            assert face not in {f.face_id for f in got.faces}
            hits = {x.face_id for f in c.identify(photo, top_k=50).faces for x in f.candidates}
            assert face not in hits


# -- setup of one case's identity on r0 ----------------------------------------------------------------
@dataclass
class Target:
    identity_id: str
    photos: list[Path]
    faces: list[str]  # face ids, in photo order


def _enrolled(cl: Cluster, identity_id: str) -> Target:
    photos = cl.pair()
    with cl.r0.client(timeout=120) as c:
        r = c.enroll(identity_id, photos, use_largest_face=True)
    assert len(r.face_ids) == 2, r
    return Target(identity_id, photos, list(r.face_ids))


def _attempt(srv: ServerProcess, op: Operation, t: Target, request_id: str) -> FaceSearchError | None:
    """``op`` on ``srv``; the error it failed with, or None."""
    try:
        with srv.client(timeout=60, enroll_retries=0) as c:
            if op is Operation.ENROLL:
                c.enroll(t.identity_id, t.photos, use_largest_face=True, request_id=request_id)
            elif op is Operation.DELETE_IDENTITY:
                c.delete_identity(t.identity_id)
            else:
                c.delete_faces([t.faces[0]])
    except FaceSearchError as err:
        return err
    return None


def _retry_and_check(cl: Cluster, op: Operation, t: Target, request_id: str, committed: bool | None) -> None:
    """The client's retry on r0, then the invariants on both replicas. ``committed``: whether the failed
    attempt's write must be in the store (None: either)."""
    with cl.r0.client(timeout=120) as c:
        if op is Operation.ENROLL:
            again = c.enroll(t.identity_id, t.photos, use_largest_face=True, request_id=request_id)
            assert len(again.face_ids) == 2 and again.created, again
            assert cl.log_count(t.identity_id, "enroll") == 1  # once, whether the first attempt committed or not
            _present(cl, t.identity_id, set(again.face_ids), t.photos[0])
            return
        if op is Operation.DELETE_IDENTITY:
            try:
                assert c.delete_identity(t.identity_id) == 2
                made = False
            except NotFoundError:
                made = True
            assert committed is None or made == committed, f"the deletion was {'' if made else 'not '}made"
            assert cl.log_count(t.identity_id, "delete_identity") == 1
            _gone(cl, t.identity_id, t.photos)
            return
        try:
            assert c.delete_faces([t.faces[0]]) == 1
            made = False
        except NotFoundError:
            made = True
        assert committed is None or made == committed, f"the deletion was {'' if made else 'not '}made"
        _face_gone(cl, t.identity_id, t.faces[0], {t.faces[1]}, t.photos[1])


@pytest.mark.parametrize(("site", "op"), KILLS, ids=[f"{s}-{o}" for s, o in KILLS])
def test_a_replica_killed_at_the_failpoint_loses_nothing_acknowledged(
    site: str, op: Operation, cluster: Cluster
) -> None:
    cl = cluster
    name = _name("k", site, op)
    t = _enrolled(cl, name) if op is not Operation.ENROLL else Target(name, cl.pair(), [])
    before = cl.high_water()
    rf = cl.start_rf(f"{site}:crash")
    assert _attempt(rf, op, t, f"req-{name}") is not None
    wait_dead(rf.proc.poll)
    assert rf.proc.returncode == -9, f"not a crash at {site}: exit {rf.proc.returncode}\n{rf.log()[-3000:]}"
    if site in UNCOMMITTED:  # killed before COMMIT: PostgreSQL rolled the transaction back
        assert cl.high_water() == before
    else:
        assert cl.high_water() == before + 1
    cl.start_rf(None)  # the killed replica restarted: SERVING only once caught up
    _retry_and_check(cl, op, t, f"req-{name}", committed=site not in UNCOMMITTED)
    cl.stop_rf()


@pytest.mark.parametrize("site", [s.name for s in PG_SITES])
def test_a_broken_connection_at_the_failpoint_is_an_error_with_a_reason_never_a_silent_write(
    site: str, cluster: Cluster
) -> None:
    cl = cluster
    ops = failpoints.SITES[site].operations
    targets: dict[Operation, Target] = {
        op: _enrolled(cl, _name("e", site, op)) for op in ops if op is not Operation.ENROLL
    }
    if Operation.ENROLL in ops:
        targets[Operation.ENROLL] = Target(_name("e", site, "enroll"), cl.pair(), [])
    rf = cl.start_rf(f"{site}:eio")  # every write reaching the site breaks there
    for op, t in targets.items():
        before = cl.high_water()
        err = _attempt(rf, op, t, f"req-{t.identity_id}")
        assert err is not None and err.reason == EIO_REASON[site], (op, err)
        assert site in str(err), err  # the message says what broke
        assert cl.high_water() == before + (0 if site in UNCOMMITTED else 1)
        if site in UNCOMMITTED:  # nothing written anywhere: the store and both replicas as before
            if op is Operation.ENROLL:
                for srv in (cl.r0, rf):
                    with srv.client(timeout=60) as c, pytest.raises(NotFoundError):
                        c.get_identity(t.identity_id)
            else:
                _present(cl, t.identity_id, set(t.faces), t.photos[1])
        _retry_and_check(cl, op, t, f"req-{t.identity_id}", committed=site not in UNCOMMITTED)
    assert rf.proc.poll() is None  # it never stopped serving reads
    cl.stop_rf()


@pytest.mark.parametrize("site", [s.name for s in PG_SITES if Operation.ENROLL in s.operations])
def test_a_stalled_failpoint_delays_but_two_creates_still_make_one(site: str, cluster: Cluster) -> None:
    cl = cluster
    rf = cl.start_rf(f"{site}:slow")
    name = _name("s", site)
    photos = cl.pair()
    outcomes: dict[str, object] = {}

    def create(srv: ServerProcess, key: str) -> None:  # rf (stalled at the site) and r0 at once
        with srv.client(timeout=120) as c:
            try:
                outcomes[key] = c.enroll(name, photos, use_largest_face=True, create_only=True)
            except AlreadyExistsError as err:
                outcomes[key] = err

    threads = [threading.Thread(target=create, args=x) for x in ((rf, "rf"), (cl.r0, "r0"))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    refused = [o for o in outcomes.values() if isinstance(o, AlreadyExistsError)]
    made = [o for o in outcomes.values() if not isinstance(o, AlreadyExistsError)]
    assert len(refused) == 1 and refused[0].reason == "IDENTITY_EXISTS" and len(made) == 1, outcomes
    assert cl.log_count(name, "enroll") == 1
    _present(cl, name, set(made[0].face_ids), photos[0])  # type: ignore[attr-defined]
    cl.stop_rf()


@pytest.mark.parametrize("op", [Operation.DELETE_IDENTITY, Operation.DELETE_FACES])
def test_a_retried_deletion_is_not_found_only_once_no_replica_can_return_it(op: Operation, cluster: Cluster) -> None:
    """A deletion whose reply was lost (``replica.propagate:eio``: committed, not yet waited for) retried:
    its NOT_FOUND is an acknowledgment too, so it comes only once every replica applied the deletion or is
    fenced. ``r0`` is paused (SIGSTOP) meanwhile, as a replica cut off from PostgreSQL that still serves
    from memory: at the NOT_FOUND the registry must show it applied or past the fence, and once resumed
    it must not return the faces (it answers REPLICA_FENCED until it caught up)."""
    cl = cluster
    t = _enrolled(cl, _name("r", op))
    rf = cl.start_rf("replica.propagate:eio*1")
    with rf.client(timeout=60) as c:
        until(lambda: _has(c, t.identity_id), timeout=30, what="rf to hold the identity")
    os.kill(cl.r0.proc.pid, signal.SIGSTOP)
    try:
        err = _attempt(rf, op, t, "")
        assert err is not None and err.reason == "STORE_OUTCOME_UNKNOWN", err
        seq = cl.high_water()
        again = _attempt(rf, op, t, "")
        assert isinstance(again, NotFoundError), again
        with psycopg.connect(cl.dsn) as conn:
            rows = conn.execute(
                "SELECT replica_id, applied_seq, extract(epoch FROM now() - heartbeat_at)::float8 FROM replicas"
            ).fetchall()
        fence_and_margin = 4 + 0.5  # FACESEARCH_STORE_FENCE_S and ReplicaRegistry.wait_applied's margin_s
        late = [r for r in rows if r[1] < seq and r[2] <= fence_and_margin]
        assert not late, f"NOT_FOUND while replicas {late} could still serve deletion {seq}"
    finally:
        os.kill(cl.r0.proc.pid, signal.SIGCONT)
    with cl.r0.client(timeout=60) as c:
        try:
            still = _has(c, t.identity_id, t.faces[0])
        except FaceSearchError as fenced:
            assert fenced.reason == "REPLICA_FENCED", fenced
        else:
            assert not still, "r0 returned the deleted faces after the deletion's NOT_FOUND"
        until(lambda: _health(c) == "SERVING", timeout=60, what="r0 SERVING again")
    if op is Operation.DELETE_IDENTITY:
        _gone(cl, t.identity_id, t.photos)
    else:
        _face_gone(cl, t.identity_id, t.faces[0], {t.faces[1]}, t.photos[1])
    cl.stop_rf()


def _has(c: FaceSearchClient, identity_id: str, face: str | None = None) -> bool:
    """Whether ``c`` serves the identity (with ``face``, when given)."""
    try:
        got = c.get_identity(identity_id, include_faces=True)
    except NotFoundError:
        return False
    return face is None or face in {f.face_id for f in got.faces}
