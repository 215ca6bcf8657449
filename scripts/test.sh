#!/usr/bin/env bash
# Set up .venv with everything the tests need, then lint, type-check and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/python scripts/gen_package_index.py --check
.venv/bin/mypy
scripts/gen-proto.sh --check
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
