"""Export a torch module to a reproducible ONNX file with our metadata.

``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``) is deterministic for
a fixed module and example; we add ``metadata_props`` (sorted) and write through a
temp file so that rerunning the export gives byte-identical files.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch

from facesearch.util.fs import write_atomic

OPSET = 17


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    out_path: Path,
    *,
    input_name: str,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    metadata: Mapping[str, str],
) -> None:
    module = module.eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks in the modules are constant for a trace; the tracer warns about each.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            module,
            (example,),
            buf,  # type: ignore[arg-type]  # torch accepts file objects
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name = "facesearch-export"
    model.producer_version = "1"
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(metadata[key])
    onnx.checker.check_model(model)
    data = model.SerializeToString(deterministic=True)
    write_atomic(out_path, data)
