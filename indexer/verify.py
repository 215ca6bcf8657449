"""``facesearch-index verify``: re-check every file's sha256, the index/store consistency, and
re-measure recall against exact search with the manifest's parameters.

By default the held-out queries are drawn with the build's seed, so the figures reproduce the
manifest's (a changed figure means a changed index); ``--seed`` draws a fresh sample.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from facesearch.store.identity_store import IdentityStore
from facesearch.store.index_artifact import STORE_FILE, check_files, load_index, read_manifest, resolve_version_dir
from indexer.add import ExactAccumulator
from indexer.config import VerifyConfig
from indexer.index_stage import GT_K, QUERY_STREAM, set_threads
from indexer.plan import chunk_rows
from indexer.train import sample_vector_ids
from indexer.tune import IdentityLookup, measure


@dataclass(slots=True)
class VerifyReport:
    version: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    ntotal: int = 0
    recall: dict[str, Any] | None = None
    seconds: float = 0.0

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)


def run(config: VerifyConfig) -> VerifyReport:
    set_threads(config.threads)
    t0 = time.perf_counter()
    vdir = resolve_version_dir(config.root / config.version if config.version else config.root)
    manifest = read_manifest(vdir)
    report = VerifyReport(version=manifest.version, files_checked=len(manifest.files))
    for problem in check_files(vdir, manifest):
        report.fail(problem)
    if not report.ok:
        report.seconds = round(time.perf_counter() - t0, 2)
        return report
    index = load_index(vdir)
    report.ntotal = index.ntotal
    with IdentityStore.open(vdir / STORE_FILE) as store:
        if store.contract_id != manifest.contract_id:
            report.fail(f"store contract {store.contract_id} != manifest contract {manifest.contract_id}")
        vids, keys = store.vector_identity_keys()
        if not np.array_equal(vids, index.vector_ids):
            report.fail(f"the store's {len(vids)} vector ids differ from the index's {len(index.vector_ids)}")
        if config.recall and report.ok and len(vids):
            built = manifest.config.get("index", {})
            seed = int(built.get("seed", 0)) if config.seed < 0 else config.seed
            nq = min(config.queries or int(built.get("queries", 1000)), len(vids))
            qids = sample_vector_ids(vids, nq, seed, stream=QUERY_STREAM)
            acc = ExactAccumulator(qids, store.embeddings_by_ids(qids), min(GT_K, len(vids)))
            with tqdm(total=len(vids), desc="exact", unit="face", disable=not config.progress) as bar:
                for chunk_ids, x, _ in store.iter_embeddings(chunk_rows(store.d, 1 << 30)):
                    acc.add(x, chunk_ids)
                    bar.update(len(chunk_ids))
            m = measure(index, acc.result(), IdentityLookup(vids, keys), manifest.search)
            target = manifest.recall
            report.recall = {
                "queries": nq,
                "seed": seed,
                **asdict(m.params),
                "recall_at_1": round(m.recall_at_1, 5),
                "recall_at_10": round(m.recall_at_10, 5),
                "identity_agreement": round(m.identity_agreement, 5),
                "manifest": asdict(target) if target else None,
            }
            if (
                target is not None
                and target.met
                and not m.meets(target.target_recall_at_1, target.target_identity_agreement)
            ):
                report.fail(
                    f"recall@1 {m.recall_at_1:.4f} / identity agreement {m.identity_agreement:.4f} below "
                    f"the targets {target.target_recall_at_1} / {target.target_identity_agreement}"
                )
            elif target is not None and m.recall_at_1 < target.recall_at_1 - 0.01:
                report.fail(f"recall@1 {m.recall_at_1:.4f} is below the {target.recall_at_1:.4f} measured at build")
    report.seconds = round(time.perf_counter() - t0, 2)
    return report
