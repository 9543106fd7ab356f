"""Bodies for spawned worker processes in tests, in a module of their own.

A spawned child imports the module that defines its target: this one imports the standard
library and `lightning_modules/device.py` (no torch at import) and starts in a fraction of a
second, where a test module (torch, Lightning) costs each child about 5 s of CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning_modules.device import CUDA_VISIBLE_DEVICES


def record_environment(stop: object, folder: str, index: int) -> None:
    """Write what this process was started with (its CUDA_VISIBLE_DEVICES), then end."""
    Path(folder, f"worker-{index}").write_text(os.environ.get(CUDA_VISIBLE_DEVICES, "<unset>"))


def spin_until_stopped(stop: object, folder: str, index: int) -> None:
    """Say its pid, then spin (a trial that never ends) until the stop request comes."""
    import time

    Path(folder, f"pid-{index}").write_text(str(os.getpid()))
    while not stop.event.is_set():  # type: ignore[attr-defined]
        time.sleep(0.01)
