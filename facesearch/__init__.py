"""facesearch: the shared library of the face identification service.

The apps (``server/``, ``indexer/``, ``export/``, ``training/`` and :mod:`facesearch.cli`) import
this library and never one another. The library is in layers; a layer imports only the layers
below it (``|`` marks siblings that do not import each other). The rules are import-linter
contracts in ``pyproject.toml``, checked by ``scripts/test.sh``.

==========  ===================================  =================================================
layer       package                              what it holds
==========  ===================================  =================================================
apps        :mod:`facesearch.cli`                the ``facesearch`` command (embed, eval, client calls)
torch       :mod:`facesearch.nets`               dlib readers, torch networks, checkpoints (torch only)
eval        :mod:`facesearch.evaluation`         pairs and 1:N protocols, calibration measurement, promotion
batch       :mod:`facesearch.jobs` |             the resumable sharded runner, photo inputs, ``embed``;
            :mod:`facesearch.client`             the gRPC client
storage     :mod:`facesearch.store`              index artifact, identity store (the only SQL), live journal
pipeline    :mod:`facesearch.vision`             decode, detect, landmarks, align, embed, face selection
models      :mod:`facesearch.bundle`             the model-bundle format and where bundles live
scores      :mod:`facesearch.scoring`            normalised scores, templates, cohort, thresholds, decisions
base        :mod:`facesearch.errors` |           the error hierarchy and its reasons;
            :mod:`facesearch.util` |             atomic files and pointer switches;
            :mod:`facesearch.api`                generated gRPC stubs (``scripts/gen-proto.sh``)
reasons     :mod:`facesearch.reasons`            every error reason, declared once with its status code
==========  ===================================  =================================================

Each subpackage's docstring indexes its modules and the tests that cover them, and its
``__all__`` lists the names other packages use. Nothing is loaded at import time: models and
indices are loaded explicitly by the apps.
"""

__version__ = "0.1.0"
