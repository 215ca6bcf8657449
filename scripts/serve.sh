#!/usr/bin/env bash
# The main job on embedded defaults: set up .venv, export the models once into
# .facesearch/models/dlib, then run. Until the gRPC server lands (issue #4) the job is
# `facesearch embed` over a folder of photos (default: the shared LFW dev set), writing
# .facesearch/embeddings.npz.
set -euo pipefail
cd "$(dirname "$0")/.."
export FACESEARCH_HOME="${FACESEARCH_HOME:-$PWD/.facesearch}"
scripts/setup-venv.sh serve
scripts/export-models.sh "$FACESEARCH_HOME/models/dlib"
images="${1:-${FACESEARCH_DATA:-../shared/data}/lfw-dev/images}"
if [ ! -d "$images" ] && [ ! -f "$images" ]; then
  echo "serve.sh: no images at $images; pass a folder or a list file: scripts/serve.sh PHOTOS" >&2
  exit 2
fi
exec .venv/bin/facesearch embed --bundle "$FACESEARCH_HOME/models/dlib" --list "$images" \
  --out "$FACESEARCH_HOME/embeddings.npz"
