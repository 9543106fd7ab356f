"""Time to target: `python -m search.run` (default config, stop at 0.95) vs a reference search
written the way optuna-examples' pytorch_lightning_simple.py does it (benchmarks/reference_search.py).

For each run, seconds from process start (the moment this script launches the process) to
(a) the first completed trial at or above the target, and (b) process exit (for ours: after
the export). Ours reads (a) from the trial's `datetime_complete` in the run's own storage (a
fresh MNIST_SEARCH_HOME per run); the reference prints a wall-clock stamp when its trial
completes. Runs are interleaved (ours, reference, ours, ...) and the table gives medians and
the ratio ours / reference. A probe process breaks our (a) down: interpreter start, imports,
data load; per-trial set-up and training come from the storage (`train_seconds` user attr).

    python -m benchmarks.time_to_target              # 2 repeats, full data, target 0.95
    python -m benchmarks.time_to_target --quick      # smoke: 3,000/1,000 rows, 2 epochs, target 0.90
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import (
    PYTHON,
    ROOT,
    bench_env,
    cli,
    home_storage_url,
    integer,
    load_average,
    machine_line,
    median,
    number,
    parser,
    reference_events,
    study_trials,
    table,
)
from search import record

QUICK_CONFIG = """\
study: {trials: 3, target_accuracy: 0.9}
data: {train_size: 3000, val_size: 1000}
training: {max_epochs: 2}
"""


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, float, list[tuple[float, str]], int]:
    """Launch, stamp every stdout line, wait; (start, exit, stamped lines, returncode).

    One reader thread per pipe and `wait`, not `communicate`: communicate read stdout too, and
    each line went to whichever reader took it first (a third to a half of them were lost)."""
    lines: list[tuple[float, str]] = []
    errors: list[str] = []
    start = time.time()
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stamp(line: str) -> None:
        lines.append((time.time(), line.rstrip("\n")))

    readers = [threading.Thread(target=_pump, args=(stream, sink), daemon=True) for stream, sink in ((process.stdout, stamp), (process.stderr, errors.append))]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    end = time.time()
    for reader in readers:
        reader.join(5)
    if process.returncode not in (0, None):
        print(f"warning: {' '.join(cmd[:4])} exited {process.returncode}: {''.join(errors).strip()[-800:]}", file=sys.stderr)
    return start, end, lines, process.returncode or 0


def _pump(stream: Any, sink: Callable[[str], None]) -> None:
    for line in stream:
        sink(line)


def run_ours(quick: bool, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="ttt-ours-") as home:
        args = []
        if quick:
            config = Path(home) / "quick.yaml"
            config.write_text(QUICK_CONFIG)
            args = ["--config", str(config)]
        start, end, lines, code = _run([PYTHON, "-m", "search.run", *args], bench_env(Path(home)), timeout)
        target = 0.9 if quick else 0.95
        trials = study_trials(home_storage_url(Path(home)))
    if not trials:
        return {"a": float("nan"), "b": end - start, "code": code, "hit_trial": None, "trials_to_hit": 0, "per_trial": [],
                **{k: float("nan") for k in ("epochs_to_hit", "to_created_line", "to_first_trial", "trial_overhead", "between_trials", "train", "export")}}
    hit = next((t for t in trials if t.state.name == "COMPLETE" and t.value is not None and t.value >= target), None)
    created = next((stamp for stamp, line in lines if line.startswith(("created study", "resumed study"))), float("nan"))
    until_hit = [t for t in trials if hit is not None and t.number <= hit.number and t.datetime_complete]
    train = sum(float(record.read(t, record.TRAIN_SECONDS) or 0.0) for t in until_hit)
    # pruned trials have no train_seconds: their whole duration counts as training. An attempt
    # that failed does not: its retry's train_seconds holds the epochs it resumed from.
    train += sum((t.datetime_complete - t.datetime_start).total_seconds() for t in until_hit
                 if record.read(t, record.TRAIN_SECONDS) is None and t.state.name == "PRUNED")
    in_trials = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in until_hit)
    first_start = trials[0].datetime_start.timestamp() if trials and trials[0].datetime_start else float("nan")
    return {
        "a": hit.datetime_complete.timestamp() - start if hit else float("nan"),
        "b": end - start,
        "code": code,
        "hit_trial": hit.number if hit else None,
        "trials_to_hit": len(until_hit),
        "epochs_to_hit": sum(record.epochs_run(t) for t in until_hit),
        "to_created_line": created - start,
        "to_first_trial": first_start - start,
        "trial_overhead": in_trials - train,
        "between_trials": (hit.datetime_complete.timestamp() - first_start - in_trials) if hit else float("nan"),
        "train": train,
        "export": end - max(t.datetime_complete.timestamp() for t in trials if t.datetime_complete),
        "per_trial": [(t.number, t.state.name, t.params.get("classifier"), record.epochs_run(t),
                       round((t.datetime_complete - t.datetime_start).total_seconds(), 2) if t.datetime_complete else None,
                       record.read(t, record.TRAIN_SECONDS), round(t.value, 4) if t.value is not None else None) for t in trials],
    }


def run_reference(quick: bool, timeout: float) -> dict:
    args = ["--train-size", "3000", "--val-size", "1000", "--epochs", "2", "--target", "0.9", "--trials", "3"] if quick else []
    with tempfile.TemporaryDirectory(prefix="ttt-ref-") as home:
        start, end, lines, code = _run([PYTHON, "-m", "benchmarks.reference_search", *args], bench_env(Path(home)), timeout)
    events = reference_events([line for _, line in lines])
    hit = next((e for e in events if e["event"] == "target"), None)
    data = next((e for e in events if e["event"] == "data"), None)
    trials = [e for e in events if e["event"] == "trial"]
    return {
        "a": hit["t"] - start if hit else float("nan"), "b": end - start, "code": code,
        "hit_trial": hit["number"] if hit else None, "trials_to_hit": len(trials),
        "to_data": data["t"] - start if data else float("nan"),
        "per_trial": [(e["number"], e["state"], round(e["value"], 4) if e["value"] is not None else None, round(e["seconds"], 2)) for e in trials],
    }


PROBE = r"""
import time, json
t0 = time.time()
import optuna
t1 = time.time()
import lightning.pytorch
t2 = time.time()
import search.objective, search.study, search.progress, search.storage
t3 = time.time()
import search.export.exporter
t4 = time.time()
from search.data import load_split
from search.settings import Settings
split = load_split(Settings().data)
t5 = time.time()
print(json.dumps({"t0": t0, "optuna": t1 - t0, "lightning": t2 - t1, "objective": t3 - t2, "export (matplotlib, onnx...)": t4 - t3, "data": t5 - t4}))
"""


def probe() -> dict:
    with tempfile.TemporaryDirectory(prefix="ttt-probe-") as home:
        start = time.time()
        out = subprocess.run([PYTHON, "-c", PROBE], cwd=ROOT, env=bench_env(Path(home)), capture_output=True, text=True, check=True)
    values = json.loads(out.stdout.strip().splitlines()[-1])
    values["interpreter start"] = values.pop("t0") - start
    return values


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="3,000 train / 1,000 val rows, 2 epochs, target 0.90, at most 3 trials")
    flags.add_argument("--repeats", type=integer(1, 100), default=2)
    flags.add_argument("--timeout", type=number(0, 86_400, low_open=True), default=300, help="seconds before a run is killed")
    args = flags.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    target = 0.9 if args.quick else 0.95
    print(f"# time to target {target}: python -m search.run{' (quick settings)' if args.quick else ''} vs the "
          f"optuna-examples-style reference; {repeats} interleaved repeat(s)")
    print(machine_line() + " (before)")
    ours: list[dict] = []
    refs: list[dict] = []
    probes: list[dict] = []
    for repeat in range(repeats):
        pair = [("ours", lambda: ours.append(run_ours(args.quick, args.timeout))),
                ("ref", lambda: refs.append(run_reference(args.quick, args.timeout)))]
        for _, job in (pair if repeat % 2 == 0 else pair[::-1]):
            job()
            print(f"  load after run: {load_average()}", file=sys.stderr)
        probes.append(probe())
    rows = []
    for name, runs in (("ours: python -m search.run", ours), ("reference (optuna-examples style)", refs)):
        rows.append((name, median([r["a"] for r in runs]), median([r["b"] for r in runs]),
                     " ".join(f"{r['a']:.1f}/{r['b']:.1f}" for r in runs), median([r["trials_to_hit"] for r in runs]), len(runs)))
    rows.append(("ratio ours / reference", median([r["a"] for r in ours]) / median([r["a"] for r in refs]),
                 median([r["b"] for r in ours]) / median([r["b"] for r in refs]), "", "", ""))
    print(table(["search", "(a) first trial >= target, s", "(b) process exit, s", "each run (a)/(b)", "trials to target", "runs"], rows))
    print(machine_line() + " (after)")
    print("\nbreakdown of our (a) (medians):")
    keys = {"process start -> 'created study' line (imports, data, study)": "to_created_line",
            "process start -> first trial starts": "to_first_trial",
            "trial set-up and bookkeeping inside trials (duration - train_seconds)": "trial_overhead",
            "between trials (sampler, storage, stop rules)": "between_trials",
            "training (fit, train_seconds)": "train",
            "(b) after the last trial: export": "export"}
    print(table(["part", "seconds"], [(label, median([r[key] for r in ours])) for label, key in keys.items()]))
    print("\nprobe process (medians): " + ", ".join(f"{k} {median([p[k] for p in probes]):.2f} s" for k in probes[0]))
    for r in ours:
        print(f"ours trials (number, state, classifier, epochs, seconds, train_seconds, value): {r['per_trial']}")
    for r in refs:
        print(f"reference trials (number, state, value, seconds): {r['per_trial']}")
    return 0


if __name__ == "__main__":
    cli(main)
