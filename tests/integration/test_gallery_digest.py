"""GetStats' gallery digest (issue 14: replicas compared value by value) on a real server.

A small synthetic published index plus LFW identities enrolled live (one of them then deleted, a
face of another deleted): the digest is only sent when asked for; its counts are GetStats'; its
identities are ListIdentities'; its faces_sha256 is the one computed from every identity's face ids
(GetIdentity); its cohort mean of an enrolled identity is the one an Identify reports in its score
details; and a restart (replay of the live journal on the checkpoint) serves an equal digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from facesearch.api.v1 import facesearch_pb2 as pb
from facesearch.api.v1 import facesearch_pb2_grpc as pb_grpc
from facesearch.bundle.manifest import ModelBundle
from facesearch.client.service_client import FaceSearchClient
from tests.integration.server_fixtures import *  # noqa: F403
from tests.integration.server_fixtures import build_index, start_server, synthetic_embeddings

pytestmark = pytest.mark.slow


def _stats(target: str, digest: bool) -> pb.Stats:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.FaceSearchStub(channel).GetStats(pb.GetStatsRequest(include_gallery_digest=digest), timeout=60)


def _expected_sha(c: FaceSearchClient) -> tuple[list[str], str, int]:
    sha = hashlib.sha256()
    ids, faces = [], 0
    for ident in c.list_identities(page_size=50):
        full = c.get_identity(ident.identity_id, include_faces=True)
        vids = sorted(int(f.face_id) for f in full.faces)
        if not vids:
            continue
        ids.append(ident.identity_id)
        faces += len(vids)
        sha.update(f"{ident.identity_id}\t{','.join(map(str, vids))}\n".encode())
    return ids, sha.hexdigest(), faces


def test_the_gallery_digest_is_what_the_server_serves_and_survives_a_restart(
    server_bundle: Path, tmp_path: Path, people: dict[str, list[Path]]
) -> None:
    contract = ModelBundle.load(server_bundle, verify=False).contract_id
    root, logs = tmp_path / "index", tmp_path / "logs"
    emb, ids = synthetic_embeddings(80, seed=13)
    build_index(root, emb, ids, contract, work=tmp_path / "work")
    who = list(people)[:4]
    srv = start_server(server_bundle, root, logs)
    try:
        with srv.client(timeout=120) as c:
            for w in who:
                assert c.enroll(w, people[w][:3], use_largest_face=True).face_ids
            c.delete_identity(who[3])
            several = c.get_identity(who[1], include_faces=True).faces
            if len(several) > 1:
                c.delete_faces([several[0].face_id])
            plain = _stats(srv.target, digest=False)
            assert not plain.HasField("gallery_digest")
            stats = _stats(srv.target, digest=True)
            d = stats.gallery_digest
            want_ids, want_sha, want_faces = _expected_sha(c)
            assert (d.faces, d.identities) == (stats.faces, stats.identities) == (want_faces, len(want_ids))
            assert list(d.identity_ids) == want_ids and who[3] not in want_ids
            assert d.faces_sha256 == want_sha
            assert d.open_set_failure == "" and d.open_set_identities == len(want_ids)
            assert np.isfinite(d.cohort_means).all() and np.isfinite(d.template_projections).all()
            mean_of = dict(zip(d.identity_ids, d.cohort_means, strict=True))
            [face] = c.identify(people[who[0]][-1], top_k=3, largest_only=True).faces
            top = face.candidates[0]
            assert top.identity_id == who[0] and top.details is not None
            # the reply rounds score details to 3 decimals
            assert top.details.identity_cohort_mean == pytest.approx(mean_of[who[0]], abs=5.01e-4)
    finally:
        srv.stop()
    again = start_server(server_bundle, root, logs)
    try:
        d2 = _stats(again.target, digest=True).gallery_digest
    finally:
        again.stop()
    assert (d2.faces, d2.identities, d2.faces_sha256) == (d.faces, d.identities, d.faces_sha256)
    assert list(d2.identity_ids) == list(d.identity_ids)
    np.testing.assert_allclose(d2.cohort_means, d.cohort_means, atol=1e-6)
    np.testing.assert_allclose(d2.template_projections, d.template_projections, atol=1e-6)
