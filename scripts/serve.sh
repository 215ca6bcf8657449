#!/usr/bin/env bash
# The main job on embedded defaults: set up .venv, export the models once into
# $FACESEARCH_HOME/models/dlib, then run the gRPC server on $FACESEARCH_LISTEN (default
# 127.0.0.1:50051, loopback only; for the network set it with TLS and tokens: README "Security") over the index at $FACESEARCH_HOME/index (an empty gallery until one is
# published or faces are enrolled). Everything lives in local files and SQLite under
# $FACESEARCH_HOME (default: .facesearch in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
export FACESEARCH_HOME="${FACESEARCH_HOME:-$PWD/.facesearch}"
scripts/setup-venv.sh serve
scripts/export-models.sh "$FACESEARCH_HOME/models/dlib"
mkdir -p "$FACESEARCH_HOME/index"
# The bundle: $FACESEARCH_HOME/models/CURRENT once `facesearch models promote` has installed one,
# else the exported dlib bundle (see facesearch/bundle_location.py).
exec .venv/bin/facesearch-server --index "$FACESEARCH_HOME/index" --listen "${FACESEARCH_LISTEN:-127.0.0.1:50051}"
