"""Search quality under a budget: our search (TPE + median pruning) vs random search without
pruning and TPE without pruning, same budget of trials, no target (the whole budget is spent).

Per search: best validation and test accuracy, best linear and best DNN test accuracy (from
the export's metrics.json), epochs trained (sum of the trials' `epochs_run`), the search's wall
time (first trial start to last completion, from the storage) and the process's wall time
(including the export). Each search runs in a fresh MNIST_SEARCH_HOME.

    python -m benchmarks.search_quality --trials 100 --seeds 0        # full (about 3 x 15+ min)
    python -m benchmarks.search_quality --quick                       # 10 trials, 5,000 train rows
    python -m benchmarks.search_quality --trials 100 --searches ours  # only our search
    python -m benchmarks.search_quality --seeds 0 --searches ours --variant "cost3=space: {max_cost_ratio: 3}"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    MAX_SEEDS,
    MAX_TRAIN_ROWS,
    MAX_VARIANTS,
    PYTHON,
    ROOT,
    BenchmarkError,
    at_most,
    bench_env,
    cli,
    exit_words,
    home_storage_url,
    integer,
    last_line,
    load_average,
    machine_line,
    median,
    parser,
    search_seconds,
    study_trials,
    table,
)
from benchmarks.anytime import parse_variant
from benchmarks.anytime_curves import label
from search import record
from search.export.metrics import METRICS_FILE, ExportMetrics, read_metrics
from search.settings import MAX_SEED

SEARCHES = {
    "ours (TPE + median pruning)": "",
    # a plain random search: without the first DNN ours enqueues (as in benchmarks/anytime.py)
    "random, no pruning": "sampler: {name: random}\npruner: {name: none}\nfirst_dnn: {enabled: false}\n",
    "TPE, no pruning": "pruner: {name: none}\n",  # ours without pruning, nothing else changed
}
SHORT = {"ours": "ours (TPE + median pruning)", "random": "random, no pruning", "tpe": "TPE, no pruning"}
MAX_TRIALS = 1000  # per search: 100 is about 15 minutes on the benchmark machine


def _pruned(trials: list) -> str:
    """Pruned trials, and how many of them never trained (over space.max_cost_ratio)."""
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    over = sum(record.OVER_COST in t.user_attrs for t in pruned)
    return f"{len(pruned)} ({over} over cost)" if over else str(len(pruned))


def results_of(home: Path, name: str, code: int, output: str) -> ExportMetrics:
    """The export's metrics of the search run in `home`, or a BenchmarkError naming the search, its
    exit code and its last words: a search stopped by hand (Ctrl-C: exit 130), failed, or ended
    before any trial completed leaves no metrics.json, and a table of the rest would hide it."""
    export = home / "exports" / "mnist"
    if code:
        raise BenchmarkError(f"{name}: python -m search.run gave no results, {exit_words(code)}: {last_line(output)}")
    if not (export / METRICS_FILE).is_file():
        raise BenchmarkError(f"{name}: python -m search.run exported nothing (no {METRICS_FILE}): {last_line(output)}")
    return read_metrics(export)


def run(search: str, settings_text: str, trials: int, seed: int, train_size: int | None) -> dict:
    """One search in a fresh MNIST_SEARCH_HOME, with `settings_text` as its --config file."""
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as home:
        config = Path(home) / "search.yaml"
        config.write_text(settings_text)
        cmd = [PYTHON, "-m", "search.run", "--config", str(config), "--trials", str(trials), "--seed", str(seed),
               "--target-accuracy", "none"]
        if train_size:
            cmd += ["--train-size", str(train_size)]
        start = time.time()
        done = subprocess.run(cmd, cwd=ROOT, env=bench_env(Path(home)), capture_output=True, text=True)
        wall = time.time() - start
        metrics = results_of(Path(home), f"{search}, seed {seed}", done.returncode, done.stderr if done.stderr.strip() else done.stdout)
        trials_ = [t for t in study_trials(home_storage_url(Path(home))) if t.datetime_complete]
    best = lambda m: m.test_accuracy if m is not None else float("nan")  # noqa: E731
    dnn_params = metrics.best_dnn.params if metrics.best_dnn is not None else {}
    linear = [t for t in trials_ if t.params.get("classifier") == "linear"]  # the pruner judges them against DNNs
    return {
        "val": metrics.val_accuracy, "test": metrics.test_accuracy, "linear": best(metrics.best_linear), "dnn": best(metrics.best_dnn),
        "epochs": sum(record.epochs_run(t) for t in trials_),
        "pruned": _pruned(trials_), "span": search_seconds(trials_),
        "linear_trials": f"{len(linear)} ({sum(t.state.name == 'PRUNED' for t in linear)})", "wall": wall, "dnn_params": dnn_params,
    }


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="10 trials on 5,000 training rows, seed 0")
    flags.add_argument("--trials", type=integer(1, MAX_TRIALS), default=100)
    flags.add_argument("--seeds", type=integer(0, MAX_SEED), nargs="+", default=[0, 1], help=f"at most {MAX_SEEDS}")
    flags.add_argument("--train-size", type=integer(1, MAX_TRAIN_ROWS), default=None)
    flags.add_argument("--searches", nargs="*", choices=list(SHORT), default=list(SHORT))
    flags.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="LABEL=YAML",
                       help=f"also run ours with this settings file, e.g. cost3='space: {{max_cost_ratio: 3}}' (at most {MAX_VARIANTS})")
    args = flags.parse_args(argv)
    at_most(flags, "--seeds", args.seeds, MAX_SEEDS)
    at_most(flags, "--variant", args.variant, MAX_VARIANTS)
    try:
        return _compare(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # subprocess.run kills the search it waits for
        print("\ninterrupted; no table (the searches so far are printed above)", file=sys.stderr)
        return 130


def _compare(args: argparse.Namespace) -> int:
    trials, seeds, train_size = (10, [0], 5000) if args.quick else (args.trials, args.seeds, args.train_size)
    configs = {SHORT[s]: SEARCHES[SHORT[s]] for s in args.searches} | {label(name): text for name, text in args.variant}
    names = list(configs)
    print(f"# search quality: {trials} trials, no target, seeds {seeds}, train rows {train_size or 'all (50,000)'}")
    print(machine_line() + " (before)")
    results: dict[str, list[dict]] = {}
    rows = []
    for seed in seeds:
        for name in (names if seed % 2 == 0 else names[::-1]):  # interleaved
            r = run(name, configs[name], trials, seed, train_size)
            results.setdefault(name, []).append(r)
            accuracies = [f"{r[key]:.4f}" for key in ("val", "test", "linear", "dnn")]  # 3 digits cannot tell 0.9845 from 0.9855
            rows.append((name, seed, *accuracies, r["epochs"], r["pruned"], r["linear_trials"], r["span"] / 60, r["wall"] / 60, load_average().split()[0]))
            print(f"  {name}, seed {seed}: best DNN params {r['dnn_params']}", flush=True)
    print(table(["search", "seed", "best val", "best test", "best linear test", "best DNN test", "epochs trained",
                 "pruned", "linear trials (pruned)", "search min", "process min", "load 1-min"], rows))
    ours, tpe = results.get(SHORT["ours"]), results.get(SHORT["tpe"])
    if ours and tpe:
        saved = 1 - median([r["epochs"] for r in ours]) / median([r["epochs"] for r in tpe])
        delta = 100 * (median([r["test"] for r in ours]) - median([r["test"] for r in tpe]))
        print(f"pruning vs TPE without pruning (medians): {100 * saved:.0f}% fewer epochs, best test accuracy {delta:+.2f} points")
    print(machine_line() + " (after)")
    return 0


if __name__ == "__main__":
    cli(main)
