#!/usr/bin/env bash
# GPU check (issue #15), one script, under 8 minutes: throughput raw loop vs fit() (deterministic
# algorithms on and off), same seed twice, the default run, a fixed-budget search with 1 and 4
# workers on one GPU, GPU memory per worker. Rows print as they are measured.
#
# On the GPU machine, which has torch, lightning and torchmetrics but not optuna and its kin,
# and reaches no package index:
#   here:  copy the four MNIST *-ubyte.gz files into data-carry/mnist (git-ignored), then
#          bash benchmarks/gpu_wheels.sh        (the missing packages' wheels into .whl/)
#   there: bash benchmarks/gpu_check.sh         (carry [".whl", "data-carry"])
# The wheels are installed into $SITE and put on PYTHONPATH (the searches it starts inherit it).
# Needs a CUDA build of torch in $PYTHON (default python3; the image's is 2.11, pyproject pins 2.13
# for the CPU: the check prints the versions it ran with). Extra arguments go to
# benchmarks/gpu_check.py, e.g. --quick for a CPU smoke run (without a GPU it refuses otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/mnist-search-site}"
export MNIST_DATA_DIR="${MNIST_DATA_DIR:-$PWD/data-carry/mnist}"
if [ ! -f "$MNIST_DATA_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "error: no MNIST at $MNIST_DATA_DIR; copy the four *-ubyte.gz files into data-carry/mnist" >&2
  exit 2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# Everything the check and the searches import, named at once rather than as a traceback later
# (optuna_dashboard: the export writes the study's note with it, after the trials), in two lists:
# what gpu_wheels.sh fetches (its PACKAGES, read from it) and what the image is expected to hold,
# which no wheel here brings. A GPU torch cannot see is refused by the check itself (exit 2).
"$PYTHON" - <<'PY' || exit 2
import importlib.util, re, sys
from pathlib import Path
wheels = re.search(r"PACKAGES=\(([^)]*)\)", Path("benchmarks/gpu_wheels.sh").read_text()).group(1).split()
image = ["torch", "lightning", "torchmetrics", "numpy", "pandas", "scipy", "matplotlib", "PIL", "safetensors", "onnx", "onnxruntime",
         "yaml", "tqdm", "joblib"]
no_wheel = [name for name in wheels if importlib.util.find_spec(name.replace("-", "_")) is None]
no_image = [name for name in image if importlib.util.find_spec(name) is None]
why = ([f"{', '.join(no_wheel)} (run bash benchmarks/gpu_wheels.sh where pip works and carry .whl)"] if no_wheel else []) + (
    [f"{', '.join(no_image)}, which the image should hold and gpu_wheels.sh does not fetch (add them to its PACKAGES)"] if no_image else [])
if why:
    sys.exit(f"error: {sys.executable} lacks {'; and '.join(why)}")
PY
exec timeout 480 "$PYTHON" -m benchmarks.gpu_check "$@"
