"""GPU check (issue #15): train samples/s of a raw PyTorch loop vs `fit()`, same seed twice, torch's
allocator peak of one worker, the default run (to 0.95, export), and a `--target-accuracy none` search
of up to `--trials` trials or `--search-timeout` s with 1 and 4 workers on one GPU (wall and search s,
trials/min of search, test accuracy, the new processes' GPU memory by nvidia-smi). Rows print as
measured; the budget counts from the process's start. Without a GPU it refuses (exit 2).

    bash benchmarks/gpu_check.sh                   # on the GPU machine (reads data-carry/mnist)
    python -m benchmarks.gpu_check --quick         # CPU smoke run: tiny data, 1 epoch, the default run only
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

import torch
import torch.nn.functional as F

from benchmarks._common import PYTHON, ROOT, bench_env, cli, integer, load_mnist_split, machine_line, number, parser, table
from benchmarks.throughput import BATCH, DROPOUT, HIDDEN, LR, SEED, hyperparams

HEADER = "| measurement"
TEST_ACC = re.compile(r"test_acc=([0-9.]+)")
STOPPED = re.compile(r"^stopped: .+ after ([0-9]+(?:\.[0-9]+)?) s$", re.MULTILINE)  # search/run.py's line when its trials end
MAX_SEARCH_SECONDS = 3600.0  # --search-timeout: the check is meant to fit in minutes
MAX_BUDGET = 7200.0
OUTER_TIMEOUT = 480  # gpu_check.sh: `timeout 480`, 8 minutes from this process's start
STOP_GRACE = 30.0  # seconds a search stopped by SIGTERM has to stop its workers before it is killed
DEFAULT_BUDGET = OUTER_TIMEOUT - STOP_GRACE - 15  # the last search's stop, its grace and 15 s to print: inside the timeout
SEARCH_OVERHEAD = 45.0  # a fixed search past its --timeout: start-up, the trials still running, the export
KILL_AFTER = 600.0  # no search runs longer than this
MEASUREMENTS = ["measurement", "device", "value"]
RUNS = ["run", "wall s", "search s", "trials finished", "trials/min of search", "best test accuracy", "GPU memory of each new process (nvidia-smi)"]
SMI_APPS = ("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")


def pick_device(quick: bool, allow_cpu: bool, cuda: bool) -> str | None:
    """cuda:0 (what the product picks) when torch sees a GPU; the CPU for --quick or --allow-cpu; None: refuse."""
    return "cpu" if quick or (allow_cpu and not cuda) else ("cuda:0" if cuda else None)


def process_age(stat: str, since_boot: float, ticks_per_s: float) -> float:
    """Seconds since the process of /proc/PID/stat `stat` started (field 22: clock ticks after boot); 0 if implausible."""
    age = since_boot - int(stat.rpartition(")")[2].split()[19]) / ticks_per_s
    return age if 0 <= age < 300 else 0.0  # further back: not this process's imports (not trusted)


def allowance(left: float, searches_after: int, search_timeout: float) -> float:
    """Seconds a search may run: the budget left less (--search-timeout + SEARCH_OVERHEAD) per search after it."""
    return left - searches_after * (search_timeout + SEARCH_OVERHEAD)


def search_seconds(out: str) -> float | None:
    """X of search.run's 'stopped: REASON after X s': its trials, without imports, data or export."""
    found = STOPPED.findall(out)
    return float(found[-1]) if found else None


def versions(get: Callable[[str], str] = importlib.metadata.version) -> str:
    """The versions the figures depend on (the GPU image's torch is not the one pyproject pins)."""
    found = [f"python {platform.python_version()}", f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"]
    for name in ("lightning", "torchmetrics", "optuna"):
        try:
            found.append(f"{name} {get(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return "versions: " + ", ".join(found)


def smi(*query: str) -> str:  # nvidia-smi's answer, or '' where it is missing or fails
    try:
        return subprocess.run(("nvidia-smi", *query), capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _sync(device: str) -> None:  # GPU work is asynchronous: time only what has finished
    if device != "cpu":
        torch.cuda.synchronize()


def print_row(headers: Sequence[str], row: Sequence[object]) -> None:  # one Markdown row, the moment it is measured
    print(table(headers, [row]).splitlines()[-1], flush=True)


def raw_loop(split, device: str, epochs: int) -> float:
    """Train samples/s of a plain loop over rows on `device` (epoch 1 excluded), in fit's matmul precision (TF32 on a GPU)."""
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


def fit_loop(split, device: str, epochs: int, **trainer_overrides: object) -> float:
    """Train samples/s of `fit()` on `device`, the split moved there once (epoch 1 excluded), from each epoch's start
    to its validation's, the GPU synchronized at both (else a mark falls when the kernels are launched, not run)."""
    import lightning.pytorch as pl

    from lightning_modules.training import fit

    seconds: list[float] = []  # fit() runs no sanity check: each validation follows a train epoch

    class TrainTimer(pl.Callback):
        def on_train_epoch_start(self, *_: object) -> None:
            _sync(device)
            seconds.append(-time.perf_counter())

        def on_validation_epoch_start(self, *_: object) -> None:
            _sync(device)
            seconds[-1] += time.perf_counter()

    fit(hyperparams(), split.to(device), seed=SEED, max_epochs=epochs, callbacks=[TrainTimer()], device=device, **trainer_overrides)
    return len(split.y_train) * (len(seconds) - 1) / sum(seconds[1:])


def same_seed_twice(split, device: str) -> str:
    """Two one-epoch fits with one seed, as the product runs them: equal weights, or how far apart."""
    from lightning_modules.training import fit

    first, second = (fit(hyperparams(), split.to(device), seed=SEED, max_epochs=1, device=device).model.requires_grad_(False) for _ in range(2))
    gaps = [float((a - b).abs().max()) for a, b in zip(first.parameters(), second.parameters(), strict=True)]
    return "yes, bit for bit" if max(gaps) == 0 else f"no: largest difference {max(gaps):.2g}"


def worker_memory(split, device: str) -> str:
    """torch's allocator peak (no CUDA context) of one worker training the largest model the space allows."""
    from lightning_modules.hyperparams import HyperParams
    from lightning_modules.training import fit

    gc.collect()  # Lightning's trainers hold reference cycles: the earlier rows' copies of the split
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fit(HyperParams("dnn", (1024, 1024, 1024), 0.2, 1e-3, "adam", 0.0, 256), split.to(device), seed=SEED, max_epochs=1, device=device)
    return f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB allocated, {torch.cuda.max_memory_reserved() / 2**20:,.0f} MiB reserved"


def compute_apps(out: str) -> dict[str, int]:
    """{pid: MiB} of nvidia-smi's answer to SMI_APPS (one GPU: each PID once)."""
    rows = (line.replace(" ", "").partition(",") for line in out.splitlines())
    return {pid: int(mib) for pid, _, mib in rows if pid.isdigit() and mib.isdigit()}


class MemorySampler(threading.Thread):
    """Each GPU process's memory by nvidia-smi, every second while a search runs, less the processes there at entry
    (this one's CUDA context and allocator cache from the rows above; any other) and this PID: a 1-worker row is its worker."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: dict[str, list[int]] = {}
        self.excluded = {str(os.getpid())}
        self.done = threading.Event()

    def __enter__(self) -> Self:
        self.excluded |= set(compute_apps(smi(*SMI_APPS)))  # one sample before the search starts
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(timeout=15)

    def record(self, out: str) -> None:
        for pid, mib in compute_apps(out).items():
            if pid not in self.excluded:
                self.samples.setdefault(pid, []).append(mib)

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.record(smi(*SMI_APPS))

    def summary(self) -> str:
        series = [s for s in self.samples.values() if len(s) >= 2]  # a process seen once cannot show a trend
        if not series:
            return "n/a (nvidia-smi gave no samples)"
        return f"{len(series)} process(es): peak {max(map(max, series)):,} MiB, first to last {max(s[-1] - s[0] for s in series):+,} MiB at most"


def search_run(args: list[str], timeout: float, gpu: bool) -> tuple[float, float | None, int, str, str]:
    """(wall s, search s, trials finished, test accuracy, GPU memory) of a search.run, stopped after `timeout` s."""
    # ignore_cleanup_errors: a stopped run's workers may still be writing their last checkpoint
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp, (MemorySampler() if gpu else contextlib.nullcontext()) as memory:
        start = time.perf_counter()
        run = subprocess.Popen([PYTHON, "-m", "search.run", *args], cwd=ROOT, env=bench_env(Path(tmp)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            (out, err), test_acc = run.communicate(timeout=timeout), None
        except subprocess.TimeoutExpired:
            run.terminate()  # SIGTERM: the runner stops its workers (SIGKILL would leave them to their parent-death signal)
            try:
                out, err = run.communicate(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                run.kill()
                out, err = run.communicate()
            test_acc = f"killed after {timeout:.0f} s"
        wall = time.perf_counter() - start
    if test_acc is None and run.returncode != 0:
        print(err[-2000:], file=sys.stderr)
        test_acc = f"failed (exit {run.returncode})"
    found = TEST_ACC.search(out)
    finished = len([line for line in out.splitlines() if line.startswith("trial ")])
    return wall, search_seconds(out), finished, test_acc or (found.group(1) if found else "n/a"), memory.summary() if gpu else "none (CPU)"


def planned_runs(device: str, quick: bool, trials: int, max_epochs: int, search_timeout: float) -> list[tuple[str, list[str]]]:
    """(row name, search.run arguments) of the runs; quick: the default run alone, on tiny data."""
    accelerator = ["--accelerator", "cpu"] if device == "cpu" else ["--accelerator", "gpu"]
    if quick:  # the smoke run: the script's every function once; the searches' flags are the product's to test
        return [("default run (export; quick: target 0.8)",
                 [*accelerator, "--train-size", "1000", "--val-size", "500", "--max-epochs", "1", "--target-accuracy", "0.8"])]
    fixed = [*accelerator, "--target-accuracy", "none", "--trials", str(trials), "--max-epochs", str(max_epochs), "--timeout", str(search_timeout)]
    ran = f"target none, up to {trials} trials of {max_epochs} epochs, no new trial after {search_timeout:g} s"
    return [("default run (target 0.95, export)", accelerator), (f"{ran}, 1 worker", [*fixed, "--workers", "1"]),
            (f"{ran}, 4 workers on one GPU", [*fixed, "--workers", "4", "--workers-per-device", "4"])]


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """`started`: the time.monotonic() the budget counts from (`__main__`: the process's start; else now)."""
    started = time.monotonic() if started is None else started
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="CPU smoke run: 3,000/1,000 rows, the default run only (to 0.8, 1 epoch)")
    flags.add_argument("--allow-cpu", action="store_true", help="measure on the CPU when torch sees no GPU (refused otherwise)")
    flags.add_argument("--trials", type=integer(1, 1000), default=100)
    flags.add_argument("--max-epochs", type=integer(1, 100), default=3, help="epochs per trial in the fixed-budget searches")
    flags.add_argument("--search-timeout", type=number(0, MAX_SEARCH_SECONDS, low_open=True), default=120, help="a fixed search's --timeout")
    flags.add_argument("--budget", type=number(60, MAX_BUDGET), default=DEFAULT_BUDGET, help="seconds for the whole check from its start")
    args = flags.parse_args(argv)
    device = pick_device(args.quick, args.allow_cpu, torch.cuda.is_available())
    if device is None:
        print(f"error: torch {torch.__version__} sees no GPU, which this check measures (--allow-cpu: the CPU; --quick: smoke run)", file=sys.stderr)
        return 2
    from lightning_modules.training import quiet_lightning

    quiet_lightning()
    split = load_mnist_split(3000, 1000) if args.quick else load_mnist_split()
    epochs = 2 if args.quick else 3
    driver = smi("--query-gpu=driver_version", "--format=csv,noheader").strip() or "unknown (no nvidia-smi)"
    gpu = "none: every figure below is the CPU's, not a GPU's" if device == "cpu" else f"{torch.cuda.get_device_name(0)}, driver {driver}"
    print(f"# GPU check on {device}: {len(split.y_train)} train rows; GPU: {gpu}\n{versions()}\n{machine_line()}")
    print(table(MEASUREMENTS, []), flush=True)
    print_row(MEASUREMENTS, ("raw PyTorch loop, train samples/s", device, raw_loop(split, device, epochs)))
    print_row(MEASUREMENTS, ("fit(), train samples/s (deterministic algorithms on a GPU)", device, fit_loop(split, device, epochs)))
    print_row(MEASUREMENTS, ("fit(), deterministic algorithms off, train samples/s", device, fit_loop(split, device, epochs, deterministic=False)))
    print_row(MEASUREMENTS, ("fit() twice with one seed: same weights", device, same_seed_twice(split, device)))
    memory = worker_memory(split, device) if device != "cpu" else "n/a (CPU)"
    print_row(MEASUREMENTS, ("one worker, largest net: torch allocator peak (no CUDA context)", device, memory))
    gc.collect()  # what this process still holds on the GPU is left out of the searches' rows: hold little
    if device != "cpu":
        torch.cuda.empty_cache()

    runs = planned_runs(device, args.quick, args.trials, args.max_epochs, args.search_timeout)
    print(f"\n{table(RUNS, [])}", flush=True)
    for i, (name, run_args) in enumerate(runs):
        left = started + args.budget - time.monotonic()
        given = allowance(left, len(runs) - 1 - i, args.search_timeout)
        if given < 30:  # too little to start a search
            print_row(RUNS, (name, "skipped", "", 0, "", f"{left:.0f} s of the budget left", ""))
            continue
        wall, search, finished, test_acc, memory = search_run(run_args, timeout=min(KILL_AFTER, given), gpu=device != "cpu")
        per_min = f"{finished * 60 / search:.1f}" if search else "n/a (no 'stopped: ... after X s' line)"
        print_row(RUNS, (name, wall, "n/a" if search is None else f"{search:.1f}", finished, per_min, test_acc, memory))
    return 0


if __name__ == "__main__":
    try:  # the budget counts from this process's start, as `timeout 480` does: the imports too
        age = process_age(Path("/proc/self/stat").read_text(), time.clock_gettime(time.CLOCK_BOOTTIME), os.sysconf("SC_CLK_TCK"))
    except (OSError, AttributeError, ValueError, IndexError):
        age = 0.0
    cli(lambda: main(None, time.monotonic() - age))
