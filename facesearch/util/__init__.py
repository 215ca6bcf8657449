"""Filesystem primitives shared by every writer: the one atomic file writer, directory replacement
and pointer switch, and file digests.

Layer: base. Layers, top to bottom: apps > torch (nets) > eval (evaluation) > batch (jobs | client)
> storage (store) > pipeline (vision) > models (bundle) > scores (scoring) > base (errors | util |
api).

Modules (and the tests that cover them):

- ``fs``: Replacing a whole directory (a model bundle) so that readers see the old one or the new
  one. Tests: through its callers.
"""

from __future__ import annotations

from facesearch.util.fs import replace_dir

__all__ = [
    "replace_dir",
]
