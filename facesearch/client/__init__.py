"""The Python client of the gRPC service (used by the ``facesearch`` CLI).

Layer: batch. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api) > reasons.

Modules (and the tests that cover them):

- ``service_client``: A Python client for the facesearch gRPC server. Tests:
  ``tests/integration/test_checkpoint_erasure.py``, ``tests/integration/test_crash_points.py``,
  ``tests/integration/test_erasure_model_change.py``, ``tests/integration/test_gallery_digest.py``,
  ``tests/integration/test_pg_build.py``, ``tests/integration/test_pg_crash_points.py``,
  ``tests/integration/test_pg_servers.py``, ``tests/integration/test_server_cohort.py``,
  ``tests/integration/test_server_decisions.py``,
  ``tests/integration/test_server_enroll_idempotency.py``,
  ``tests/integration/test_server_erasure.py``, ``tests/integration/test_server_large_photos.py``,
  ``tests/integration/test_server_rpcs.py``, ``tests/integration/test_server_security.py``,
  ``tests/unit/test_client_targets.py``, ``tests/unit/test_reasons.py``.
"""

from __future__ import annotations

from facesearch.client.service_client import (
    DEFAULT_TARGET,
    FaceSearchClient,
    RpcFailedError,
    ServerUnavailableError,
    channel_target,
    reported_error,
)

__all__ = [
    "DEFAULT_TARGET",
    "FaceSearchClient",
    "RpcFailedError",
    "ServerUnavailableError",
    "channel_target",
    "reported_error",
]
