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
