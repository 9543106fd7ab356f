"""Smoke test of the benchmarks: the quick throughput run exits 0 and prints its table.

Nothing about the numbers: they depend on the machine and its load (see docs/BENCHMARKS.md).
The other benchmarks' quick modes train or spawn searches for longer than this suite allows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_quick_prints_its_table(isolated_home: Path) -> None:
    from benchmarks.throughput import HEADER

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--quick", "--threads", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert HEADER in done.stdout
    for loop in ("raw PyTorch (reference)", "bare LightningModule (Lightning's floor)", "fit() + trial callbacks"):
        assert f"| {loop}" in done.stdout


@pytest.mark.slow
def test_gpu_check_quick_runs_every_piece_on_the_cpu(isolated_home: Path) -> None:
    """benchmarks/gpu_check.sh cannot run here; its Python runs every measurement on the CPU."""
    from benchmarks.gpu_check import HEADER

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--quick"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert HEADER in done.stdout and "| fit(), train samples/s" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "trials, target none" in line]
    assert len(rows) == 2 and all("failed" not in row and "| 4 " in row for row in rows), done.stdout
