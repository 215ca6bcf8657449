"""What a published index version holds on disk and what the server adds to it: the index artifact,
the identity store (the only SQL), the live journal, and the open-set build from a store.

Layer: storage. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs |
client) > storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors |
util | api).

Modules (and the tests that cover them):

- ``identity_store``: The identity store of an index version: SQLite, one file, no photo pixels by
  default. Tests: ``tests/integration/test_indexer_embeddings.py``,
  ``tests/integration/test_indexer_images.py``, ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_server_rebuild.py``, ``tests/unit/test_architecture.py``,
  ``tests/unit/test_index_store.py``, ``tests/unit/test_open_set_store.py``.
- ``index_artifact``: The index artifact: what ``facesearch-index`` publishes and the server loads.
  Tests: ``tests/integration/test_indexer_embeddings.py``,
  ``tests/integration/test_indexer_images.py``, ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_server_rebuild.py``, ``tests/unit/test_index_artifact.py``,
  ``tests/unit/test_index_tune.py``, ``tests/unit/test_manifests.py``.
- ``live_journal``: The live journal: enrollments and deletions made since the published index
  version was built. Tests: ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_server_gallery.py``, ``tests/integration/test_server_model_change.py``,
  ``tests/unit/test_server_journal.py``.
- ``open_set_build``: The open-set statistics of a published version, built from its identity store.
  Tests: ``tests/unit/test_open_set_store.py``.
"""

from __future__ import annotations

from facesearch.store.identity_store import (
    FaceRows,
    IdentityStore,
    StoredFace,
    StoredIdentity,
)
from facesearch.store.index_artifact import (
    CURRENT,
    EXACT_FILE,
    INDEX_FILE,
    MANIFEST,
    REFINE_CODEC_FILE,
    REFINE_FILE,
    REJECTS_FILE,
    STORE_FILE,
    VECTOR_IDS_FILE,
    DiskRows,
    FileEntry,
    IndexManifest,
    IndexSearcher,
    LoadedIndex,
    RecallReport,
    RefineStore,
    SearchParams,
    check_files,
    current_version,
    list_versions,
    load_index,
    read_manifest,
    resolve_version_dir,
    write_manifest,
)
from facesearch.store.live_journal import (
    CONTRACTS_DIR,
    LIVE_VECTOR_ID_BASE,
    JournalSnapshot,
    LiveFace,
    LiveIdentity,
    LiveJournal,
    NewFace,
    journal_place,
)
from facesearch.store.open_set_build import (
    build_open_set_for_store,
    open_set_build_bytes,
)

__all__ = [
    "CONTRACTS_DIR",
    "CURRENT",
    "EXACT_FILE",
    "INDEX_FILE",
    "LIVE_VECTOR_ID_BASE",
    "MANIFEST",
    "REFINE_CODEC_FILE",
    "REFINE_FILE",
    "REJECTS_FILE",
    "STORE_FILE",
    "VECTOR_IDS_FILE",
    "DiskRows",
    "FaceRows",
    "FileEntry",
    "IdentityStore",
    "IndexManifest",
    "IndexSearcher",
    "JournalSnapshot",
    "LiveFace",
    "LiveIdentity",
    "LiveJournal",
    "LoadedIndex",
    "NewFace",
    "RecallReport",
    "RefineStore",
    "SearchParams",
    "StoredFace",
    "StoredIdentity",
    "build_open_set_for_store",
    "check_files",
    "current_version",
    "journal_place",
    "list_versions",
    "load_index",
    "open_set_build_bytes",
    "read_manifest",
    "resolve_version_dir",
    "write_manifest",
]
