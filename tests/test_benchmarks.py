"""Smoke test of the benchmarks: the quick runs exit 0 and print their tables.

Nothing about the numbers: they depend on the machine and its load (see docs/BENCHMARKS.md).
The other benchmarks' quick modes train or spawn searches for longer than this suite allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_throughput_quick_prints_its_table(isolated_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In this process: the benchmark is a function of its argv; only its own subprocesses (none
    here) need an interpreter of their own."""
    from benchmarks.throughput import HEADER, main

    assert main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert HEADER in out
    for loop in ("raw PyTorch (reference)", "bare LightningModule (Lightning's floor)", "fit() + trial callbacks"):
        assert f"| {loop}" in out


@pytest.mark.slow  # a benchmark's smoke run, as the others (docs/TESTING.md): 3-7 s of timed steps
def test_optimizer_step_quick_prints_every_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.optimizer_step import HEADER, KERNELS, NETS, main

    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert HEADER in out
    rows = [line for line in out.splitlines() if any(f"| {kernel} " in line for kernel in KERNELS)]
    assert len(rows) == len(NETS) * len(KERNELS)
    reference = [row for row in rows if "(reference)" in row]
    assert len(reference) == len(NETS) and all(row.count(" 1.00x ") == 2 for row in reference)  # its own ratio, twice


def test_optimizer_step_refuses_an_unbounded_count() -> None:
    from benchmarks.optimizer_step import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--steps", "0"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_gpu_check_quick_runs_every_piece_on_the_cpu(isolated_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/gpu_check.sh cannot run here; its Python runs every measurement on the CPU
    (the measurements in this process, the searches as the real subprocesses they are)."""
    from benchmarks.gpu_check import HEADER, main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the searches it starts: one thread per process on 2 cores
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert HEADER in out and "| fit(), train samples/s" in out
    rows = [line for line in out.splitlines() if line.startswith("| default run")]
    assert len(rows) == 1 and "failed" not in rows[0] and "n/a" not in rows[0], out  # it ran, exported, and says its test accuracy
