#!/usr/bin/env bash
# GPU check (issue #15), one script, under 8 minutes on an H200: throughput raw loop vs fit(),
# the default run, a fixed-budget search with 1 and 4 workers on one GPU, GPU memory per worker.
# The GPU machine has no ../shared: MNIST is read from data-carry/mnist in the repository
# (git-ignored; copy the four *-ubyte.gz files there and carry the folder). Needs a CUDA build
# of torch in the Python it runs ($PYTHON, else python). Extra arguments go to
# benchmarks/gpu_check.py, e.g. --quick for a CPU smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
export MNIST_DATA_DIR="${MNIST_DATA_DIR:-$PWD/data-carry/mnist}"
if [ ! -f "$MNIST_DATA_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "error: no MNIST at $MNIST_DATA_DIR; copy the four *-ubyte.gz files into data-carry/mnist" >&2
  exit 2
fi
"${PYTHON:-python}" -c 'import torch; torch.cuda.is_available() or print("warning: this torch sees no GPU; every figure is the CPU'"'"'s")' >&2
exec timeout 470 "${PYTHON:-python}" -m benchmarks.gpu_check "$@"
