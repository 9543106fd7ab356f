"""The anytime benchmark's curves and report: best-so-far accuracy over time, medians over seeds,
the table at fixed minutes, the comparison and the PNG. Pure functions of the recorded runs, so
`python -m benchmarks.anytime --report` redraws them without running anything."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks._common import table

LABELS = {"ours": "ours (TPE + median pruning)", "random": "random, no pruning", "reference": "optuna-examples reference"}
VARIANT = "ours:"  # a search named "ours:LABEL" is ours with a settings file (--variant LABEL=YAML): a lever under test
MARKS = (2.0, 5.0, 10.0, 15.0)  # minutes at which the table reads the curves
GRID_SECONDS = 5.0  # the curves' resolution when compared and drawn




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


def label(search: str) -> str:
    return LABELS.get(search) or f"ours with {search.removeprefix(VARIANT)}"


def search_order(search: str) -> tuple[int, str]:
    """Built-in searches first, in their order, then the variants by name."""
    return (list(LABELS).index(search), "") if search in LABELS else (len(LABELS), search)


# ---------------------------------------------------------------- curves (pure)


def new_bests(completions: Sequence[Completion], horizon_minutes: float = math.inf) -> list[Completion]:
    """The completions that became the best so far, in time order, up to the horizon.

    The export picks the highest validation accuracy and, between equals, the lowest trial number
    (search.study.best_trials), so a later trial with an equal value replaces the best only when
    its number is lower (with several workers, trials finish out of number order)."""
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
    steps = round(horizon_minutes * 60 / GRID_SECONDS)
    return [i * GRID_SECONDS / 60 for i in range(steps + 1)]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, min and max over the seeds that have a value (NaN when none has)."""
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


# ---------------------------------------------------------------- report


def read_runs(path: Path) -> list[Run]:
    """The runs in a results file (none when it does not exist yet); a folder, or a line that is
    not a run this script wrote, is a one-line UserInputError naming it (it was a traceback)."""
    from lightning_modules.errors import UserInputError

    if not path.exists():
        return []
    if not path.is_file():
        raise UserInputError(f"--results {path} is not a file; pass the JSON-lines file the runs are appended to")
    runs = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                runs.append(Run.from_json(line))
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise UserInputError(f"--results {path}, line {number}, is not a run record ({str(error)[:80]}); pass a results file of this script") from None
    return runs


def latest_runs(runs: Sequence[Run], horizon_minutes: float, train_size: int | None) -> dict[str, list[Run]]:
    """Per search, the latest run of each seed with this horizon and data size."""
    chosen: dict[tuple[str, int], Run] = {}
    for run in runs:
        if run.horizon_minutes == horizon_minutes and run.train_size == train_size:
            chosen[(run.search, run.seed)] = run
    by_search: dict[str, list[Run]] = {}
    for (search, _), run in sorted(chosen.items(), key=lambda kv: (search_order(kv[0][0]), kv[0][1])):
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
            rows.append((label(search), run.seed, *[_acc(value_at(run.points, m)) for m in marks], run.completed,
                         "never" if math.isnan(reached) else f"{reached:.2f}"))
        cells = ["-" if math.isnan(med) else f"{med:.4f} [{low:.4f}-{high:.4f}]" for med, low, high in curve(runs, marks)]
        rows.append((label(search), f"median [min-max] of {len(runs)}", *cells, "", ""))
    headers = ["search", "seed", *[f"test at {m:g} min" for m in marks], "trials completed", "val >= 0.98 at (min)"]
    lines = [table(headers, rows)]
    ours = by_search.get("ours")
    others = {k: v for k, v in by_search.items() if k != "ours"}
    if ours and others:
        for name, (below, compared, worst) in shortfalls(ours, others, horizon_minutes).items():
            seeds = f"seeds {[r.seed for r in ours]} vs {[r.seed for r in others[name]]}"
            lines.append(f"ours vs {label(name)} (medians, {seeds}, every {GRID_SECONDS:g} s): below at {below} of {compared} points"
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
    for search, runs in by_search.items():
        values = curve(runs, times)
        med = [v[0] for v in values]
        ax.step(times, med, where="post", label=f"{label(search)} (median of {len(runs)} seed{'s' if len(runs) > 1 else ''})")
        ax.fill_between(times, [v[1] for v in values], [v[2] for v in values], step="post", alpha=0.2)
    floor = 0.95 if horizon_minutes >= 5 else 0.9  # the race is run above this; earlier models are off the chart
    ax.set_ylim(floor, 0.99)
    ax.set_xlim(0, horizon_minutes)
    ax.set_xlabel("minutes since the command started")
    ax.set_ylabel("test accuracy of the best model so far (by validation)")
    ax.set_title("Anytime search quality on MNIST (shaded: range over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


