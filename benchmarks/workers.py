"""Workers: trials per minute with K local worker processes on one study.

SQLite with 1 and 2 workers, the local PostgreSQL with 2 and 4, for tiny trials (1,000 train /
500 val rows, 1 epoch) and real trials (the full 50,000 / 10,000 split, 1 epoch). No target and
no pruning, so every configuration runs the same fixed budget of trials and every trial does
the same work. Throughput is finished trials over the span from the first trial's
`datetime_start` to the last `datetime_complete` (from the storage, so process start-up and
export are excluded). Configurations are interleaved; the ratio is against 1 worker on SQLite.

    python -m benchmarks.workers                       # tiny: 24 trials; real: 8 trials
    python -m benchmarks.workers --quick               # tiny trials only, 8 trials, SQLite 1 and 2
    python -m benchmarks.workers --kinds real --repeats 2
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from benchmarks._common import (
    PYTHON,
    ROOT,
    bench_env,
    cli,
    integer,
    load_average,
    machine_line,
    median,
    parser,
    search_seconds,
    study_trials,
    table,
)

POSTGRES_URL = os.environ.get("MNIST_SEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CONFIGS = {
    "tiny": "data: {train_size: 1000, val_size: 500}\n",
    "real": "",
}
BASE_CONFIG = """\
study: {{trials: {trials}, target_accuracy: null}}
pruner: {{name: none}}
training: {{max_epochs: 1}}
export: false
"""


def run(kind: str, storage: str, workers: int, trials: int) -> tuple[float, int]:
    """(trials per minute, finished trials) of one run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as home:
        config = Path(home) / "bench.yaml"
        config.write_text(BASE_CONFIG.format(trials=trials) + CONFIGS[kind])
        name = f"bench-workers-{uuid.uuid4().hex[:8]}"
        url = f"sqlite:///{home}/bench.db" if storage == "sqlite" else POSTGRES_URL
        cmd = [PYTHON, "-m", "search.run", "--config", str(config), "--workers", str(workers), "--storage", url, "--study-name", name]
        done = subprocess.run(cmd, cwd=ROOT, env=bench_env(Path(home)), capture_output=True, text=True)
        if done.returncode:
            print(f"warning: {storage} x{workers} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        finished = [t for t in study_trials(url, name) if t.state.name in ("COMPLETE", "PRUNED")]
        if storage != "sqlite":
            optuna.delete_study(study_name=name, storage=url)
    if not finished:
        return float("nan"), 0
    return 60 * len(finished) / search_seconds(finished), len(finished)


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="tiny trials only, 8 trials, SQLite 1 and 2 workers")
    flags.add_argument("--kinds", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    flags.add_argument("--repeats", type=integer(1, 100), default=1)
    flags.add_argument("--tiny-trials", type=integer(1, 1000), default=24)
    flags.add_argument("--real-trials", type=integer(1, 1000), default=8)
    args = flags.parse_args(argv)
    if len(set(args.kinds)) != len(args.kinds):  # a kind named twice would run twice
        flags.error(f"argument --kinds: name each kind once, got {' '.join(args.kinds)}")
    kinds = ["tiny"] if args.quick else args.kinds
    setups = [("sqlite", 1), ("sqlite", 2)] + ([] if args.quick else [("postgresql", 2), ("postgresql", 4)])
    budget = {"tiny": 8 if args.quick else args.tiny_trials, "real": args.real_trials}
    print(f"# workers: trials/min, no target, no pruning, 1 epoch per trial; budgets {budget}; {args.repeats} repeat(s)")
    print(machine_line() + " (before)")
    results: dict[tuple[str, str, int], list[float]] = {}
    loads: list[str] = []
    for repeat in range(args.repeats):
        for kind in kinds:
            order = setups if repeat % 2 == 0 else setups[::-1]
            for storage, workers in order:
                rate, n = run(kind, storage, workers, budget[kind])
                results.setdefault((kind, storage, workers), []).append(rate)
                loads.append(load_average().split()[0])
    rows = []
    for kind in kinds:
        ref = median(results[(kind, "sqlite", 1)])
        for storage, workers in setups:
            rate = median(results[(kind, storage, workers)])
            rows.append((kind, storage, workers, max(1, 2 // workers), rate, rate / ref))
    print(table(["trials", "storage", "workers", "torch threads/worker", "trials/min", "ratio vs 1 worker SQLite"], rows))
    print(f"1-min load average after each run: {' '.join(loads)}")
    print(machine_line() + " (after)")
    return 0


if __name__ == "__main__":
    cli(main)
