"""Enroll's write contract against real server processes (issue 12, issue 13 item on append):

* a request id makes Enroll idempotent: a retry (same id, same content) returns the first result and
  adds nothing, across a compaction and a restart; the same id with other content is refused;
* adding faces to an existing identity needs ``append`` (IDENTITY_EXISTS names the flag), and
  FACESEARCH_ENROLL_IMPLICIT_APPEND=1 restores the old behaviour;
* a request whose caller's deadline passed writes nothing;
* the audit log (``facesearch-index audit list``) has every enroll and delete with the principal,
  survives compaction and restart, keeps only the digest of an erased identity, and is pruned;
* GetStats reports degraded writes (an injected full disk at the journal commit); the Python client
  retries UNAVAILABLE with the same request id (one enrollment, not two) and raises the typed
  ServerUnavailableError; the CLI ends with one clear line when no server answers;
* ListIdentities pages stay consistent while enrollments and deletions go on; page tokens are
  validated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient, RpcFailedError, ServerUnavailableError
from facesearch.errors import AlreadyExistsError, InvalidInputError, NotFoundError, UnavailableError
from facesearch.store.audit_log import AUDIT_FILE
from facesearch.util.failpoints import SLOW_S
from indexer.main import main as index_main
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import REPO, build_index, start_server, synthetic_embeddings, wait_until

pytestmark = pytest.mark.slow


def audit_rows(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    capsys.readouterr()
    assert index_main(["audit", "list", str(root), "--json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.fixture
def root(server_bundle: Path, tmp_path: Path) -> Path:
    """A root with a small published version (synthetic faces under the bundle's contract)."""
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    emb, ids = synthetic_embeddings(200, seed=3, prefix="pub")
    build_index(tmp_path / "index", emb, ids, contract, work=tmp_path / "work")
    return tmp_path / "index"


def test_idempotent_enroll_append_deadline_and_audit(
    server_bundle: Path,
    root: Path,
    tmp_path: Path,
    people: dict[str, list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b, c_name = list(people)[:3]
    # every journal write stalls SLOW_S (2 s) before its records: the hurried caller's deadline below passes
    # there, before the commit, however fast the machine is
    srv = start_server(server_bundle, root, tmp_path / "logs", env={"FACESEARCH_FAILPOINTS": "journal.append:slow"})
    try:
        with srv.client(timeout=120) as c:
            first = c.enroll(a, people[a][:2], request_id="req-a-1", use_largest_face=True)
            assert first.created and len(first.face_ids) == 2
            again = c.enroll(a, people[a][:2], request_id="req-a-1", use_largest_face=True)
            assert again.face_ids == first.face_ids and again.created and again.face_count == 2
            assert [i.face_id for i in again.images] == [i.face_id for i in first.images]
            assert c.get_identity(a).face_count == 2  # the retry added nothing
            with pytest.raises(InvalidInputError) as reused:  # same id, other photos
                c.enroll(a, people[a][2:3], request_id="req-a-1", use_largest_face=True, append=True)
            assert reused.value.reason == "REQUEST_ID_REUSED"
            with pytest.raises(InvalidInputError) as bad:
                c.enroll(a, people[a][2:3], request_id="not valid", use_largest_face=True)
            assert bad.value.reason == "BAD_REQUEST_ID"
            # append is explicit
            with pytest.raises(AlreadyExistsError) as exists:
                c.enroll(a, people[a][2:3], use_largest_face=True)
            assert exists.value.reason == "IDENTITY_EXISTS" and "append" in exists.value.message
            assert c.get_identity(a).face_count == 2
            assert c.enroll(a, people[a][2:3], use_largest_face=True, append=True).face_count == 3
            with pytest.raises(AlreadyExistsError):  # create_only wins
                c.enroll(a, people[a][3:4], use_largest_face=True, append=True, create_only=True)
            # a caller whose deadline passes before the write gets DEADLINE_EXCEEDED and nothing is written
            live_before = c.stats()["live_faces"]
            with srv.client(timeout=0.3, enroll_retries=0) as hurried, pytest.raises(RpcFailedError) as late:
                hurried.enroll(b, people[b][:6], use_largest_face=True)
            assert late.value.reason == "DEADLINE_EXCEEDED"
            time.sleep(SLOW_S + 2.0)  # whatever the server still did for it has finished by now
            with pytest.raises(NotFoundError):
                c.get_identity(b)
            assert c.stats()["live_faces"] == live_before
            stats = c.stats()
            assert not stats["writes_degraded"] and stats["writes_reason"] == "" and stats["write_failures"] == 0
            assert stats["enroll_request_ids"] >= 1
            c.enroll(c_name, people[c_name][:1], use_largest_face=True)
            assert c.delete_faces(first.face_ids[:1]) == 1

        rows = audit_rows(root, capsys, "--identity", a)
        assert [(r["operation"], r["principal"], r["faces"]) for r in rows] == [
            ("enroll", "anonymous", 2),
            ("enroll", "anonymous", 1),
            ("delete_faces", "anonymous", 1),
        ]
        assert rows[0]["request_id"] == "req-a-1" and {r["identity_id"] for r in rows} == {a}
        assert not audit_rows(root, capsys, "--identity", b)  # the late request left no trace

        # compaction prunes the journal, not the audit log nor the request ids
        assert index_main(["compact", str(root), "--quiet"]) == 0
        with srv.client(timeout=120) as c:
            wait_until(lambda: c.stats()["live_faces"] == 0, timeout=60, what="the compacted version served")
            assert c.enroll(a, people[a][:2], request_id="req-a-1", use_largest_face=True).face_ids == first.face_ids
            assert c.get_identity(a).face_count == 2
        assert len(audit_rows(root, capsys, "--identity", a)) == 3
        assert srv.stop() == 0

        srv = start_server(server_bundle, root, tmp_path / "logs")  # a restart keeps both
        with srv.client(timeout=120) as c:
            assert c.enroll(a, people[a][:2], request_id="req-a-1", use_largest_face=True).face_ids == first.face_ids
            assert c.get_identity(a).face_count == 2
            assert len(audit_rows(root, capsys, "--identity", a)) == 3
            assert any(a.encode() in p.read_bytes() for p in root.glob(AUDIT_FILE + "*"))
            assert c.delete_identity(a) == 2  # an erasure: the audit log keeps only the id's digest
        rows = audit_rows(root, capsys, "--identity", a)
        assert [r["operation"] for r in rows] == ["enroll", "enroll", "delete_faces", "delete_identity"]
        assert {r["identity_id"] for r in rows} == {None} and len({r["subject"] for r in rows}) == 1
        assert not [p.name for p in root.glob(AUDIT_FILE + "*") if a.encode() in p.read_bytes()]
        assert c_name in {r["identity_id"] for r in audit_rows(root, capsys)}
        # bounded: `audit prune` deletes what is past the retention (here: everything but the last second)
        time.sleep(1.1)
        assert index_main(["audit", "prune", str(root), "--older-than-days", str(1.0 / 86400)]) == 0
        assert audit_rows(root, capsys) == []
        assert index_main(["audit", "list", str(root), "--since", "not-a-time"]) == 2
    finally:
        srv.stop()


def test_implicit_append_switch(server_bundle: Path, root: Path, tmp_path: Path, people: dict[str, list[Path]]) -> None:
    a = list(people)[3]
    srv = start_server(server_bundle, root, tmp_path / "logs", env={"FACESEARCH_ENROLL_IMPLICIT_APPEND": "1"})
    try:
        with srv.client(timeout=120) as c:
            assert c.enroll(a, people[a][:1], use_largest_face=True).created
            assert c.enroll(a, people[a][1:2], use_largest_face=True).face_count == 2  # old clients' behaviour
            with pytest.raises(AlreadyExistsError):
                c.enroll(a, people[a][2:3], use_largest_face=True, create_only=True)
    finally:
        srv.stop()


def test_degraded_writes_in_stats_and_client_retries_with_the_same_request_id(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    a, b = list(people)[4:6]
    env = {"FACESEARCH_FAILPOINTS": "journal.commit:enospc*2"}  # the first two enrollments meet a full disk
    srv = start_server(server_bundle, tmp_path / "index", tmp_path / "logs", env=env)
    try:
        with srv.client(timeout=120, enroll_retries=0) as c:
            with pytest.raises(ServerUnavailableError) as full:
                c.enroll(a, people[a][:1], use_largest_face=True)
            assert isinstance(full.value, UnavailableError) and full.value.reason == "STORAGE_FULL"
            stats = c.stats()
            assert stats["writes_degraded"] and stats["writes_reason"].startswith("STORAGE_FULL")
            assert stats["write_failures"] == 1
        with srv.client(timeout=120, enroll_retries=2, retry_backoff_s=0.05) as c:
            r = c.enroll(b, people[b][:2], use_largest_face=True)  # fails once (full), retried with its id
            assert r.created and len(r.face_ids) == 2
            assert c.get_identity(b).face_count == 2  # enrolled once
            stats = c.stats()
            assert not stats["writes_degraded"] and stats["write_failures"] == 2
            with pytest.raises(NotFoundError):
                c.get_identity(a)
        rows = [json.loads(line) for line in _index_cli("audit", "list", str(tmp_path / "index"), "--json")]
        assert [(row["identity_id"], row["outcome"]) for row in rows] == [(a, "failed"), (b, "failed"), (b, "ok")]
    finally:
        srv.stop()


def test_unavailable_server_is_a_typed_error_and_a_clear_cli_line(
    tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    photo = next(iter(people.values()))[0]
    with FaceSearchClient("127.0.0.1:1", timeout=5, enroll_retries=1, retry_backoff_s=0.01) as c:
        with pytest.raises(ServerUnavailableError) as err:
            c.enroll("nobody", [photo])
        assert isinstance(err.value, UnavailableError) and err.value.reason == "UNAVAILABLE"
        with pytest.raises(UnavailableError):
            c.stats()
    cmd = ["enroll", "--identity", "x", str(photo), "--target", "127.0.0.1:1"]
    cli = subprocess.run(
        [sys.executable, "-m", "facesearch.cli.main", *cmd],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert cli.returncode == 2, cli.stderr
    lines = [line for line in cli.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "127.0.0.1:1 is unavailable" in lines[0] and "Traceback" not in cli.stderr


def test_list_pages_consistent_under_concurrent_writes_and_tokens_validated(
    server_bundle: Path, root: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    photos = [p for ps in people.values() for p in ps[:1]][:4]
    srv = start_server(server_bundle, root, tmp_path / "logs")
    stop = threading.Event()
    errors: list[BaseException] = []
    try:
        with srv.client(timeout=120) as c:
            stable = {i.identity_id for i in c.list_identities(page_size=1000)}
            churn = [f"churn-{i}" for i in range(len(photos))]

            def writer() -> None:
                with srv.client(timeout=120) as w:
                    try:
                        while not stop.is_set():
                            for who, photo in zip(churn, photos, strict=True):
                                w.enroll(who, [photo], use_largest_face=True)
                            for who in churn:
                                w.delete_identity(who)
                                assert index_main(["unerase", str(root), who]) == 0
                    except BaseException as err:
                        errors.append(err)

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                for _ in range(4):
                    seen = [i.identity_id for i in c.list_identities(page_size=17)]
                    assert seen == sorted(seen) and len(seen) == len(set(seen))
                    assert stable <= set(seen) <= stable | set(churn)
            finally:
                stop.set()
                thread.join(120)
            assert not errors, errors
            _, token = c.list_page(5)
            assert token
            for bad in ("not-a-token", token[:-3] + "xyz", "eyJ2IjoyfQ"):
                with pytest.raises(InvalidInputError) as err:
                    c.list_page(5, bad)
                assert err.value.reason == "BAD_PAGE_TOKEN"
    finally:
        stop.set()
        srv.stop()


def _index_cli(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "indexer", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_audit_cli_without_a_log(tmp_path: Path) -> None:
    assert index_main(["audit", "list", str(tmp_path)]) == 1
    assert index_main(["audit", "prune", str(tmp_path), "--older-than-days", "0"]) == 2
