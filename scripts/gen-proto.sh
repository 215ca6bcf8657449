#!/usr/bin/env bash
# Regenerate the committed gRPC stubs (facesearch/api/v1) from proto/facesearch/v1/*.proto.
#   scripts/gen-proto.sh           rewrite the stubs
#   scripts/gen-proto.sh --check   regenerate into a temp dir and fail if the committed stubs differ (CI)
# The descriptors keep their proto path (facesearch/v1/facesearch.proto), which is what server
# reflection shows; only the Python import path is moved under facesearch.api.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
out="facesearch/api/v1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$python" -m grpc_tools.protoc -Iproto \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  proto/facesearch/v1/*.proto

mkdir -p "$tmp/api/v1"
for f in "$tmp"/facesearch/v1/*.py "$tmp"/facesearch/v1/*.pyi; do
  sed -e 's/^from facesearch\.v1 import/from facesearch.api.v1 import/' "$f" > "$tmp/api/v1/$(basename "$f")"
done
# The grpc plugin writes untyped code and no .pyi: keep mypy (which follows imports) out of it.
for f in "$tmp"/api/v1/*_grpc.py; do
  { echo "# mypy: ignore-errors"; cat "$f"; } > "$f.tmp" && mv "$f.tmp" "$f"
done
printf '"""Generated gRPC stubs of proto/facesearch/v1 (scripts/gen-proto.sh); do not edit."""\n' \
  > "$tmp/api/v1/__init__.py"

if [ "${1:-}" = "--check" ]; then
  if diff -r -x __pycache__ "$tmp/api/v1" "$out"; then
    echo "gen-proto: stubs are up to date"
  else
    echo "gen-proto: committed stubs differ from proto/; run scripts/gen-proto.sh" >&2
    exit 1
  fi
  exit 0
fi

mkdir -p "$out"
rm -f "$out"/*.py "$out"/*.pyi
cp "$tmp"/api/v1/* "$out"/
[ -f facesearch/api/__init__.py ] || printf '"""Generated API stubs."""\n' > facesearch/api/__init__.py
echo "gen-proto: wrote $(ls "$out" | tr '\n' ' ')"
