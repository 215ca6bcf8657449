"""Creating onnxruntime sessions the one way facesearch does it.

Sessions are created once at startup with explicit thread settings, and the
execution providers actually in use are logged: silently running on the CPU when
a GPU was expected is a classic onnxruntime trap.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from facesearch.errors import ModelFormatError

log = logging.getLogger(__name__)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def create_session(path: Path, *, intra_op_threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Spinning worker threads burn a core while idle; on a shared or busy machine (a server
    # with several sessions, two worker processes) they slow everything down.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped exceptions
        raise ModelFormatError(f"cannot load ONNX model {path}: {err}") from err
    log.info(
        "onnx session %s: providers=%s intra_op_threads=%d",
        path.name,
        session.get_providers(),
        options.intra_op_num_threads,
    )
    return session
