#!/usr/bin/env bash
# Benchmarks compare against `face_recognition` (dlib's own pipeline). It depends on the
# source package `dlib`, which does not build here; `dlib-bin` (test extra) provides the
# same module, so face_recognition is installed without its dependency list.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh dev
.venv/bin/python -m pip install --quiet --no-deps "face_recognition==1.3.0" "face_recognition_models==0.3.0"
.venv/bin/python -m pip install --quiet "Click>=6.0" "setuptools<81"  # face_recognition_models imports pkg_resources
