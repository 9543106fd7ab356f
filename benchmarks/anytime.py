"""Anytime search quality: the test accuracy of the best model found so far (chosen by validation
accuracy, as the export chooses it) against minutes since the command started.

Three searches run one after another on this machine, each for the same number of minutes and
each in a fresh MNIST_SEARCH_HOME: ours (`python -m search.run`), random search without pruning
(ours with `sampler: random`, `pruner: none`) and the optuna-examples-style reference
(benchmarks/reference_search.py). The clock starts just before the command is launched, so it
includes interpreter start-up and data loading. At the deadline the search gets SIGINT.

The test accuracies are measured after each search ends and off its clock: for ours, from the
weights the search stored for each new best of its classifier (every best-so-far is one); for the
reference, by the reference process itself, whose scoring seconds are taken off its clock.

Each finished search is appended to a JSON-lines results file, so seeds can be run in separate
sittings; the table and the PNG are drawn from every run in that file.

    python -m benchmarks.anytime --minutes 15 --seeds 0 1 2     # full: 3 searches x 3 seeds x 15 min
    python -m benchmarks.anytime --seeds 1 --searches ours       # add runs to the results file
    python -m benchmarks.anytime --report                        # table and PNG from the file only
    python -m benchmarks.anytime --quick                         # 1 minute each, 5,000 rows, seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks._common import PYTHON, ROOT, bench_env, home_storage_url, load_average, machine_line, table

SEARCHES = {
    "ours": "",
    "random": "sampler: {name: random}\npruner: {name: none}\n",
    "reference": None,  # benchmarks/reference_search.py
}
LABELS = {"ours": "ours (TPE + median pruning)", "random": "random, no pruning", "reference": "optuna-examples reference"}
MARKS = (2.0, 5.0, 10.0, 15.0)  # minutes at which the table reads the curves
GRID_SECONDS = 5.0  # the curves' resolution when compared and drawn
STOP_GRACE_SECONDS = 120.0  # after SIGINT, before SIGKILL
DEFAULT_RESULTS = ROOT / "storage" / "benchmarks" / "anytime.jsonl"


@dataclass(frozen=True)
class Completion:
    """A completed trial: when (minutes since the command started), which, its validation accuracy."""

    minutes: float
    number: int
    val: float


@dataclass(frozen=True)
class Point:
    """The best-so-far model changed at `minutes`: to trial `number`, with these accuracies."""

    minutes: float
    number: int
    val: float
    test: float


@dataclass
class Run:
    search: str
    seed: int
    horizon_minutes: float
    train_size: int | None
    points: list[Point]
    completed: int  # trials completed within the horizon
    machine: str = ""
    load_after: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Run:
        raw = json.loads(line)
        raw["points"] = [Point(**p) for p in raw["points"]]
        return cls(**raw)


# ---------------------------------------------------------------- curves (pure)


def new_bests(completions: Sequence[Completion], horizon_minutes: float = math.inf) -> list[Completion]:
    """The completions that became the best so far, in time order, up to the horizon.

    The export picks the highest validation accuracy and, between equals, the lowest trial number
    (search.study.best_trials), so a later trial with an equal value replaces the best only when
    its number is lower (a retry can finish after a later-numbered trial)."""
    best: Completion | None = None
    changes = []
    for done in sorted(completions, key=lambda c: (c.minutes, c.number)):
        if done.minutes > horizon_minutes or math.isnan(done.val):
            continue
        if best is None or done.val > best.val or (done.val == best.val and done.number < best.number):
            best = done
            changes.append(done)
    return changes


def value_at(points: Sequence[Point], minutes: float, key: str = "test") -> float:
    """The best-so-far model's accuracy at `minutes` (NaN before any trial completed)."""
    value = math.nan
    for point in points:
        if point.minutes > minutes:
            break
        value = getattr(point, key)
    return value


def first_minutes(points: Sequence[Point], threshold: float, key: str = "val") -> float:
    """When the best-so-far model's accuracy first reached `threshold` (NaN: never)."""
    return next((p.minutes for p in points if getattr(p, key) >= threshold), math.nan)


def grid(horizon_minutes: float) -> list[float]:
    steps = int(round(horizon_minutes * 60 / GRID_SECONDS))
    return [i * GRID_SECONDS / 60 for i in range(steps + 1)]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, min and max over the seeds that have a value (NaN when none has)."""
    import statistics

    present = [v for v in values if not math.isnan(v)]
    if not present:
        return math.nan, math.nan, math.nan
    return statistics.median(present), min(present), max(present)


def curve(runs: Sequence[Run], times: Sequence[float]) -> list[tuple[float, float, float]]:
    """Median and range over the runs (seeds) of the best-so-far test accuracy at each time.
    A seed with no completed trial yet has no value; the median needs every seed to have one."""
    out = []
    for t in times:
        values = [value_at(r.points, t) for r in runs]
        med, low, high = spread(values)
        out.append((med if not any(math.isnan(v) for v in values) else math.nan, low, high))
    return out


def shortfalls(ours: Sequence[Run], others: dict[str, Sequence[Run]], horizon_minutes: float) -> dict[str, tuple[int, int, float]]:
    """Per reference: grid points where our median is below its median (or we have none and it
    has), the points compared, and the largest gap in accuracy points."""
    times = grid(horizon_minutes)
    mine = [m for m, _, _ in curve(ours, times)]
    result = {}
    for name, runs in others.items():
        theirs = [m for m, _, _ in curve(runs, times)]
        below, compared, worst = 0, 0, 0.0
        for a, b in zip(mine, theirs):
            if math.isnan(b):
                continue
            compared += 1
            if math.isnan(a) or a < b:
                below += 1
                if not math.isnan(a):  # no model yet: counted, but it has no gap in points
                    worst = max(worst, 100 * (b - a))
        result[name] = (below, compared, worst)
    return result


# ---------------------------------------------------------------- running one search


def _stop_at(process: subprocess.Popen, deadline: float) -> tuple[int, bool]:
    """Wait for the process until the deadline, then SIGINT (a clean stop), then SIGKILL.
    Returns the exit code and whether it had to be stopped."""
    try:
        return process.wait(timeout=max(0.0, deadline - time.time())), False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
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
        study = optuna.load_study(study_name="mnist", storage=home_storage_url(home))
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
    decoder = json.JSONDecoder()
    scoring = 0.0
    completions, tests = [], {}
    for line in lines:
        if '{"event"' not in line:
            continue
        event = decoder.raw_decode(line[line.index('{"event"'):])[0]
        if event["event"] != "trial" or event["state"] != "COMPLETE":
            continue
        scoring += float(event.get("eval_seconds", 0.0))
        completions.append(Completion((event["t"] - scoring - started) / 60, event["number"], float(event["value"])))
        tests[event["number"]] = float(event["test"])
    changes = new_bests(completions, horizon_minutes)
    points = [Point(c.minutes, c.number, c.val, tests[c.number]) for c in changes]
    return points, sum(c.minutes <= horizon_minutes for c in completions)


def run_search(search: str, seed: int, horizon_minutes: float, train_size: int | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-anytime-") as tmp:
        home = Path(tmp)
        env = bench_env(home)
        if SEARCHES[search] is None:
            cmd = [PYTHON, "-m", "benchmarks.reference_search", "--target", "1.01", "--trials", "100000",
                   "--timeout", str(horizon_minutes * 60), "--seed", str(seed), "--test-accuracy"]
        else:
            config = home / "search.yaml"
            config.write_text(SEARCHES[search])
            cmd = [PYTHON, "-m", "search.run", "--config", str(config), "--trials", "100000", "--seed", str(seed),
                   "--target-accuracy", "none", "--no-export", "--timeout", str(horizon_minutes * 60)]
        if train_size:
            cmd += ["--train-size", str(train_size)]
        log = home / "output.log"
        started = time.time()
        with log.open("w") as out:
            process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
            code, stopped = _stop_at(process, started + horizon_minutes * 60)
        load_after = load_average()
        lines = log.read_text(errors="replace").splitlines()
        if code and not stopped:  # stopped at the deadline, the reference exits 1 (KeyboardInterrupt)
            print(f"  warning: {search} seed {seed} exited {code}: {' | '.join(lines[-5:])}")
        if SEARCHES[search] is None:
            points, completed = reference_points(lines, started, horizon_minutes)
        else:
            points, completed = study_points(home, started, horizon_minutes)
    return Run(search, seed, horizon_minutes, train_size, points, completed, machine_line(), load_after, {"exit": code, "stopped_at_deadline": stopped})


# ---------------------------------------------------------------- report


def read_runs(path: Path) -> list[Run]:
    if not path.is_file():
        return []
    return [Run.from_json(line) for line in path.read_text().splitlines() if line.strip()]


def latest_runs(runs: Sequence[Run], horizon_minutes: float, train_size: int | None) -> dict[str, list[Run]]:
    """Per search, the latest run of each seed with this horizon and data size."""
    chosen: dict[tuple[str, int], Run] = {}
    for run in runs:
        if run.horizon_minutes == horizon_minutes and run.train_size == train_size:
            chosen[(run.search, run.seed)] = run
    by_search: dict[str, list[Run]] = {}
    for (search, _), run in sorted(chosen.items(), key=lambda kv: (list(SEARCHES).index(kv[0][0]), kv[0][1])):
        by_search.setdefault(search, []).append(run)
    return by_search


def _acc(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def report(by_search: dict[str, list[Run]], horizon_minutes: float) -> str:
    marks = [m for m in MARKS if m <= horizon_minutes + 1e-9] or [horizon_minutes]
    rows = []
    for search, runs in by_search.items():
        for run in runs:
            reached = first_minutes(run.points, 0.98)
            rows.append((LABELS[search], run.seed, *[_acc(value_at(run.points, m)) for m in marks], run.completed,
                         "never" if math.isnan(reached) else f"{reached:.2f}"))
        cells = []
        for m in marks:
            med, low, high = spread([value_at(r.points, m) for r in runs])
            cells.append("-" if math.isnan(med) else f"{med:.4f} [{low:.4f}-{high:.4f}]")
        rows.append((LABELS[search], "median [min-max]", *cells, "", ""))
    headers = ["search", "seed", *[f"test at {m:g} min" for m in marks], "trials completed", "val >= 0.98 at (min)"]
    lines = [table(headers, rows)]
    ours = by_search.get("ours")
    others = {k: v for k, v in by_search.items() if k != "ours"}
    if ours and others:
        for name, (below, compared, worst) in shortfalls(ours, others, horizon_minutes).items():
            lines.append(f"ours vs {LABELS[name]} (medians, every {GRID_SECONDS:g} s): below at {below} of {compared} points"
                         + (f", by up to {worst:.2f} points" if below else ""))
    if ours and horizon_minutes >= 8:
        eight = [value_at(r.points, 8.0) for r in ours]
        lines.append("ours, test accuracy at 8 min per seed: " + ", ".join(f"seed {r.seed} {_acc(v)}" for r, v in zip(ours, eight)))
    return "\n".join(lines)


def draw(by_search: dict[str, list[Run]], horizon_minutes: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = grid(horizon_minutes)
    fig, ax = plt.subplots(figsize=(8, 5))
    low_seen = 1.0
    for search, runs in by_search.items():
        values = curve(runs, times)
        med = [v[0] for v in values]
        ax.step(times, med, where="post", label=f"{LABELS[search]} (median of {len(runs)} seeds)")
        ax.fill_between(times, [v[1] for v in values], [v[2] for v in values], step="post", alpha=0.2)
        low_seen = min([low_seen] + [v[1] for v in values if not math.isnan(v[1])])
    ax.set_ylim(max(0.9, low_seen - 0.005), 0.992)
    ax.set_xlim(0, horizon_minutes)
    ax.set_xlabel("minutes since the command started")
    ax.set_ylabel("test accuracy of the best model so far (by validation)")
    ax.set_title("Anytime search quality on MNIST (shaded: range over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="each search's wall-clock budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--searches", nargs="+", choices=list(SEARCHES), default=list(SEARCHES))
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON-lines file the runs are appended to")
    parser.add_argument("--png", type=Path, default=None, help="where to draw the curves (default: next to --results)")
    parser.add_argument("--report", action="store_true", help="run nothing: table and PNG from the results file")
    parser.add_argument("--quick", action="store_true", help="1 minute per search on 5,000 training rows, seed 0")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.seeds, args.train_size = 1.0, [0], 5000
    png = args.png or args.results.with_suffix(".png")
    print(f"# anytime: {args.minutes:g} min per search, seeds {args.seeds}, train rows {args.train_size or 'all (50,000)'}")
    print(machine_line() + " (before)")
    if not args.report:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(args.seeds):
            for search in (args.searches if i % 2 == 0 else args.searches[::-1]):  # interleaved
                run = run_search(search, seed, args.minutes, args.train_size)
                with args.results.open("a") as out:
                    out.write(run.to_json() + "\n")
                best = run.points[-1] if run.points else None
                print(f"  {LABELS[search]}, seed {seed}: {run.completed} trials completed; best so far at the end: "
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
    raise SystemExit(main())
