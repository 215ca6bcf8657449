"""What a published index version holds on disk and what the server adds to it: the index artifact,
the identity store (the only SQL), the live journal, and the open-set build from a store.

Layer: storage. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs |
client) > storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors |
util | api) > reasons.

Modules (and the tests that cover them):

- ``audit_log``: The audit log of an index root: who enrolled, deleted, erased or unerased whom, and
  when. Tests: ``tests/integration/test_server_enroll_idempotency.py``,
  ``tests/integration/test_server_gallery_writes.py``, ``tests/unit/test_audit_log.py``.
- ``erasure_audit``: Where an erased subject's data still is under an index root: ``facesearch-index
  erase-status``. Tests: ``tests/integration/test_checkpoint_erasure.py``,
  ``tests/integration/test_server_erasure.py``.
- ``erasure_ledger``: The erasure ledger of an index root: every erased identity and face, durably,
  so that no path (a fresh build, ``add``, compaction, a rollback, a restart) brings an erased
  subject back. Tests: ``tests/integration/test_pg_store.py``,
  ``tests/integration/test_server_gallery_writes.py``, ``tests/unit/test_audit_log.py``,
  ``tests/unit/test_erasure_ledger.py``.
- ``identity_store``: The identity store of an index version: SQLite, one file, no photo pixels by
  default. Tests: ``tests/integration/test_indexer_embeddings.py``,
  ``tests/integration/test_indexer_images.py``, ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_pg_build.py``, ``tests/integration/test_server_erasure.py``,
  ``tests/integration/test_server_rebuild.py``, ``tests/unit/test_architecture.py``,
  ``tests/unit/test_erasure_ledger.py``, ``tests/unit/test_index_store.py``,
  ``tests/unit/test_open_set_store.py``.
- ``index_artifact``: The index artifact: what ``facesearch-index`` publishes and the server loads.
  Tests: ``tests/integration/test_batch_bad_photos.py``,
  ``tests/integration/test_checkpoint_erasure.py``,
  ``tests/integration/test_erasure_model_change.py``,
  ``tests/integration/test_index_exit_codes.py``, ``tests/integration/test_indexer_embeddings.py``,
  ``tests/integration/test_indexer_images.py``, ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_pg_build.py``, ``tests/integration/test_pg_erase_status.py``,
  ``tests/integration/test_pg_retention.py``, ``tests/integration/test_server_erasure.py``,
  ``tests/integration/test_server_rebuild.py``, ``tests/unit/test_erasure_ledger.py``,
  ``tests/unit/test_index_artifact.py``, ``tests/unit/test_index_tune.py``,
  ``tests/unit/test_manifests.py``.
- ``journal_check``: Checking and repairing a live journal (``facesearch-index journal
  check|repair``). Tests: ``tests/unit/test_journal_faults.py``.
- ``journal_db``: The live journal's SQLite file: its schema, its meta, and how it is opened. Tests:
  ``tests/integration/test_server_gallery_writes.py``, ``tests/unit/test_audit_log.py``.
- ``journal_retention``: Which live-journal changes a published version holds, and how much of the
  journal may be forgotten. Tests: ``tests/integration/test_pg_build.py``,
  ``tests/integration/test_pg_retention.py``, ``tests/unit/test_erasure_ledger.py``.
- ``journal_vectors``: The live journal's vectors file: append-only fixed-size records of (vector
  id, embedding, checksum). Tests: ``tests/integration/test_server_storage.py``,
  ``tests/unit/test_server_journal.py``.
- ``live_journal``: The live journal: enrollments and deletions made since the published index
  version was built. Tests: ``tests/integration/test_checkpoint_erasure.py``,
  ``tests/integration/test_index_exit_codes.py``, ``tests/integration/test_indexer_open_set.py``,
  ``tests/integration/test_pg_build.py``, ``tests/integration/test_pg_faults.py``,
  ``tests/integration/test_pg_replicas.py``, ``tests/integration/test_pg_retention.py``,
  ``tests/integration/test_pg_store.py``, ``tests/integration/test_server_erasure.py``,
  ``tests/integration/test_server_gallery.py``, ``tests/integration/test_server_gallery_writes.py``,
  ``tests/integration/test_server_model_change.py``, ``tests/unit/test_audit_log.py``,
  ``tests/unit/test_journal_faults.py``, ``tests/unit/test_open_set_checkpoint.py``,
  ``tests/unit/test_server_journal.py``.
- ``open_set_build``: The open-set statistics of a published version, built from its identity store.
  Tests: ``tests/unit/test_open_set_store.py``.
- ``sqlite_files``: The one way the store opens a small SQLite file that must survive a power loss
  and keep no deleted bytes (the erasure ledger, the audit log): WAL, ``synchronous = FULL``,
  ``secure_delete``. Tests: through its callers.
- ``storage_errors``: Storage failures as errors a caller can act on: a full or failing disk is
  UNAVAILABLE, not INTERNAL. Tests: ``tests/unit/test_journal_faults.py``.
- ``store_location``: Where the identity store and change log live: ``FACESEARCH_STORE``, read in
  this one place. Tests: ``tests/unit/test_replica_config.py``,
  ``tests/unit/test_store_location.py``.
- ``store_marker``: Which store an index root belongs to: ``ROOT/STORE``, written before the first
  version published from a PostgreSQL store. Tests: through its callers.
"""

from __future__ import annotations

from facesearch.store.audit_log import (
    AUDIT_FILE,
    DEFAULT_RETENTION_DAYS,
    AuditEntry,
    AuditLog,
    AuditOp,
)
from facesearch.store.erasure_audit import (
    EraseStatus,
    erase_status,
)
from facesearch.store.erasure_ledger import (
    ERASURE_SEQ_META,
    LEDGER_FILE,
    ErasedFace,
    ErasureKind,
    ErasureLedger,
    ErasureSet,
    StoreHits,
    erased_in_store,
    os_principal,
    purge_store,
    read_erasures,
)
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
    LEFTOVER_PATTERNS,
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
from facesearch.store.journal_check import (
    check,
    journal_dirs_of,
    repair,
)
from facesearch.store.journal_db import (
    JOURNAL_FILE,
    connect,
    count_requests,
    expire_requests,
    find_request,
    put_request,
    request_key,
)
from facesearch.store.journal_retention import (
    LIVE_DIR,
    NOTHING,
    Absorbed,
    absorbed_by,
    forget,
    retained_from,
)
from facesearch.store.journal_vectors import (
    FORMAT_CHECKSUMMED,
    HEADER_BYTES,
    RecordLayout,
    read_records,
)
from facesearch.store.live_journal import (
    CONTRACTS_DIR,
    JournalSnapshot,
    LiveFace,
    LiveIdentity,
    LiveJournal,
    NewFace,
    journal_dirs,
    journal_place,
)
from facesearch.store.open_set_build import (
    build_open_set_for_store,
    open_set_build_bytes,
)
from facesearch.store.storage_errors import storage_failure
from facesearch.store.store_location import (
    STORE_ENV,
    StoreKind,
    StoreLocation,
    parse_store,
    redact,
    require_postgres_driver,
    store_location,
)
from facesearch.store.store_marker import (
    mark_store_root,
    require_store,
)

__all__ = [
    "AUDIT_FILE",
    "CONTRACTS_DIR",
    "CURRENT",
    "DEFAULT_RETENTION_DAYS",
    "ERASURE_SEQ_META",
    "EXACT_FILE",
    "FORMAT_CHECKSUMMED",
    "HEADER_BYTES",
    "INDEX_FILE",
    "JOURNAL_FILE",
    "LEDGER_FILE",
    "LEFTOVER_PATTERNS",
    "LIVE_DIR",
    "MANIFEST",
    "NOTHING",
    "REFINE_CODEC_FILE",
    "REFINE_FILE",
    "REJECTS_FILE",
    "STORE_ENV",
    "STORE_FILE",
    "VECTOR_IDS_FILE",
    "Absorbed",
    "AuditEntry",
    "AuditLog",
    "AuditOp",
    "DiskRows",
    "EraseStatus",
    "ErasedFace",
    "ErasureKind",
    "ErasureLedger",
    "ErasureSet",
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
    "RecordLayout",
    "RefineStore",
    "SearchParams",
    "StoreHits",
    "StoreKind",
    "StoreLocation",
    "StoredFace",
    "StoredIdentity",
    "absorbed_by",
    "build_open_set_for_store",
    "check",
    "check_files",
    "connect",
    "count_requests",
    "current_version",
    "erase_status",
    "erased_in_store",
    "expire_requests",
    "find_request",
    "forget",
    "journal_dirs",
    "journal_dirs_of",
    "journal_place",
    "list_versions",
    "load_index",
    "mark_store_root",
    "open_set_build_bytes",
    "os_principal",
    "parse_store",
    "purge_store",
    "put_request",
    "read_erasures",
    "read_manifest",
    "read_records",
    "redact",
    "repair",
    "request_key",
    "require_postgres_driver",
    "require_store",
    "resolve_version_dir",
    "retained_from",
    "storage_failure",
    "store_location",
    "write_manifest",
]
