"""Memory over a long study: resident memory (VmRSS) of the worker after trials 1, 10, 50, 100.

Runs `python -m search.run` with tiny trials (1,000 train / 500 val rows, 1 epoch, no target,
no pruning, no export) on a fresh MNIST_SEARCH_HOME, polls the SQLite storage for the number of
finished trials while sampling /proc/<pid>/status of the process (with --workers 1 the runner is
the worker), and prints RSS at the first sample after each checkpoint count. Growth is relative
to trial 10 (the target: no more than 10% after trial 10).

    python -m benchmarks.memory            # 100 trials
    python -m benchmarks.memory --quick    # 12 trials, checkpoints 1, 5, 10, 12
"""

from __future__ import annotations

import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._common import PYTHON, ROOT, bench_env, cli, integer, machine_line, parser, table

TINY_CONFIG = """\
study: {{trials: {trials}, target_accuracy: null}}
pruner: {{name: none}}
data: {{train_size: 1000, val_size: 500}}
training: {{max_epochs: 1}}
export: false
"""


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return int(connection.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0])
    except sqlite3.Error:
        return -1


def measure(trials: int, checkpoints: list[int], poll: float = 0.2) -> tuple[dict[int, int], int, float, int]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as home:
        config = Path(home) / "tiny.yaml"
        config.write_text(TINY_CONFIG.format(trials=trials))
        db = Path(home) / "mnist-search.db"
        start = time.time()
        process = subprocess.Popen([PYTHON, "-m", "search.run", "--config", str(config)], cwd=ROOT,
                                   env=bench_env(Path(home)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        at: dict[int, int] = {}
        peak = 0
        while process.poll() is None:
            rss = rss_kb(process.pid)
            count = finished(db)
            if rss:
                peak = max(peak, rss)
                for k in checkpoints:
                    if count >= k and k not in at:
                        at[k] = rss
            time.sleep(poll)
        _, stderr = process.communicate()
        if process.returncode:
            print(f"warning: search.run exited {process.returncode}: {stderr.strip()[-600:]}")
        return at, peak, time.time() - start, finished(db)


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="12 trials")
    flags.add_argument("--trials", type=integer(1, 1000), default=100, help="tiny trials (about a second each)")
    args = flags.parse_args(argv)
    trials = 12 if args.quick else args.trials
    checkpoints = sorted({k for k in (1, 5 if args.quick else 10, 10, 50, 100, trials) if k <= trials})
    print(f"# memory over a study of {trials} tiny trials (1,000 train / 500 val rows, 1 epoch, no pruning, no export)")
    print(machine_line() + " (before)")
    at, peak, seconds, done = measure(trials, checkpoints)
    base = at.get(10)
    rows = [(k, at[k] / 1024 if k in at else float("nan"),
             f"{100 * (at[k] - base) / base:+.1f}%" if base and k in at and k >= 10 else "") for k in checkpoints]
    print(table(["after trial", "RSS MB", "growth vs trial 10"], rows))
    print(f"peak RSS {peak / 1024:.0f} MB; {done} finished trials in {seconds:.0f} s")
    print(machine_line() + " (after)")
    return 0


if __name__ == "__main__":
    cli(main)
