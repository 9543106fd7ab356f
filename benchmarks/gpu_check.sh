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
# Needs a CUDA build of torch in $PYTHON (default python3). Extra arguments go to
# benchmarks/gpu_check.py, e.g. --quick for a CPU smoke run.
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
# (optuna_dashboard: the export writes the study's note with it, after the trials).
"$PYTHON" - <<'PY' || exit 2
import importlib.util, sys
needed = ["torch", "lightning", "torchmetrics", "optuna", "optuna_integration", "optuna_dashboard", "sqlalchemy",
          "pydantic", "yaml", "platformdirs", "tqdm", "joblib", "matplotlib", "PIL", "safetensors", "onnx", "onnxruntime", "pandas", "scipy"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"error: {sys.executable} lacks {', '.join(missing)}; run bash benchmarks/gpu_wheels.sh where pip works and carry .whl")
import torch
if not torch.cuda.is_available():
    print("warning: this torch sees no GPU; every figure is the CPU's", file=sys.stderr)
PY
exec timeout 480 "$PYTHON" -m benchmarks.gpu_check "$@"
