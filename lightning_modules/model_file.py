"""Model weights as safetensors files that rebuild the model without unpickling anything.

One file holds the network's state dict, optionally the first-layer snapshots taken during
training, and the hyperparameters as JSON metadata, so `load_model_file` needs nothing else.
The trial objective stores one per new best trial; the export writes one without snapshots.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lightning_modules.classifier import Classifier
from lightning_modules.errors import UserInputError
from lightning_modules.hyperparams import HyperParams

SNAPSHOT_PREFIX = "snapshot.step_"
NET_PREFIX = "net."
FORMAT = "mnist-search/1"


class ModelFileError(UserInputError):
    """A model file that is missing, corrupt or not one of ours."""


@dataclass
class ModelFile:
    model: Classifier
    hp: HyperParams
    snapshots: dict[int, torch.Tensor]
    metadata: dict[str, str]


def save_model_file(
    model: Classifier, path: Path, snapshots: dict[int, torch.Tensor] | None = None, extra: dict[str, str] | None = None
) -> Path:
    """Weights (+ snapshots) and the hyperparameters that rebuild the network, in one file."""
    tensors = {f"{NET_PREFIX}{k}": v.detach().contiguous() for k, v in model.net.state_dict().items()}
    for step, weight in (snapshots or {}).items():
        tensors[f"{SNAPSHOT_PREFIX}{step}"] = weight.detach().contiguous()
    metadata = {**(extra or {}), "hyperparams": json.dumps(model.hp.to_dict()), "format": FORMAT}
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as error:
        raise _as_os_error(error, path) from None
    return path


def _as_os_error(error: SafetensorError, path: Path) -> OSError:
    """safetensors' write error as the OSError it wraps ("I/O error: No space left on device (os
    error 28)"), naming the file: every caller handles a full disk as an OSError, and this one
    escaped them all as a traceback."""
    found = re.search(r"os error (\d+)", str(error))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata in one pass; any unreadable file becomes a one-line ModelFileError."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: not a readable safetensors model file ({error})") from None
    return tensors, metadata


def _hyperparams(metadata: dict[str, str], path: Path) -> HyperParams:
    if "hyperparams" not in metadata:
        raise ModelFileError(f"{path}: no hyperparameters in the file's metadata; not an mnist-search model")
    try:
        return HyperParams.from_dict(json.loads(metadata["hyperparams"]))
    except (ValueError, TypeError) as error:
        raise ModelFileError(f"{path}: unusable hyperparameters in the metadata ({error})") from None


def load_model_file(path: Path) -> ModelFile:
    """Rebuild the model (in eval mode) from a file written by `save_model_file`."""
    tensors, metadata = _read_tensors(path)
    hp = _hyperparams(metadata, path)
    model = Classifier(hp)
    state = {k.removeprefix(NET_PREFIX): v for k, v in tensors.items() if k.startswith(NET_PREFIX)}
    try:
        model.net.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(f"{path}: weights do not fit the recorded architecture ({str(error).splitlines()[0]})") from None
    model.eval()
    snapshots = {int(k.removeprefix(SNAPSHOT_PREFIX)): v for k, v in tensors.items() if k.startswith(SNAPSHOT_PREFIX)}
    return ModelFile(model, hp, dict(sorted(snapshots.items())), metadata)
