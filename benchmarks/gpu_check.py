"""GPU check (issue #15): on one machine, side by side, what the GPU gives a search.

1. training throughput on the device: a raw PyTorch loop vs `fit()` (same MLP, batch, Adam,
   rows already on the device), train samples/s with epoch 1 (warm-up) excluded;
2. the default run (`python -m search.run`: stop at 0.95, export): wall time, best test accuracy;
3. a `--target-accuracy none` search of `--trials` trials with 1 worker and with 4 workers on
   one GPU (`--workers-per-device 4`): wall time, finished trials, best test accuracy. Each run
   starts no new trial after `--search-timeout` seconds, so the whole check stays under 8 minutes;
   the table says how many trials finished;
4. GPU memory of one worker: the split on the device plus the largest model the space allows
   (3 x 1024 units, batch 256), from torch.cuda.max_memory_allocated in this process.

    bash benchmarks/gpu_check.sh                   # on the GPU machine (reads data-carry/mnist)
    python -m benchmarks.gpu_check --quick         # CPU smoke run: tiny data, 1 epoch, the default run only
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import PYTHON, ROOT, bench_env, cli, integer, load_mnist_split, machine_line, number, parser, table
from benchmarks.throughput import BATCH, DROPOUT, HIDDEN, LR, SEED, _epoch_timer, hyperparams

HEADER = "| measurement"
TEST_ACC = re.compile(r"test_acc=([0-9.]+)")
MAX_SEARCH_SECONDS = 3600.0  # --search-timeout: the check is meant to fit in minutes
KILL_AFTER = 600.0  # a search still running after this (or --search-timeout + EXPORT_MARGIN) is killed
EXPORT_MARGIN = 490.0  # seconds after --search-timeout for the last trial and the export


def pick_device(quick: bool) -> str:
    """The GPU the product itself would pick (cuda:0), or the CPU in quick mode / without one."""
    return "cuda:0" if torch.cuda.is_available() and not quick else "cpu"


def _sync(device: str) -> None:
    """GPU work is asynchronous: time only what has finished."""
    if device != "cpu":
        torch.cuda.synchronize()


def raw_loop(split, device: str, epochs: int) -> float:  # noqa: ANN001
    """Train samples/s of a plain loop over rows already on `device` (epoch 1 excluded)."""
    from lightning_modules.data.format import N_CLASSES, N_PIXELS
    from lightning_modules.network import build_network

    torch.manual_seed(SEED)
    net = build_network(N_PIXELS, HIDDEN, N_CLASSES, DROPOUT).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, **({"fused": True} if device != "cpu" else {}))
    x, y = split.x_train.to(device), split.y_train.to(device)
    seconds = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        perm = torch.randperm(len(y), device=device)
        for i in range(0, len(y), BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return len(y) * (epochs - 1) / sum(seconds[1:])


def fit_loop(split, device: str, epochs: int) -> float:  # noqa: ANN001
    """Train samples/s of `fit()` on `device`, the split moved there once (epoch 1 excluded)."""
    from lightning_modules.training import fit

    timer = _epoch_timer()
    fit(hyperparams(), split.to(device), seed=SEED, max_epochs=epochs, callbacks=[timer], device=device)
    times = timer.times[1:]
    return len(split.y_train) * len(times) / sum(t for t, _ in times)


def worker_memory(split, device: str) -> str:  # noqa: ANN001
    """Peak GPU memory of one worker training the largest model the default space allows."""
    if device == "cpu":
        return "n/a (CPU)"
    from lightning_modules.hyperparams import HyperParams
    from lightning_modules.training import fit

    torch.cuda.reset_peak_memory_stats()
    fit(HyperParams("dnn", (1024, 1024, 1024), 0.2, 1e-3, "adam", 0.0, 256), split.to(device), seed=SEED, max_epochs=1, device=device)
    return f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"


def search_run(args: list[str], timeout: float) -> tuple[float, int, str]:
    """(wall seconds, finished trials, best test accuracy) of one `python -m search.run` in its own home."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([PYTHON, "-m", "search.run", *args], cwd=ROOT, env=bench_env(Path(tmp)),
                              capture_output=True, text=True, timeout=timeout, check=False)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return wall, 0, f"failed (exit {done.returncode})"
    finished = len([line for line in done.stdout.splitlines() if line.startswith("trial ")])
    found = TEST_ACC.search(done.stdout)
    return wall, finished, found.group(1) if found else "n/a"


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="CPU smoke run: 3,000/1,000 rows, 1-epoch trials, only the default run (to target 0.8, with export)")
    flags.add_argument("--trials", type=integer(1, 1000), default=100)
    flags.add_argument("--max-epochs", type=integer(1, 100), default=3, help="epochs per trial in the fixed-budget searches")
    flags.add_argument("--search-timeout", type=number(0, MAX_SEARCH_SECONDS, low_open=True), default=110,
                       help="seconds after which a search starts no new trial")
    args = flags.parse_args(argv)
    from lightning_modules.training import quiet_lightning

    quiet_lightning()
    device = pick_device(args.quick)
    split = load_mnist_split(3000, 1000) if args.quick else load_mnist_split()
    epochs = 2 if args.quick else 3
    shown = f"{device} ({torch.cuda.get_device_name(0)})" if device != "cpu" else "cpu"
    print(f"# GPU check on {shown}: {len(split.y_train)} train rows; torch {torch.__version__}")
    print(machine_line())
    rows: list[tuple[object, ...]] = [
        ("raw PyTorch loop, train samples/s", shown, raw_loop(split, device, epochs)),
        ("fit(), train samples/s", shown, fit_loop(split, device, epochs)),
        ("GPU memory of one worker (largest model)", shown, worker_memory(split, device)),
    ]
    print(table(["measurement", "device", "value"], rows), flush=True)

    accelerator = ["--accelerator", "cpu"] if device == "cpu" else ["--accelerator", "gpu"]
    small = ["--train-size", "1000", "--val-size", "500", "--max-epochs", "1"] if args.quick else []
    trials, many = (4, 2) if args.quick else (args.trials, 4)
    fixed = [*accelerator, *small, "--target-accuracy", "none", "--trials", str(trials)]
    if not args.quick:
        fixed += ["--max-epochs", str(args.max_epochs), "--timeout", str(args.search_timeout)]
    runs = [
        ("default run (export; quick: target 0.8)" if args.quick else "default run (target 0.95, export)",
         [*accelerator, *small] + (["--target-accuracy", "0.8"] if args.quick else [])),
        (f"{trials} trials, target none, 1 worker", [*fixed, "--workers", "1"]),
        (f"{trials} trials, target none, {many} workers on one device", [*fixed, "--workers", str(many), "--workers-per-device", str(many)]),
    ]
    if args.quick:  # the smoke run: the script's every function once; the searches' flags are the product's to test
        del runs[1:]
    results = []
    for name, run_args in runs:
        wall, finished, test_acc = search_run(run_args, timeout=max(KILL_AFTER, args.search_timeout + EXPORT_MARGIN))
        results.append((name, wall, finished, test_acc))
        print(f"  {name}: {wall:.1f} s, {finished} trials, best test accuracy {test_acc}", file=sys.stderr, flush=True)
    print(table(["run", "wall s", "trials finished", "best test accuracy"], results))
    return 0


if __name__ == "__main__":
    cli(main)
