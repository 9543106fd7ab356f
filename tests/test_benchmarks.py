"""Smoke test of the benchmarks: the quick runs exit 0 and print their tables.

Nothing about the numbers: they depend on the machine and its load (see docs/BENCHMARKS.md).
The other benchmarks' quick modes train or spawn searches for longer than this suite allows.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
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


@pytest.mark.slow
def test_gpu_check_kills_a_search_past_its_share_of_the_budget_and_says_so(isolated_home: Path) -> None:
    """The check's outer `timeout` used to end it before any run's row was printed: now each search
    gets what is left of the budget and its row says it was killed (a real search.run, killed)."""
    from benchmarks.gpu_check import search_run

    wall, search, _finished, accuracy, memory = search_run(["--accelerator", "cpu", "--target-accuracy", "none", "--trials", "50"], timeout=1, gpu=False)
    assert accuracy == "killed after 1 s" and memory == "none (CPU)" and wall >= 1
    assert search is None  # killed: it never said how long its trials took, and no per-minute figure is made up


def test_gpu_check_without_a_gpu_refuses_in_one_line_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    """It used to warn and spend its 8 minutes on the CPU under a "GPU check" title."""
    import torch

    from benchmarks.gpu_check import main, pick_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check would measure it")
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("error: torch "), captured
    assert "--allow-cpu" in captured.err and "--quick" in captured.err
    assert [pick_device(quick, allow, cuda=False) for quick, allow in ((False, False), (False, True), (True, False))] == [None, "cpu", "cpu"]
    assert [pick_device(quick, allow, cuda=True) for quick, allow in ((False, False), (False, True), (True, False))] == ["cuda:0", "cuda:0", "cpu"]


def test_gpu_check_header_names_the_versions_it_ran_with() -> None:
    """The GPU image's torch (2.11) is not pyproject's (2.13): a figure without its versions is unplaceable."""
    import importlib.metadata
    import platform

    import torch

    from benchmarks.gpu_check import versions

    def fake(name: str) -> str:
        if name == "optuna":
            raise importlib.metadata.PackageNotFoundError(name)
        return f"{name}-v"

    line = versions(fake)
    assert line.startswith(f"versions: python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    assert line.endswith(", lightning lightning-v, torchmetrics torchmetrics-v, optuna not installed"), line
    real = versions()
    assert all(f"{name} {importlib.metadata.version(name)}" in real for name in ("lightning", "torchmetrics", "optuna")), real


def test_gpu_check_reads_the_search_s_own_seconds_from_its_stopped_line() -> None:
    """trials/min over the process's wall time counted imports, worker start-up and the export."""
    from benchmarks.gpu_check import search_seconds

    assert search_seconds("trial 0 ...\nstopped: timeout of 120 s reached after 121.3 s\nbest trial 0: val_acc=0.9\n") == 121.3
    assert search_seconds("stopped: target reached by trial 3 (0.9512 >= 0.95) after 14 s\n") == 14.0
    assert search_seconds("stopped: budget of 100 finished trials spent after 95.0 s\n") == 95.0
    for out in ("", "trial 0 ...\n", "stopped on request; finished trials are saved ... Resume with: python -m search.run\n",
                "note: stopped: timeout of 1 s reached after 2.0 s\n", "stopped: timeout of 1 s reached after 2.0 s, then more\n"):
        assert search_seconds(out) is None, out


def test_gpu_check_memory_rows_leave_out_the_processes_there_before_the_search() -> None:
    """The check's own process (CUDA context, allocator cache from its rows) was counted as a worker."""
    import os

    from benchmarks.gpu_check import MemorySampler, compute_apps

    assert compute_apps("101, 500\n 202 ,[N/A]\nNo running processes found\n303, 700\n") == {"101": 500, "303": 700}
    sampler = MemorySampler()  # not entered: no thread, no nvidia-smi
    sampler.excluded.add("101")  # as on entry: what nvidia-smi listed before the search started
    for used in (800, 900):
        sampler.record(f"101, 500\n{os.getpid()}, 600\n303, {used}\n")
    assert sampler.samples == {"303": [800, 900]}
    assert sampler.summary() == "1 process(es): peak 900 MiB, first to last +100 MiB at most"


def test_gpu_check_budget_fits_the_outer_timeout_and_keeps_each_later_search_its_timeout() -> None:
    """RESERVE (60 s) was below the 120-s search timeout, and the deadline was set after the imports."""
    from benchmarks.gpu_check import DEFAULT_BUDGET, OUTER_TIMEOUT, SEARCH_OVERHEAD, STOP_GRACE, allowance, process_age

    assert DEFAULT_BUDGET + STOP_GRACE + 15 <= OUTER_TIMEOUT
    assert f"exec timeout {OUTER_TIMEOUT} " in (Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh").read_text()
    assert SEARCH_OVERHEAD >= 30
    assert allowance(400, 2, 120) == 400 - 2 * (120 + SEARCH_OVERHEAD)  # the default run: what the two searches leave it
    assert allowance(300, 1, 120) == 300 - 120 - SEARCH_OVERHEAD and allowance(150, 0, 120) == 150  # the last: all that is left
    stat = "4242 (python3 -m x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 3 0 {start} 1000 100"
    assert process_age(stat.format(start=1000), since_boot=12.5, ticks_per_s=100) == 2.5  # field 22 after a ')' in the name
    assert process_age(stat.format(start=100), since_boot=1000.0, ticks_per_s=100) == 0.0  # 999 s: not this run's imports
    assert process_age(stat.format(start=2000), since_boot=10.0, ticks_per_s=100) == 0.0  # in the future


def test_gpu_check_preflight_names_what_the_wheels_bring_apart_from_what_the_image_lacks() -> None:
    """It said "run gpu_wheels.sh" for joblib, matplotlib or PIL too, which gpu_wheels.sh does not fetch."""
    import re
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    script = re.search(r"<<'PY' \|\| exit 2\n(.*?)\nPY\n", (root / "benchmarks" / "gpu_check.sh").read_text(), re.DOTALL).group(1)
    ok = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=root, capture_output=True, text=True, timeout=60, check=False)  # no site-packages
    assert bare.returncode == 1 and bare.stderr.count("\n") == 1, bare.stderr
    wheels, image = bare.stderr.split("; and ")
    assert "optuna, optuna-integration" in wheels and "pydantic-core" in wheels and "gpu_wheels.sh" in wheels and "joblib" not in wheels
    assert "torch" in image and "joblib" in image and "PIL" in image and "optuna" not in image and "does not fetch" in image


# ---------------------------------------------------------------- bounded flags

BENCHMARKS = ("anytime", "gpu_check", "memory", "optimizer_step", "reference_search", "search_quality", "throughput", "time_to_target", "workers")
BAD_FLAGS = [
    ("anytime", ["--minutes", "0"]),
    ("anytime", ["--minutes", "nan"]),
    ("anytime", ["--minutes", "1e9"]),
    ("anytime", ["--seeds", *map(str, range(11))]),
    ("anytime", ["--seeds", "-1"]),
    ("anytime", ["--seeds", str(2**31)]),
    ("anytime", ["--train-size", "60000"]),
    ("anytime", ["--variant", "x=" + "y" * 5000]),
    ("anytime", [arg for i in range(9) for arg in ("--variant", f"v{i}=training: {{max_epochs: 2}}")]),
    ("search_quality", ["--trials", "0"]),
    ("search_quality", ["--trials", "-5"]),
    ("search_quality", ["--trials", "1_000"]),
    ("gpu_check", ["--search-timeout", "inf"]),
    ("gpu_check", ["--max-epochs", "1000"]),
    ("memory", ["--trials", "many"]),
    ("optimizer_step", ["--steps", "0"]),
    ("reference_search", ["--target", "1.01"]),
    ("reference_search", ["--target", "0"]),
    ("reference_search", ["--train-size", "50000", "--val-size", "20000"]),
    ("reference_search", ["--data-dir", "/nonexistent/mnist"]),
    ("throughput", ["--threads", "0"]),
    ("throughput", ["--threads", *["1"] * 9]),
    ("throughput", ["--epochs", "1"]),  # epoch 1 is excluded from the figures: nothing would be timed
    ("time_to_target", ["--timeout", "-1"]),
    ("time_to_target", ["--repeats", "2.5"]),
    ("workers", ["--repeats", "1000"]),
    ("workers", ["--kinds", "tiny", "tiny", "tiny"]),
    ("workers", ["--kinds", "tiny", "tiny"]),
]


def _main(script: str) -> Callable[[list[str]], int]:
    return importlib.import_module(f"benchmarks.{script}").main


@pytest.mark.parametrize(("script", "argv"), BAD_FLAGS, ids=[f"{s}-{' '.join(a)[:30]}" for s, a in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_exit_2_before_any_work(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _main(script)(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the machine line: nothing started
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(("error: argument --", "error: --")), captured.err
    assert lines[0].endswith(" --help)")  # OneLineParser's pointer to the flags
    assert "Traceback" not in captured.err and len(lines[0]) < 400


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_has_help_and_bounded_defaults(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--help formats (argparse fails on a stray % in a help text only when it prints one), and
    every default is within its flag's bounds (argparse runs a string default through its type)."""
    with pytest.raises(SystemExit) as exit_info:
        _main(script)(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_integer_and_number_take_their_bounds_and_nothing_else() -> None:
    from benchmarks._common import integer, number

    one_to_ten = integer(1, 10)
    assert one_to_ten("1") == 1 and one_to_ten("10") == 10
    for bad in ("0", "11", "-1", "1.0", "1e1", "1_0", " 5", "+5", "\u0663", "", "9" * 5000):
        with pytest.raises(argparse.ArgumentTypeError, match="want an integer from 1 to 10, got"):
            one_to_ten(bad)
    with pytest.raises(argparse.ArgumentTypeError) as error:
        one_to_ten("x" * 5000)
    assert len(str(error.value)) < 100  # at most 40 characters of the input are quoted
    minutes = number(0, 120, low_open=True)
    assert minutes("120") == 120.0 and minutes("1e-3") == 0.001
    for bad in ("0", "-1", "120.1", "nan", "inf", "-inf", "1e9", "ten"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"want a number from 0 \(exclusive\) to 120, got"):
            minutes(bad)
    assert number(0, 1)("0") == 0.0


# ---------------------------------------------------------------- a search that ends without results


def test_a_search_without_results_is_named_with_its_exit_code(tmp_path: Path) -> None:
    """search_quality reads the export's metrics.json: a search stopped by hand (Ctrl-C: 130),
    failed, or ended before any trial left none, and that is one line naming the search."""
    from benchmarks._common import BenchmarkError
    from benchmarks.search_quality import results_of

    with pytest.raises(BenchmarkError) as error:
        results_of(tmp_path, "ours (TPE + median pruning), seed 3", 130, "trial 0 ...\n\ninterrupted. Resume with: python -m search.run\n")
    assert str(error.value) == ("ours (TPE + median pruning), seed 3: python -m search.run gave no results, exit code 130 (interrupted): "
                                "interrupted. Resume with: python -m search.run")
    with pytest.raises(BenchmarkError, match=r"^random, no pruning, seed 0: python -m search.run gave no results, killed by SIGKILL: no output$"):
        results_of(tmp_path, "random, no pruning, seed 0", -9, "")
    with pytest.raises(BenchmarkError, match=r"seed 1: python -m search.run exported nothing \(no metrics.json\): no completed trial yet"):
        results_of(tmp_path, "TPE, no pruning, seed 1", 0, "no completed trial yet; nothing to export\n")


@pytest.mark.slow  # a subprocess, which fails at its settings file (about 2 s): nothing trains
def test_search_quality_says_which_search_failed_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.search_quality import main

    assert main(["--trials", "1", "--seeds", "4", "--searches", "--variant", "broken=no_such_section: {x: 1}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: ours with broken, seed 4: python -m search.run gave no results, exit code 2: error: "), err


def _cli_code(script: str, argv: list[str]) -> int:
    """`python -m benchmarks.SCRIPT ARGV` in this process: its exit code."""
    from benchmarks._common import cli

    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as ended:
        cli(lambda: module.main(argv))
    return int(ended.value.code)


@pytest.mark.parametrize("results", ["{bad json", '{"search": "ours"}', None])
def test_a_results_file_that_is_not_one_is_one_line_and_exit_2(results: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt results file was a JSONDecodeError traceback; a folder was "no runs in it", exit 1."""
    path = tmp_path / "runs.jsonl"
    if results is None:
        path.mkdir()
    else:
        path.write_text(results + "\n")
    assert _cli_code("anytime", ["--report", "--results", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --results {path}") and "Traceback" not in err, err


def test_a_data_folder_without_mnist_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """MNIST_DATA_DIR naming a folder without the IDX files was a DataError traceback, exit 1."""
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path))
    assert _cli_code("throughput", ["--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path}: missing train-images"), err


def test_time_to_target_reads_every_line_a_run_prints() -> None:
    """`communicate` read stdout beside the stamping thread, and each line went to whichever took
    it first: a third to a half of 1,000 lines were lost, and with them the reference's trials."""
    import os
    import sys

    from benchmarks.time_to_target import _run

    script = "import sys\nfor i in range(2000): print(i, flush=True)\nprint('done', file=sys.stderr)\n"
    start, end, lines, code = _run([sys.executable, "-c", script], dict(os.environ), 60)
    assert code == 0 and start <= end
    assert [line for _, line in lines] == [str(i) for i in range(2000)]
