"""Where training runs: the settings' accelerator choice resolved against the GPUs this machine has.

Plain values in, plain values out, and torch is imported only by `visible_gpus`, so the choice
is checked (and a GPU asked for on a machine without one refused) before any study is touched,
and tests resolve against a faked list of GPUs. Spawned workers get their GPU through
CUDA_VISIBLE_DEVICES (`worker_visible_devices`), set before their torch starts CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lightning_modules.errors import UserInputError

ACCELERATORS = ("auto", "cpu", "gpu")
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
MAX_TORCH_THREADS = 1024  # an OMP_NUM_THREADS above it is a typo, not a machine


class DeviceError(UserInputError):
    """A device choice this machine cannot honour: named with its fix, exit 2, before any study."""


@dataclass(frozen=True)
class Device:
    """The resolved choice: kind "cpu" or "cuda", the visible CUDA indices used, and a label for people."""

    kind: str
    indices: tuple[int, ...]
    description: str  # "cuda:0 (NVIDIA H200)", "CPU (2 threads)"

    @property
    def torch_device(self) -> str:
        """What `fit` and `evaluate` take: "cpu", or "cuda:N" for the first GPU of this process."""
        return f"cuda:{self.indices[0]}" if self.kind == "cuda" else "cpu"


def thread_share(workers: int, cores: int) -> int:
    """CPU threads per worker: an equal share of the cores, at least one, on a GPU as on the CPU
    (a GPU worker's Python loop and launches still run on its threads)."""
    return max(1, cores // max(1, workers))


def _positive_count(text: str) -> bool:
    """ASCII digits making a number above 0 (str.isdigit also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit() and int(text) > 0


def _unset_if_blank(variable: str) -> str:
    """The variable's value, stripped; set but blank, it is removed from this process's environment
    (and so from its workers') and read as unset, as a shell template such as
    OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK} leaves it where its source is unset."""
    value = os.environ.get(variable)
    if value is not None and not value.strip():
        del os.environ[variable]
    return (value or "").strip()


def usable_cores() -> int:
    """The CPUs this process may use: the least of the machine's, its affinity mask's and a
    container's CPU quota (cgroup v1 or v2), as joblib (loky) counts them.

    A container limited to 2 CPUs on a 64-core host sees 64 cores in its affinity mask: 64 torch
    threads per worker would spend most of each scheduling period throttled. `LOKY_MAX_CPU_COUNT`
    lowers the count further (loky's documented limit); a value that is not a whole number is a
    DeviceError here rather than joblib's ValueError traceback."""
    import joblib

    limit = _unset_if_blank("LOKY_MAX_CPU_COUNT")  # joblib reads the raw value: '' was int('')'s ValueError traceback
    if limit and not _positive_count(limit):  # joblib read 0 and -5 as 1 CPU, '1.5' as a ValueError
        raise DeviceError(f"LOKY_MAX_CPU_COUNT={limit[:40]!r} is not a whole number of CPUs; unset it or set a count like 2")
    return int(joblib.cpu_count())


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """The torch threads each of `workers` processes gets: OMP_NUM_THREADS when it is one positive
    count, else (unset, or one count per nesting level) an equal share of the cores; any other
    value is a DeviceError, as OpenMP itself would only warn and ignore it. One function, so the run's first line says the
    count `configure_torch` sets.

    OMP_NUM_THREADS, when set, wins: on a machine shared with other jobs one thread per process
    is several times faster than two that spin against the other load (docs/BENCHMARKS.md).
    On an idle 2-core machine one worker gains about 1.2x from its second thread.
    """
    explicit = _unset_if_blank("OMP_NUM_THREADS")  # libgomp warned of '' on torch's import, then ignored it
    levels = explicit.split(",")  # OpenMP's form: a count per nesting level, "4" or "4,1"
    if explicit and not all(_positive_count(level.strip()) for level in levels):  # libgomp warns and ignores it
        raise DeviceError(f"OMP_NUM_THREADS={explicit[:20]!r} is not a thread count; set a positive count like 1, or unset it")
    if _positive_count(explicit):
        if int(explicit) > MAX_TORCH_THREADS:  # 100000 was a MemoryError, 99999999 a segfault, after the study existed
            raise DeviceError(f"OMP_NUM_THREADS={explicit[:20]} is more than {MAX_TORCH_THREADS} threads per process; set at most the cores, or unset it")
        return int(explicit)
    return thread_share(workers, cores or usable_cores())


def configure_torch(workers: int = 1, cores: int | None = None) -> int:
    """Give each of `workers` processes its thread count (`threads_per_worker`); returns it."""
    threads = threads_per_worker(workers, cores)
    import torch  # here: choosing a device or a thread share imports no torch

    torch.set_num_threads(threads)
    return threads


def placement(device: str) -> dict[str, object]:
    """Where a fit runs, as a trial records it: a CPU's float sums depend on its thread count (one
    and two threads gave one trial 0.9535 and 0.954 after 8 epochs), a GPU's on its model."""
    import torch

    if device.startswith("cuda"):
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(torch.device(device))}
    return {"device": "cpu", "threads": torch.get_num_threads()}


def visible_gpus() -> list[str]:
    """Names of the GPUs torch can use, by visible index; empty on a CPU-only build or machine."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def resolve_device(accelerator: str, devices: Sequence[int] | None, gpus: Sequence[str], threads: int, workers: int = 1) -> Device:
    """`accelerator` (auto | cpu | gpu) and GPU `devices` (None: all) against the `gpus` there are,
    for `workers` processes.

    auto means a GPU when there is one: a search on an idle GPU is many times faster, and a
    machine without one keeps working unchanged. Asking for a GPU, or for an index, that is not
    there is a DeviceError rather than a silent fall-back to a run many times slower. Workers
    take the chosen GPUs round-robin from the first (`worker_visible_devices`), so with fewer
    workers than GPUs the last ones stay idle: the description names them as idle.
    """
    if accelerator not in ACCELERATORS:
        raise DeviceError(f"--accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    cpu = Device("cpu", (), f"CPU ({threads} thread{'s' if threads != 1 else ''} per worker)")
    if accelerator == "cpu" or (accelerator == "auto" and not gpus):
        if devices is None:
            return cpu
        why = "--accelerator cpu" if accelerator == "cpu" else "torch sees no GPU here"
        return replace(cpu, description=f"{cpu.description}; --devices {','.join(map(str, devices))} unused: {why}")
    if not gpus:
        raise DeviceError(
            "--accelerator gpu, but torch sees no usable GPU (no CUDA build, no driver, or "
            "CUDA_VISIBLE_DEVICES hides them); run with --accelerator cpu or auto"
        )
    chosen = tuple(range(len(gpus))) if devices is None else tuple(devices)
    missing = [i for i in chosen if not 0 <= i < len(gpus)]
    if missing:
        raise DeviceError(
            f"--devices {','.join(map(str, chosen))}: no GPU {missing[0]} here (visible: 0-{len(gpus) - 1}); "
            "pick visible indices or pass --devices all"
        )
    used, idle = chosen[: max(1, workers)], chosen[max(1, workers) :]
    names = ", ".join(f"cuda:{i} ({gpus[i]})" for i in used)
    if idle:
        names += f"; {', '.join(f'cuda:{i}' for i in idle)} idle: {max(1, workers)} worker(s), one GPU each before any shares (--workers {len(chosen)} uses all)"
    return Device("cuda", chosen, names)


def worker_visible_devices(workers: int, device_ids: Sequence[str], per_device: int) -> list[str]:
    """Each worker's CUDA_VISIBLE_DEVICES: one GPU each, round-robin, at most `per_device` per GPU.

    `device_ids` are the ids as CUDA_VISIBLE_DEVICES spells them (physical indices or UUIDs),
    so a worker sees exactly one GPU, as its cuda:0. Round-robin spreads the first workers over
    every GPU before any GPU takes a second one.
    """
    if per_device < 1:
        raise DeviceError(f"--workers-per-device must be at least 1 (got {per_device})")
    if not device_ids:
        raise DeviceError("no GPU to place workers on; run with --accelerator cpu")
    if workers > len(device_ids) * per_device:
        raise DeviceError(
            f"--workers {workers} on {len(device_ids)} GPU(s) with --workers-per-device {per_device}: at most "
            f"{len(device_ids) * per_device}; raise --workers-per-device or lower --workers"
        )
    return [device_ids[i % len(device_ids)] for i in range(workers)]


def physical_ids(indices: Sequence[int], environ: dict[str, str] | None = None) -> list[str]:
    """Visible indices -> the ids a child's CUDA_VISIBLE_DEVICES needs: when this process already
    sees a subset ("2,3"), visible index 0 is physical GPU 2."""
    env = os.environ if environ is None else environ
    shown = [part.strip() for part in env.get(CUDA_VISIBLE_DEVICES, "").split(",") if part.strip()]
    return [shown[i] if i < len(shown) else str(i) for i in indices] if shown else [str(i) for i in indices]
