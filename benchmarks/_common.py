"""Shared helpers: bounded command-line flags, machine description, medians, tables, the data split,
subprocess runs and their studies.

Every figure is a ratio against a reference measured in the same process run, interleaved,
because the benchmark machine is shared: absolute seconds move with other people's load.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import signal
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "mnist"
PYTHON = sys.executable
MAX_SEEDS = 10  # seeds of one sitting: each costs whole searches (minutes to hours)
MAX_VARIANTS = 8  # --variant settings files of one sitting, for the same reason
MAX_TRAIN_ROWS = 50_000  # MNIST's 60,000 training rows less the 10,000 validation rows of a default split
_INTEGER = re.compile(r"-?[0-9]{1,30}")


# ---------------------------------------------------------------- command-line flags


class BenchmarkError(Exception):
    """A run that ended without results (a search killed, interrupted or failed): main prints its
    message as one line; a traceback would point at the benchmark's code, not at the run."""


def cli(main: Callable[[], int]) -> NoReturn:
    """A benchmark's `__main__`: bad input it meets past its flags (a data folder without MNIST,
    MNIST_DATA_DIR naming the wrong folder, a results file that is not one) is one line and exit
    2, as in the product's commands, instead of a traceback through the benchmark's code."""
    from lightning_modules.errors import UserInputError

    try:
        code = main()
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


def integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`. Every count a benchmark takes buys work
    (searches, epochs, repeats), so a typo (`--trials 10000`, `--repeats -5`) is refused before it
    starts instead of running for days or doing nothing."""

    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"want an integer from {low} to {high}, got {text[:40]!r}")
        return int(text)

    return parse


def number(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from `low` (exclusive with `low_open`) to `high`. float()
    alone takes 'nan' and 'inf', which pass every comparison a timeout or a budget is checked with."""
    shown = f"{low:g} (exclusive)" if low_open else f"{low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not (low < value if low_open else low <= value) or value > high:
            raise argparse.ArgumentTypeError(f"want a number from {shown} to {high:g}, got {text[:40]!r}")
        return value

    return parse


def at_most(parser: argparse.ArgumentParser, flag: str, values: Sequence[object] | None, high: int) -> None:
    """Refuse more than `high` values for a `nargs="+"` flag (one line, exit 2): argparse bounds
    each value by its type, but not how many there are, and each one is a run."""
    if values is not None and len(values) > high:
        parser.error(f"argument {flag}: want at most {high} values, got {len(values)}")


def parser(description: str | None) -> argparse.ArgumentParser:
    """Every benchmark's parser: a bad flag is one line `error: ... (see PROG --help)` and exit 2
    (search.options.OneLineParser), the module docstring its --help text, as written."""
    from search.options import OneLineParser

    return OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def exit_words(code: int) -> str:
    """'exit code 1', 'exit code 130 (interrupted)' or 'killed by SIGKILL': a subprocess's end, as a user reads it."""
    if code < 0 and -code in signal.valid_signals():
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}" + (" (interrupted)" if code == 130 else "")


def last_line(text: str) -> str:
    """The last non-empty line of a process's output (usually its error), shortened for one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1][:300] + "..." * (len(lines[-1]) > 300)) if lines else "no output"


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

    from lightning_modules.device import usable_cores

    return (
        f"machine: {cpu_model()}, {usable_cores()} cores (affinity and CPU quota), torch {torch.__version__}, "
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
