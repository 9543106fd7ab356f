"""Issue #15, the GPU when there is one: the choice resolved against a faked list of GPUs, refused
before any study when it cannot be honoured, workers spread over GPUs, and models that leave
`fit` on the CPU in float32. Everything here runs on a machine without a GPU."""

from __future__ import annotations

import os
import typing
from pathlib import Path

import pytest
import torch
from worker_bodies import record_environment

import search.run
from lightning_modules.classifier import build_optimizer, optimizer_kernel
from lightning_modules.data.split import DataSplit
from lightning_modules.device import (
    ACCELERATORS,
    CUDA_VISIBLE_DEVICES,
    Device,
    DeviceError,
    physical_ids,
    resolve_device,
    thread_share,
    threads_per_worker,
    usable_cores,
    worker_visible_devices,
)
from lightning_modules.hyperparams import HyperParams
from lightning_modules.training import evaluate, fit, lightning_device
from search.settings import Settings, TrainingConfig
from search.settings_file import load_settings
from search.trial_loop import device_words, worker_environments
from search.workers import StopRequest, WorkerPool

H200 = "NVIDIA H200"


# ---------------------------------------------------------------- resolving the choice


def test_auto_takes_a_gpu_when_there_is_one_and_the_cpu_otherwise() -> None:
    assert resolve_device("auto", None, [], 2) == Device("cpu", (), "CPU (2 threads per worker)")
    gpu = resolve_device("auto", None, [H200, H200], 8, workers=2)
    assert (gpu.kind, gpu.indices, gpu.torch_device) == ("cuda", (0, 1), "cuda:0")
    assert gpu.description == f"cuda:0 ({H200}), cuda:1 ({H200})"
    assert resolve_device("cpu", None, [H200], 1).description == "CPU (1 thread per worker)"
    assert resolve_device("gpu", [1], [H200, "NVIDIA A100"], 1).description == "cuda:1 (NVIDIA A100)"


def test_gpus_fewer_workers_leave_idle_are_named_so_in_the_first_line() -> None:
    """`--devices 0,1` with one worker trained on cuda:0 alone while the first line named both."""
    one = resolve_device("gpu", [0, 1], [H200, H200], 8)
    assert (one.indices, one.torch_device) == ((0, 1), "cuda:0")
    assert one.description.startswith(f"cuda:0 ({H200}); cuda:1 idle: 1 worker(s)") and "--workers 2" in one.description
    three = resolve_device("auto", None, [H200] * 4, 2, workers=3)
    assert three.description.startswith(f"cuda:0 ({H200}), cuda:1 ({H200}), cuda:2 ({H200}); cuda:3 idle")
    assert worker_visible_devices(3, physical_ids(three.indices), 1) == ["0", "1", "2"]  # the GPUs it names


def test_devices_on_the_cpu_are_named_as_unused_in_the_first_line() -> None:
    """--devices with no GPU to take them was dropped without a word: the run's first line said
    "on the CPU" and nothing of the indices the user asked for."""
    assert resolve_device("auto", [1], [], 2).description == "CPU (2 threads per worker); --devices 1 unused: torch sees no GPU here"
    assert resolve_device("cpu", [0, 1], [H200], 1).description == "CPU (1 thread per worker); --devices 0,1 unused: --accelerator cpu"


@pytest.mark.parametrize(
    ("accelerator", "devices", "gpus", "words"),
    [
        ("gpu", None, [], ["--accelerator gpu", "no usable GPU", "--accelerator cpu"]),
        ("gpu", [2], [H200, H200], ["--devices 2", "no GPU 2", "visible: 0-1"]),
        ("tpu", None, [H200], ["'tpu'", "auto, cpu, gpu"]),
    ],
)
def test_a_choice_this_machine_cannot_honour_is_one_line_naming_the_fix(
    accelerator: str, devices: list[int] | None, gpus: list[str], words: list[str]
) -> None:
    with pytest.raises(DeviceError) as error:
        resolve_device(accelerator, devices, gpus, 1)
    assert "\n" not in str(error.value) and all(w in str(error.value) for w in words), error.value


def test_the_settings_offer_exactly_the_accelerators_the_resolver_knows() -> None:
    assert typing.get_args(TrainingConfig.model_fields["accelerator"].annotation) == ACCELERATORS


def test_device_flags_reach_the_settings() -> None:
    args = search.run.build_parser().parse_args(["--accelerator", "cpu", "--devices", "0,2", "--workers-per-device", "3"])
    settings = search.run.parse_settings(["--accelerator", "cpu", "--devices", "0,2", "--workers-per-device", "3", "--precision", "bf16-mixed"])
    assert args.training_devices == [0, 2]
    assert (settings.training.accelerator, settings.training.devices) == ("cpu", [0, 2])
    assert (settings.training.workers_per_device, settings.training.precision) == (3, "bf16-mixed")
    assert search.run.parse_settings(["--devices", "all"]).training.devices is None
    assert Settings().training.accelerator == "auto" and Settings().training.devices is None


# ---------------------------------------------------------------- refused before any study


@pytest.mark.parametrize(
    ("argv", "gpus", "words"),
    [
        (["--accelerator", "gpu"], [], ["--accelerator gpu", "no usable GPU"]),
        (["--accelerator", "gpu", "--devices", "1"], [H200], ["no GPU 1"]),
        (["--workers", "3", "--workers-per-device", "1"], [H200], ["--workers 3 on 1 GPU(s)", "at most 1"]),
        (["--devices", "0,x"], [H200], ["GPU indices like 0 or 0,1"]),
        (["--devices", "4096"], [H200], ["distinct GPU indices 0-4095"]),
        (["--devices", "0,0"], [H200], ["distinct GPU indices 0-4095"]),
        (["--accelerator", "tpu"], [H200], ["--accelerator", "tpu"]),
    ],
)
def test_a_device_the_machine_lacks_is_refused_before_any_study_is_created(
    argv: list[str], gpus: list[str], words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Faked GPUs (this machine has none): the check is the runner's own, only the list is injected."""
    monkeypatch.setattr(search.run, "usable_cores", lambda: 4)  # so --workers 3 passes the per-core check
    monkeypatch.setattr(search.run, "visible_gpus", lambda: list(gpus))
    db = tmp_path / "s.db"
    assert search.run.main([*argv, "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and all(w in err for w in words), err
    assert not db.exists() and not list(tmp_path.iterdir())


def test_on_this_machine_the_real_gpu_list_decides() -> None:
    """The real torch: a CPU-only machine refuses --accelerator gpu; a GPU machine resolves it."""
    from lightning_modules.device import visible_gpus

    gpus = visible_gpus()
    assert len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if not gpus:
        with pytest.raises(DeviceError):
            search.run.check_device(load_settings(None, {"training": {"accelerator": "gpu"}}))
    assert search.run.check_device(load_settings(None, {"training": {"accelerator": "cpu"}})).kind == "cpu"
    shared = search.run.check_device(load_settings(None, {"training": {"accelerator": "cpu", "workers_per_device": 4}}))
    assert shared.description.endswith("; --workers-per-device 4 unused: no GPU")  # it was dropped without a word


# ---------------------------------------------------------------- workers on GPUs


@pytest.mark.parametrize(
    ("workers", "ids", "per_device", "expected"),
    [
        (4, ["0"], 4, ["0", "0", "0", "0"]),
        (3, ["0", "1"], 2, ["0", "1", "0"]),
        (4, ["2", "3"], 2, ["2", "3", "2", "3"]),
        (1, ["GPU-uuid-a", "GPU-uuid-b"], 1, ["GPU-uuid-a"]),
    ],
)
def test_workers_are_dealt_round_robin_over_the_gpus(workers: int, ids: list[str], per_device: int, expected: list[str]) -> None:
    assert worker_visible_devices(workers, ids, per_device) == expected


@pytest.mark.parametrize(("workers", "ids", "per_device"), [(5, ["0", "1"], 2), (2, ["0"], 1), (1, [], 4), (1, ["0"], 0)])
def test_more_workers_than_gpu_places_is_refused(workers: int, ids: list[str], per_device: int) -> None:
    with pytest.raises(DeviceError):
        worker_visible_devices(workers, ids, per_device)


def test_visible_indices_map_to_the_ids_this_process_was_given() -> None:
    assert physical_ids([0, 1], {CUDA_VISIBLE_DEVICES: "2,3"}) == ["2", "3"]
    assert physical_ids([1], {}) == ["1"]


def test_each_gpu_worker_gets_its_environment_and_cpu_workers_none() -> None:
    settings = load_settings(None, {"study": {"workers": 3}, "training": {"workers_per_device": 2}})
    gpus = Device("cuda", (0, 1), "two")
    assert worker_environments(settings, gpus) == [{CUDA_VISIBLE_DEVICES: g} for g in ("0", "1", "0")]
    assert worker_environments(settings, Device("cpu", (), "CPU")) == [{}, {}, {}]
    assert "up to 2 per GPU" in device_words(gpus, settings)
    assert device_words(Device("cpu", (), "CPU (1 thread per worker)"), settings) == "on the CPU (1 thread per worker)"


@pytest.mark.parametrize(("workers", "cores", "threads"), [(1, 16, 16), (4, 16, 4), (3, 2, 1), (64, 16, 1)])
def test_cpu_threads_are_an_equal_share_of_the_cores(workers: int, cores: int, threads: int) -> None:
    assert thread_share(workers, cores) == threads


@pytest.mark.parametrize(("omp", "threads"), [("3", 3), (None, 8), ("", 8), ("2,1", 8)])
def test_the_first_line_counts_the_threads_torch_is_given(omp: str | None, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_NUM_THREADS, when a positive count, is what configure_torch sets and what the run's
    first line says; unset or OpenMP's per-level list falls back to the share of the cores."""
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert threads_per_worker(2, cores=16) == threads


def test_the_cores_counted_are_the_ones_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The affinity mask alone let a container capped at 2 CPUs on a 64-core host give each worker
    64 threads. The count is joblib's: affinity, a cgroup CPU quota and LOKY_MAX_CPU_COUNT (its
    user limit, which goes through the same least-of), so the limit below stands for a quota."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert usable_cores() == 1
    assert threads_per_worker(1) == 1


@pytest.mark.parametrize("omp", ["100000", "99999999"])
def test_a_thread_count_no_machine_has_is_one_line_before_any_study(
    omp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """OMP_NUM_THREADS=100000 was a MemoryError traceback and 99999999 a segfault, each after the
    study (and its first trials) had been created."""
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    db = tmp_path / "s.db"
    assert search.run.main(["--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: OMP_NUM_THREADS={omp} is more than 1024 threads") and err.count("\n") == 1, err
    assert not db.exists()


LIMIT_FIX = "is not a whole number of CPUs; unset it or set a count like 2"
THREADS_FIX = "is not a thread count; set a positive count like 1, or unset it"


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    # joblib raised ValueError from int('1.5') (a traceback) and read 0 and -5 as one CPU; libgomp
    # printed "Invalid value" for OMP_NUM_THREADS=abc, 0 or -1 and the search went on as if unset
    [*(("LOKY_MAX_CPU_COUNT", v, LIMIT_FIX) for v in ["1.5", "0", "-5", "\u00b2"])]
    + [*(("OMP_NUM_THREADS", v, THREADS_FIX) for v in ["abc", "0", "-1", "2,0", "1.5", "\u00b2", "2,\u00b2"])],
)
def test_a_cpu_or_thread_count_that_is_not_one_is_one_line_before_any_study(
    variable: str, value: str, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    db = tmp_path / "s.db"
    assert search.run.main(["--storage", f"sqlite:///{db}"]) == 2
    assert capsys.readouterr().err == f"error: {variable}={value!r} {fix}\n"
    assert not db.exists()


@pytest.mark.parametrize("variable", ["LOKY_MAX_CPU_COUNT", "OMP_NUM_THREADS"])
@pytest.mark.parametrize("value", ["", " "])
def test_a_cpu_or_thread_count_set_but_empty_is_read_as_unset(variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOKY_MAX_CPU_COUNT= was joblib's int('') ValueError traceback; OMP_NUM_THREADS= ran on with
    libgomp's "Invalid value" warning on stderr. A template such as ${SLURM_CPUS_PER_TASK} leaves
    either blank where its source is unset: read as unset, and removed before torch or joblib reads it."""
    monkeypatch.setenv(variable, value)
    if variable == "OMP_NUM_THREADS":
        assert threads_per_worker(2, cores=16) == 8
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert usable_cores() >= 1
    assert variable not in os.environ


@pytest.mark.slow
def test_a_spawned_worker_starts_with_its_cuda_visible_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CUDA_VISIBLE_DEVICES, raising=False)
    environments = [{CUDA_VISIBLE_DEVICES: "1"}, {CUDA_VISIBLE_DEVICES: "0"}, {}]
    pool = WorkerPool(record_environment, (str(tmp_path),), 3, StopRequest(), environments)
    assert pool.run(lambda: None) == [0, 0, 0]
    assert [(tmp_path / f"worker-{i}").read_text() for i in range(3)] == ["1", "0", "<unset>"]
    assert CUDA_VISIBLE_DEVICES not in os.environ  # the runner's own environment is as it was


# ---------------------------------------------------------------- training on a device


def test_lightning_gets_one_device_per_process() -> None:
    assert lightning_device("cpu") == ("cpu", 1)
    assert lightning_device("cuda:1") == ("gpu", [1])
    with pytest.raises(ValueError):
        lightning_device("gpu")


def test_fit_on_an_explicit_cpu_returns_a_cpu_float32_model(tiny_split: DataSplit) -> None:
    hp = HyperParams("dnn", (32,), 0.1, 3e-3, "adam", 0.0, 64)
    explicit = fit(hp, tiny_split, seed=3, max_epochs=1, snapshot_steps=[2], device="cpu")
    default = fit(hp, tiny_split, seed=3, max_epochs=1, snapshot_steps=[2])
    assert explicit.history == default.history  # the device plumbing changes nothing on the CPU
    params = list(explicit.model.parameters())
    assert params and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    assert all(s.device.type == "cpu" and s.dtype == torch.float32 for s in explicit.snapshots.values())
    scored = evaluate(explicit.model, tiny_split.x_test, tiny_split.y_test, device="cpu")
    assert scored.accuracy == evaluate(explicit.model, tiny_split.x_test, tiny_split.y_test).accuracy
    assert scored.confusion.device.type == "cpu" and scored.n_samples == len(tiny_split.y_test)


def test_a_split_already_on_the_device_is_not_copied(tiny_split: DataSplit) -> None:
    assert tiny_split.to("cpu") is tiny_split


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_the_cpu_optimizer_kernel_leaves_results_bitwise_unchanged(optimizer: str) -> None:
    """foreach on the CPU must train exactly as torch's default per-tensor loop did before."""
    hp = HyperParams("dnn", (16,), 0.0, 1e-2, optimizer, 1e-4, 32)

    def train(make: typing.Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        opt, data = make(list(net.parameters())), torch.Generator().manual_seed(1)
        for _ in range(30):
            x, y = torch.rand(32, 20, generator=data), torch.randint(0, 4, (32,), generator=data)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    def plain(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=1e-4, foreach=False)
        cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=1e-2, weight_decay=1e-4, foreach=False)

    ours, reference = train(lambda p: build_optimizer(hp, p, "cpu")), train(plain)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))
    assert optimizer_kernel(optimizer, "cpu") == {"foreach": True}
    assert optimizer_kernel(optimizer, "cuda") == ({"foreach": True} if optimizer == "sgd" else {"fused": True})


def test_cpu_work_after_gpu_work_in_one_process_runs_at_full_float32(tiny_split: DataSplit, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1-worker GPU run exports in its own process: the GPU's TF32 setting, process-wide and in
    torch 2.13 reaching the CPU's oneDNN matmuls too, and torch's deterministic mode (which fills
    every new tensor first) must not follow the model onto the CPU."""
    from lightning_modules.training import CUBLAS_WORKSPACE, prepare_device

    monkeypatch.delenv(CUBLAS_WORKSPACE[0], raising=False)
    before = torch.get_float32_matmul_precision()
    try:
        prepare_device("cuda:0")  # what a GPU fit does first; it touches no GPU
        assert torch.get_float32_matmul_precision() == "high"
        assert os.environ[CUBLAS_WORKSPACE[0]] == CUBLAS_WORKSPACE[1]  # before cuBLAS's first use
        torch.use_deterministic_algorithms(True, warn_only=True)  # what the GPU trainer turned on
        hp = HyperParams("linear", (), 0.0, 3e-3, "adam", 0.0, 128)
        fit(hp, tiny_split, seed=0, max_epochs=1, device="cpu")
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_float32_matmul_precision(before)
