"""Shared helpers: machine description, medians, tables, the data split, subprocess runs and their studies.

Every figure is a ratio against a reference measured in the same process run, interleaved,
because the benchmark machine is shared: absolute seconds move with other people's load.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "mnist"
PYTHON = sys.executable


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_model() -> str:
    """The CPU's name: results (and, through float rounding, a search's path) differ between CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """CPU, cores, torch threads and load average: printed above every table."""
    import torch

    cores = len(os.sched_getaffinity(0))
    return (
        f"machine: {cpu_model()}, {cores} cores (affinity), torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, load average {load_average()}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pastes straight into docs/BENCHMARKS.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def data_dir() -> str:
    return os.environ.get("MNIST_DATA_DIR") or str(DEFAULT_DATA_DIR)


def bench_env(home: Path, threads: int | None = None) -> dict[str, str]:
    """Environment for a product subprocess: its own MNIST_SEARCH_HOME, the shared data."""
    env = dict(os.environ)
    env["MNIST_SEARCH_HOME"] = str(home)
    env["MNIST_DATA_DIR"] = data_dir()
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def home_storage_url(home: Path) -> str:
    """The SQLite URL a product process run with MNIST_SEARCH_HOME=home writes by default."""
    from search.paths import DB_NAME

    return f"sqlite:///{home}/{DB_NAME}"


def study_trials(storage: str, study_name: str = "mnist") -> list:  # list[FrozenTrial]
    """All trials of a finished benchmark run's study, by number, read back from its storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=study_name, storage=storage)
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def search_seconds(trials: Sequence) -> float:  # Sequence[FrozenTrial]
    """First trial start to last completion: the search itself, without process start-up or export."""
    ended = [t for t in trials if t.datetime_complete and t.datetime_start]
    if not ended:
        return float("nan")
    return (max(t.datetime_complete for t in ended) - min(t.datetime_start for t in ended)).total_seconds()


def reference_events(lines: Sequence[str]) -> list[dict]:
    """The JSON events benchmarks/reference_search.py prints, from its output lines (Lightning
    may print on the same line before one)."""
    import json

    decoder = json.JSONDecoder()
    return [decoder.raw_decode(line[line.index('{"event"'):])[0] for line in lines if '{"event"' in line]


def load_mnist_split(train_size: int | None = None, val_size: int = 10_000, directory: str | None = None):  # noqa: ANN201
    """The split every trial of a default run uses (seed 0, 10,000 validation rows)."""
    from lightning_modules.data.arrays import load_idx_dir
    from lightning_modules.data.datasets import MNIST
    from lightning_modules.data.split import split_data

    arrays = load_idx_dir(Path(directory or data_dir()), MNIST)
    return split_data(arrays, val_size=val_size, train_size=train_size, seed=0)
