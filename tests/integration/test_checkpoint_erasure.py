"""D3: a deletion keeps the open-set checkpoint usable, and its bytes lose the subject within the window.

Real server processes on a small synthetic index plus LFW identities enrolled live. A clean shutdown
writes a checkpoint; the next server deletes a subject with a long ``FACESEARCH_CHECKPOINT_ERASE_S``
and is killed (SIGKILL) before the rewrite, so the checkpoint on disk still holds the subject (and
``erase-status`` says so, as pending). The restart uses that checkpoint (its log says so) and replays the
deletion on it: the subject is never listed, fetched or matched, and the checkpoint is rewritten
without it; a deletion made while serving leaves it within the (short) window too. Then the documented
procedure (compact, ``prune --keep 1``) completes the erasure: ``erase-status`` says complete and a
byte scan of the root finds neither the id nor the embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from facesearch.errors import NotFoundError
from facesearch.store.erasure_audit import erase_status
from facesearch.store.index_artifact import current_version
from facesearch.store.live_journal import LiveJournal
from indexer.main import main as index_main
from server.open_set_checkpoint import DATA_FILE, META_FILE
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import build_index, start_server, synthetic_embeddings, wait_until

pytestmark = pytest.mark.slow

ENV = {"FACESEARCH_MIN_SIMILARITY": "0.91"}


def _found(root: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def _absent(c: FaceSearchClient, gone: str, probe: Path, step: str) -> None:
    with pytest.raises(NotFoundError):
        c.get_identity(gone)
    assert gone not in {i.identity_id for i in c.list_identities(page_size=50)}, step
    found = {x.identity_id for f in c.identify(probe, top_k=10).faces for x in f.candidates}
    assert gone not in found, (step, found)


def _matched(c: FaceSearchClient, who: str, probe: Path, step: str) -> None:
    face = c.identify(probe, largest_only=True, top_k=10).faces[0]
    assert face.match is not None and face.match.identity_id == who, (step, face)


def test_a_restart_after_a_deletion_and_a_kill_uses_the_checkpoint_and_the_rewrite_erases_it(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root, logs = tmp_path / "index", tmp_path / "logs"
    emb, ids = synthetic_embeddings(120, seed=11)
    build_index(root, emb, ids, contract, work=tmp_path / "work")
    gone, later, kept = list(people)[:3]
    live = root / "live"
    checkpoint = live / DATA_FILE
    srv = start_server(server_bundle, root, logs, env=ENV)
    servers = [srv]
    try:
        with srv.client(timeout=120) as c:
            counts = {w: len(c.enroll(w, people[w][:3], use_largest_face=True).face_ids) for w in (gone, later, kept)}
            assert min(counts.values()) >= 1, counts
        snap = LiveJournal.open_reader(live).snapshot()
        secrets = {
            w: snap.embeddings[[i for i, f in enumerate(snap.faces) if f.identity_id == w]] for w in (gone, later)
        }
        assert srv.stop() == 0  # a clean shutdown checkpoints the live statistics
        seq = json.loads((live / META_FILE).read_text())["seq"]
        assert gone.encode() in checkpoint.read_bytes()

        # the rewrite is not due before the kill: the checkpoint on disk holds the subject
        srv = start_server(server_bundle, root, logs, env={**ENV, "FACESEARCH_CHECKPOINT_ERASE_S": "600"})
        servers.append(srv)
        with srv.client(timeout=120) as c:
            assert c.delete_identity(gone) == counts[gone]
        assert (live / META_FILE).is_file() and gone.encode() in checkpoint.read_bytes()
        status = erase_status(root, identity_id=gone)
        held = [h.what for h in status.subjects[0].holdings if h.path.endswith(DATA_FILE)]
        assert held and "pending" in held[0] and "FACESEARCH_CHECKPOINT_ERASE_S" in held[0], held
        assert index_main(["erase-status", str(root), gone]) == 1
        srv.kill()
        assert gone.encode() in checkpoint.read_bytes()

        srv = start_server(server_bundle, root, logs, env={**ENV, "FACESEARCH_CHECKPOINT_ERASE_S": "5"})
        servers.append(srv)
        wait_until(lambda: "open-set statistics:" in srv.log(), timeout=120, what="the install")
        assert f"(on the checkpoint at journal seq {seq})" in srv.log()  # not a full replay
        assert f"open-set checkpoint at journal seq {seq} predates 1 deletion(s)" in srv.log()
        with srv.client(timeout=120) as c:
            wait_until(lambda: c.health() == "SERVING", timeout=120, what="SERVING")
            _absent(c, gone, people[gone][4], "restart on the checkpoint")
            _matched(c, kept, people[kept][4], "restart on the checkpoint")
            wait_until(lambda: gone.encode() not in checkpoint.read_bytes(), timeout=60, what="the rewrite")
            assert "open-set checkpoint holds no erased subject any more" in srv.log()
            assert (live / META_FILE).is_file() and later.encode() in checkpoint.read_bytes()

            # a deletion while serving: out of the checkpoint within the window, which stays usable
            assert c.delete_identity(later) == counts[later]
            wait_until(lambda: later.encode() not in checkpoint.read_bytes(), timeout=60, what="the rewrite")
            assert (live / META_FILE).is_file() and kept.encode() in checkpoint.read_bytes()
            _absent(c, later, people[later][4], "deleted while serving")
            assert not [h for h in erase_status(root, identity_id=gone).subjects[0].holdings if DATA_FILE in h.path]

            # the rest of the documented procedure (README, "Erasure")
            assert index_main(["compact", str(root), "--quiet"]) == 0
            v2 = str(current_version(root))
            wait_until(lambda: c.stats()["index_version"] == v2, timeout=120, what="the compacted version served")
            assert index_main(["prune", str(root), "--keep", "1"]) == 0
            for who in (gone, later):
                wait_until(
                    lambda who=who: erase_status(root, identity_id=who).complete, timeout=60, what=f"{who} erased"
                )
            _absent(c, gone, people[gone][4], "after the procedure")
            _matched(c, kept, people[kept][4], "after the procedure")
        assert srv.stop() == 0
    finally:
        for server in servers:
            server.stop()
    for who in (gone, later):
        assert erase_status(root, identity_id=who).complete
        assert not _found(root, who.encode()), (who, _found(root, who.encode()))
        for row in secrets[who]:
            assert not _found(root, row.tobytes()), f"an embedding of {who} is still under {root}"
    assert index_main(["erase-status", str(root)]) == 0
