#!/usr/bin/env bash
# Run HERE, before a GPU check: puts into .whl/ (git-ignored) the wheels of the packages this
# project needs that the GPU machine's image lacks, at the versions this checkout's Python has
# installed, built for the image's CPython 3.12 on x86-64. benchmarks/gpu_check.sh installs them
# there (no index: that machine reaches nothing). Carry .whl and data-carry with the call.
# The list: the project's dependencies and theirs, less what the image already holds (its
# package list, 2026-11-17: torch, lightning, torchmetrics, numpy, pandas, scipy, matplotlib,
# onnx, onnxruntime, safetensors, pyyaml, tqdm, joblib, pillow, markupsafe ... are there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
PACKAGES=(optuna optuna-integration optuna-dashboard sqlalchemy alembic mako colorlog bottle
          pydantic pydantic-core annotated-types typing-inspection typing-extensions platformdirs)
pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -c 'import sys; from importlib.metadata import version; print(version(sys.argv[1]))' "$name") || {
    echo "error: $name is not installed in $PYTHON; run pip install -e \".[test]\" first" >&2; exit 2; }
  pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/: carry [\".whl\", \"data-carry\"] and run bash benchmarks/gpu_check.sh"
