"""Anytime search quality: the test accuracy of the best model found so far (chosen by validation
accuracy, as the export chooses it) against minutes since the command started.

Three searches run one after another on this machine, each for the same number of minutes and
each in a fresh MNIST_SEARCH_HOME: ours (`python -m search.run`), random search without pruning
(ours with `sampler: random`, `pruner: none` and no enqueued first DNN) and the optuna-examples-style reference
(benchmarks/reference_search.py). The clock starts just before the command is launched, so it
includes interpreter start-up and data loading. At the deadline the search gets SIGINT.

The test accuracies are measured after each search ends and off its clock: for ours, from the
weights the search stored for each new best of its classifier (every best-so-far is one); for the
reference, by the reference process itself, whose scoring seconds are taken off its clock.

Each finished search is appended to a JSON-lines results file, so seeds and levers can be run in
separate sittings; the table and the PNG are drawn from the latest run of each search and seed
with the same minutes and data size in that file (a variant's label names one settings text).

    python -m benchmarks.anytime --minutes 15 --seeds 0 1 2     # full: 3 searches x 3 seeds x 15 min
    python -m benchmarks.anytime --seeds 1 --searches ours       # add runs to the results file
    python -m benchmarks.anytime --searches --variant epochs12='training: {max_epochs: 12}' --seeds 0
                                                                 # a lever: ours with a settings file
    python -m benchmarks.anytime --report                        # table and PNG from the file only
    python -m benchmarks.anytime --quick                         # 1 minute each, 5,000 rows, seed 0
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    number,
    parser,
    reference_events,
)
from benchmarks.anytime_curves import (
    VARIANT,
    Completion,
    Point,
    Run,
    draw,
    label,
    latest_runs,
    new_bests,
    read_runs,
    report,
)
from search.settings import MAX_SEED

SEARCHES = {
    "ours": "",
    # the linear baseline stays (trial 0 of every search of ours); our enqueued first DNN does not:
    # it is a choice of ours, which a plain random search would not make
    "random": "sampler: {name: random}\npruner: {name: none}\nfirst_dnn: {enabled: false}\n",
    "reference": None,  # benchmarks/reference_search.py
}
STOP_GRACE_SECONDS = 120.0  # after SIGINT, before SIGKILL
REFERENCE_EXTRA_SECONDS = 30.0  # the reference's test scoring is taken off its clock: it runs this much longer
DEFAULT_RESULTS = ROOT / "storage" / "benchmarks" / "anytime.jsonl"
MAX_TRIALS = 100_000  # the searches' trial budget: the deadline, not the budget, ends them
MAX_MINUTES = 120.0  # per search: seeds x searches x this is the sitting
MAX_LABEL = 40  # a variant's label: a table column and a legend entry
MAX_VARIANT_TEXT = 4096  # a settings file's text on the command line


def parse_variant(text: str) -> tuple[str, str]:
    """`LABEL=YAML` (a settings file's text, e.g. 'training: {max_epochs: 12}') as (search, YAML)."""
    name, sep, config = text.partition("=")
    if not sep or not name.strip() or not config.strip() or len(name.strip()) > MAX_LABEL or len(text) > MAX_VARIANT_TEXT:
        raise argparse.ArgumentTypeError(
            f"--variant wants LABEL=YAML (a label of at most {MAX_LABEL} characters, at most {MAX_VARIANT_TEXT} in all), "
            f"e.g. epochs12='training: {{max_epochs: 12}}', got {text[:40]!r}"
        )
    return VARIANT + name.strip(), config


# ---------------------------------------------------------------- running one search


def _stop_at(process: subprocess.Popen, deadline: float) -> tuple[int, bool]:
    """Wait for the process until the deadline, then SIGINT (a clean stop), then SIGKILL.
    Returns the exit code and whether it had to be stopped."""
    try:
        return process.wait(timeout=max(0.0, deadline - time.time())), False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
    except BaseException:  # Ctrl-C on the benchmark: the search must not outlive it
        process.kill()
        process.wait()
        raise
    try:
        return process.wait(timeout=STOP_GRACE_SECONDS), True
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(), True


@contextmanager
def _home_env(home: Path) -> Iterator[None]:
    """Read a finished run's study in this process as the run saw it (its own artifacts folder)."""
    before = os.environ.get("MNIST_SEARCH_HOME")
    os.environ["MNIST_SEARCH_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MNIST_SEARCH_HOME", None)
        else:
            os.environ["MNIST_SEARCH_HOME"] = before


def study_points(home: Path, started: float, horizon_minutes: float) -> tuple[list[Point], int]:
    """The best-so-far curve of the study a product run left in `home`: each new best's stored
    weights scored on the test set (retrained exactly, with a warning, if they are missing)."""
    import optuna
    from optuna.trial import TrialState

    from search import record
    from search.artifact_stores import open_store, recorded_location
    from search.data import check_data, load_split
    from search.export.trained import load_trial_model

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with _home_env(home):
        try:
            study = optuna.load_study(study_name="mnist", storage=home_storage_url(home))
        except KeyError:  # optuna's "Record does not exist."
            raise BenchmarkError("the search left no study (stopped before it created one)") from None
        trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None}
        completions = [Completion((t.datetime_complete.timestamp() - started) / 60, t.number, float(t.value)) for t in trials.values()]
        changes = new_bests(completions, horizon_minutes)
        settings = record.study_settings(study)
        split = load_split(settings.data, check_data(settings.data))
        store = open_store(recorded_location(study), create=False, writable=False)
        points = []
        for change in changes:
            trained = load_trial_model(trials[change.number], store, split, settings)
            if trained.retrained:
                print(f"  warning: trial {change.number} had no stored weights; {trained.note}")
            points.append(Point(change.minutes, change.number, change.val, trained.test_accuracy))
    return points, sum(c.minutes <= horizon_minutes for c in completions)


def reference_points(lines: Sequence[str], started: float, horizon_minutes: float) -> tuple[list[Point], int]:
    """The best-so-far curve from the reference's JSON lines, its test-scoring time off the clock."""
    scoring = 0.0
    completions, tests = [], {}
    for event in reference_events(lines):
        if event["event"] != "trial" or event["state"] != "COMPLETE":
            continue
        scoring += float(event.get("eval_seconds", 0.0))
        completions.append(Completion((event["t"] - scoring - started) / 60, event["number"], float(event["value"])))
        tests[event["number"]] = float(event["test"])
    changes = new_bests(completions, horizon_minutes)
    points = [Point(c.minutes, c.number, c.val, tests[c.number]) for c in changes]
    return points, sum(c.minutes <= horizon_minutes for c in completions)


def run_search(search: str, seed: int, horizon_minutes: float, train_size: int | None, config_text: str | None) -> Run:
    """One search for `horizon_minutes`; `config_text` None runs the reference, else ours with that settings file."""
    with tempfile.TemporaryDirectory(prefix="bench-anytime-") as tmp:
        home = Path(tmp)
        env = bench_env(home)
        seconds = horizon_minutes * 60
        if config_text is None:
            seconds += REFERENCE_EXTRA_SECONDS  # its curve is still cut at the horizon, on its own clock
            cmd = [PYTHON, "-m", "benchmarks.reference_search", "--target", "none", "--trials", str(MAX_TRIALS),
                   "--timeout", str(seconds), "--seed", str(seed), "--test-accuracy"]
        else:
            config = home / "search.yaml"
            config.write_text(config_text)
            cmd = [PYTHON, "-m", "search.run", "--config", str(config), "--trials", str(MAX_TRIALS), "--seed", str(seed),
                   "--target-accuracy", "none", "--no-export", "--timeout", str(seconds)]
        if train_size:
            cmd += ["--train-size", str(train_size)]
        log = home / "output.log"
        started = time.time()
        with log.open("w") as out:
            process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
            code, stopped = _stop_at(process, started + seconds)
        load_after = load_average()
        text = log.read_text(errors="replace")
        lines = text.splitlines()
        if code and not stopped:  # stopped at the deadline, the reference exits 1 (KeyboardInterrupt)
            # ended early on its own (a crash, a bad setting, Ctrl-C sent to it): no curve worth recording
            raise BenchmarkError(f"{label(search)}, seed {seed}: the search ended before its deadline, {exit_words(code)}: {last_line(text)}")
        try:
            if config_text is None:
                points, completed = reference_points(lines, started, horizon_minutes)
            else:
                points, completed = study_points(home, started, horizon_minutes)
        except BenchmarkError as error:
            raise BenchmarkError(f"{label(search)}, seed {seed}: {error}") from None
    return Run(search, seed, horizon_minutes, train_size, points, completed, machine_line(), load_after, {"exit": code, "stopped_at_deadline": stopped, "config": config_text})


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--minutes", type=number(0, MAX_MINUTES, low_open=True), default=15.0, help="each search's wall-clock budget")
    flags.add_argument("--seeds", type=integer(0, MAX_SEED), nargs="+", default=[0, 1, 2], help=f"at most {MAX_SEEDS}")
    flags.add_argument("--searches", nargs="*", choices=list(SEARCHES), default=list(SEARCHES))
    flags.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="LABEL=YAML",
                       help=f"also run ours with this settings file (a lever under test), shown as 'ours with LABEL'; at most {MAX_VARIANTS}")
    flags.add_argument("--train-size", type=integer(1, MAX_TRAIN_ROWS), default=None)
    flags.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON-lines file the runs are appended to")
    flags.add_argument("--png", type=Path, default=None, help="where to draw the curves (default: next to --results)")
    flags.add_argument("--report", action="store_true", help="run nothing: table and PNG from the results file")
    flags.add_argument("--quick", action="store_true", help="1 minute per search on 5,000 training rows, seed 0")
    args = flags.parse_args(argv)
    at_most(flags, "--seeds", args.seeds, MAX_SEEDS)
    at_most(flags, "--variant", args.variant, MAX_VARIANTS)
    try:
        return _run(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the running search was killed with it (_stop_at); finished runs are in the results file
        print(f"\ninterrupted; finished runs are in {args.results}", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.quick:
        args.minutes, args.seeds, args.train_size = 1.0, [0], 5000
    png = args.png or args.results.with_suffix(".png")
    print(f"# anytime: {args.minutes:g} min per search, seeds {args.seeds}, train rows {args.train_size or 'all (50,000)'}")
    print(machine_line() + " (before)")
    if not args.report:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        configs = {search: SEARCHES[search] for search in args.searches} | dict(args.variant)
        order = list(configs)
        for i, seed in enumerate(args.seeds):
            for search in (order if i % 2 == 0 else order[::-1]):  # interleaved
                run = run_search(search, seed, args.minutes, args.train_size, configs[search])
                with args.results.open("a") as out:
                    out.write(run.to_json() + "\n")
                best = run.points[-1] if run.points else None
                print(f"  {label(search)}, seed {seed}: {run.completed} trials completed; best so far at the end: "
                      + (f"trial {best.number}, val {best.val:.4f}, test {best.test:.4f}" if best else "none")
                      + f"; load {run.load_after}", flush=True)
    by_search = latest_runs(read_runs(args.results), args.minutes, args.train_size)
    if not by_search:
        print(f"no runs with {args.minutes:g} minutes and train rows {args.train_size} in {args.results}")
        return 1
    print(report(by_search, args.minutes))
    draw(by_search, args.minutes, png)
    print(f"curves: {png}")
    print(machine_line() + " (after)")
    return 0


if __name__ == "__main__":
    cli(main)
