#!/usr/bin/env bash
# Export dlib's models into a bundle once (skipped when the bundle is already there and verifies).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${FACESEARCH_HOME:-.facesearch}/models/dlib}"
if [ -f "$out/manifest.json" ]; then
  echo "model bundle present: $out"
  exit 0
fi
.venv/bin/facesearch-export dlib --out "$out"
