"""GPU check (issue #15): on one machine, side by side, what the GPU gives a search.

1. training throughput on the device: a raw PyTorch loop vs `fit()` (same MLP, batch, Adam,
   rows already on the device, TF32 for both), train samples/s with epoch 1 (warm-up) excluded;
   `fit()` as the product runs it (deterministic algorithms on a GPU) and with them off: their cost;
2. the same seed twice through `fit()`: are the weights equal bit for bit?
3. GPU memory of one worker in this process: the split on the device plus the largest model the
   space allows (3 x 1024 units, batch 256), allocated and reserved by torch (no CUDA context);
4. the default run (`python -m search.run`: stop at 0.95, export): wall time, best test accuracy;
5. a `--target-accuracy none` search of up to `--trials` trials with 1 worker and with 4 workers
   on one GPU (`--workers-per-device 4`), each starting no new trial after `--search-timeout`
   seconds so the whole check fits its `--budget`: wall time, trials finished and per minute,
   best test accuracy, and each process's GPU memory as nvidia-smi samples it every second
   (CUDA context and allocator cache included; first to last sample shows whether it stays flat).

Each row is printed as soon as it is measured, and a search is killed when what is left of the
budget would not fit the searches after it, so a check cut short still leaves its rows.

    bash benchmarks/gpu_check.sh                   # on the GPU machine (reads data-carry/mnist)
    python -m benchmarks.gpu_check --quick         # CPU smoke run: tiny data, 1 epoch, the default run only
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import torch
import torch.nn.functional as F

from benchmarks._common import PYTHON, ROOT, bench_env, cli, integer, load_mnist_split, machine_line, number, parser, table
from benchmarks.throughput import BATCH, DROPOUT, HIDDEN, LR, SEED, hyperparams

HEADER = "| measurement"
TEST_ACC = re.compile(r"test_acc=([0-9.]+)")
MAX_SEARCH_SECONDS = 3600.0  # --search-timeout: the check is meant to fit in minutes
MAX_BUDGET = 7200.0
DEFAULT_BUDGET = 450.0  # gpu_check.sh stops everything at 480 s: 8 minutes
KILL_AFTER = 600.0  # no search runs longer than this
STOP_GRACE = 30.0  # seconds a search stopped by SIGTERM has to stop its workers before it is killed
RESERVE = 60.0  # seconds kept for each search still to come when one is given its kill deadline
MEASUREMENTS = ["measurement", "device", "value"]
RUNS = ["run", "wall s", "trials finished", "trials/min", "best test accuracy", "GPU memory per process (nvidia-smi)"]


def pick_device(quick: bool) -> str:
    """The GPU the product itself would pick (cuda:0), or the CPU in quick mode / without one."""
    return "cuda:0" if torch.cuda.is_available() and not quick else "cpu"


def _sync(device: str) -> None:
    """GPU work is asynchronous: time only what has finished."""
    if device != "cpu":
        torch.cuda.synchronize()


def print_row(headers: Sequence[str], row: Sequence[object]) -> None:
    """One Markdown table row, printed the moment it is measured (the header went out before)."""
    print(table(headers, [row]).splitlines()[-1], flush=True)


def raw_loop(split, device: str, epochs: int) -> float:  # noqa: ANN001
    """Train samples/s of a plain loop over rows already on `device` (epoch 1 excluded), with the
    matmul precision `fit` uses there (TF32 on a GPU), so the two differ only by the framework."""
    from lightning_modules.data.format import N_CLASSES, N_PIXELS
    from lightning_modules.network import build_network
    from lightning_modules.training import prepare_device

    prepare_device(device)
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


def _train_timer(device: str):  # noqa: ANN202
    """A callback timing each epoch's training (start -> validation start), the GPU synchronized at
    both marks: without it the mark falls when Python has launched the kernels, not when they ran."""
    import lightning.pytorch as pl

    class TrainTimer(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            _sync(device)
            self._start = time.perf_counter()

        def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            _sync(device)
            self.seconds.append(time.perf_counter() - self._start)

    return TrainTimer()


def fit_loop(split, device: str, epochs: int, **trainer_overrides: object) -> float:  # noqa: ANN001
    """Train samples/s of `fit()` on `device`, the split moved there once (epoch 1 excluded)."""
    from lightning_modules.training import fit

    timer = _train_timer(device)
    fit(hyperparams(), split.to(device), seed=SEED, max_epochs=epochs, callbacks=[timer], device=device, **trainer_overrides)
    return len(split.y_train) * (len(timer.seconds) - 1) / sum(timer.seconds[1:])


def same_seed_twice(split, device: str) -> str:  # noqa: ANN001
    """Two one-epoch fits with one seed, as the product runs them: equal weights, or how far apart."""
    from lightning_modules.training import fit

    first, second = (fit(hyperparams(), split.to(device), seed=SEED, max_epochs=1, device=device).model.requires_grad_(False) for _ in range(2))
    gaps = [float((a - b).abs().max()) for a, b in zip(first.parameters(), second.parameters(), strict=True)]
    return "yes, bit for bit" if max(gaps) == 0 else f"no: largest difference {max(gaps):.2g}"


def worker_memory(split, device: str) -> str:  # noqa: ANN001
    """Peak GPU memory of one worker training the largest model the default space allows."""
    if device == "cpu":
        return "n/a (CPU)"
    from lightning_modules.hyperparams import HyperParams
    from lightning_modules.training import fit

    gc.collect()  # Lightning's trainers hold reference cycles: the earlier rows' copies of the split
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fit(HyperParams("dnn", (1024, 1024, 1024), 0.2, 1e-3, "adam", 0.0, 256), split.to(device), seed=SEED, max_epochs=1, device=device)
    return f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB allocated, {torch.cuda.max_memory_reserved() / 2**20:,.0f} MiB reserved"


class MemorySampler:
    """Each GPU process's memory as nvidia-smi reports it, sampled every second while a run goes."""

    QUERY = ("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")

    def __init__(self) -> None:
        self.samples: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=10, check=False).stdout
            except (OSError, subprocess.SubprocessError):
                return  # no nvidia-smi (a CPU machine): the summary says n/a
            for line in out.splitlines():
                pid, _, mib = line.partition(",")
                if mib.strip().isdigit():
                    self.samples.setdefault(pid.strip(), []).append(int(mib.strip()))

    def summary(self) -> str:
        series = [s for s in self.samples.values() if len(s) >= 2]  # a process seen once cannot show a trend
        if not series:
            return "n/a (nvidia-smi gave no samples)"
        growth = max(s[-1] - s[0] for s in series)
        return f"{len(series)} process(es): peak {max(max(s) for s in series):,} MiB, first to last sample {growth:+,} MiB at most"


class NoSampler(MemorySampler):
    """A CPU run's stand-in: nothing to sample."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def summary(self) -> str:
        return "none (CPU)"


def search_run(args: list[str], timeout: float, gpu: bool) -> tuple[float, int, str, str]:
    """(wall seconds, finished trials, best test accuracy, GPU memory) of one `python -m
    search.run` in its own home; killed (and said so) after `timeout` seconds."""
    # ignore_cleanup_errors: a stopped run's workers may still be writing their last checkpoint
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp, (MemorySampler() if gpu else NoSampler()) as memory:
        start = time.perf_counter()
        run = subprocess.Popen([PYTHON, "-m", "search.run", *args], cwd=ROOT, env=bench_env(Path(tmp)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.terminate()  # SIGTERM: the runner stops its workers (SIGKILL would leave them to their parent-death signal)
            try:
                out, _ = run.communicate(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                run.kill()
                out, _ = run.communicate()
            finished = len([line for line in out.splitlines() if line.startswith("trial ")])
            return time.perf_counter() - start, finished, f"killed after {timeout:.0f} s", memory.summary()
        wall = time.perf_counter() - start
    if run.returncode != 0:
        print(err[-2000:], file=sys.stderr)
        return wall, 0, f"failed (exit {run.returncode})", memory.summary()
    finished = len([line for line in out.splitlines() if line.startswith("trial ")])
    found = TEST_ACC.search(out)
    return wall, finished, found.group(1) if found else "n/a", memory.summary()


def planned_runs(device: str, quick: bool, trials: int, max_epochs: int, search_timeout: float) -> list[tuple[str, list[str]]]:
    """(row name, search.run arguments) of the runs; quick: the default run alone, on tiny data."""
    accelerator = ["--accelerator", "cpu"] if device == "cpu" else ["--accelerator", "gpu"]
    if quick:  # the smoke run: the script's every function once; the searches' flags are the product's to test
        return [("default run (export; quick: target 0.8)",
                 [*accelerator, "--train-size", "1000", "--val-size", "500", "--max-epochs", "1", "--target-accuracy", "0.8"])]
    fixed = [*accelerator, "--target-accuracy", "none", "--trials", str(trials), "--max-epochs", str(max_epochs), "--timeout", str(search_timeout)]
    budget = f"up to {trials} trials or {search_timeout:.0f} s, target none"
    return [
        ("default run (target 0.95, export)", accelerator),
        (f"{budget}, 1 worker", [*fixed, "--workers", "1"]),
        (f"{budget}, 4 workers on one GPU", [*fixed, "--workers", "4", "--workers-per-device", "4"]),
    ]


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="CPU smoke run: 3,000/1,000 rows, 1-epoch trials, only the default run (to target 0.8, with export)")
    flags.add_argument("--trials", type=integer(1, 1000), default=100)
    flags.add_argument("--max-epochs", type=integer(1, 100), default=3, help="epochs per trial in the fixed-budget searches")
    flags.add_argument("--search-timeout", type=number(0, MAX_SEARCH_SECONDS, low_open=True), default=120,
                       help="seconds after which a search starts no new trial")
    flags.add_argument("--budget", type=number(60, MAX_BUDGET), default=DEFAULT_BUDGET,
                       help="seconds for the whole check: a search is killed when the rest would not fit")
    args = flags.parse_args(argv)
    deadline = time.perf_counter() + args.budget
    from lightning_modules.training import quiet_lightning

    quiet_lightning()
    device = pick_device(args.quick)
    split = load_mnist_split(3000, 1000) if args.quick else load_mnist_split()
    epochs = 2 if args.quick else 3
    shown = f"{device} ({torch.cuda.get_device_name(0)})" if device != "cpu" else "cpu"
    print(f"# GPU check on {shown}: {len(split.y_train)} train rows; torch {torch.__version__}")
    print(machine_line())
    print(table(MEASUREMENTS, []), flush=True)
    print_row(MEASUREMENTS, ("raw PyTorch loop, train samples/s", shown, raw_loop(split, device, epochs)))
    print_row(MEASUREMENTS, ("fit(), train samples/s (deterministic algorithms on a GPU)", shown, fit_loop(split, device, epochs)))
    print_row(MEASUREMENTS, ("fit(), deterministic algorithms off, train samples/s", shown, fit_loop(split, device, epochs, deterministic=False)))
    print_row(MEASUREMENTS, ("fit() twice with one seed: same weights", shown, same_seed_twice(split, device)))
    print_row(MEASUREMENTS, ("GPU memory of one worker (largest model)", shown, worker_memory(split, device)))

    runs = planned_runs(device, args.quick, args.trials, args.max_epochs, args.search_timeout)
    print(f"\n{table(RUNS, [])}", flush=True)
    for i, (name, run_args) in enumerate(runs):
        left = deadline - time.perf_counter() - RESERVE * (len(runs) - 1 - i)
        if left < RESERVE / 2:
            print_row(RUNS, (name, "skipped", 0, "", f"{left + RESERVE * (len(runs) - 1 - i):.0f} s of the budget left", ""))
            continue
        wall, finished, test_acc, memory = search_run(run_args, timeout=min(KILL_AFTER, left), gpu=device != "cpu")
        print_row(RUNS, (name, wall, finished, finished * 60 / wall if wall else float("nan"), test_acc, memory))
    return 0


if __name__ == "__main__":
    cli(main)
