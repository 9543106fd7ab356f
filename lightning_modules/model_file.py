"""Model weights as safetensors files that rebuild the model without unpickling anything.

One file holds the network's state dict, optionally the first-layer snapshots taken during
training, and the hyperparameters as JSON metadata, so `load_model_file` needs nothing else.
The trial objective stores one per new best trial; the export writes one without snapshots.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from dataclasses import dataclass, fields
from itertools import pairwise
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lightning_modules.classifier import Classifier
from lightning_modules.data.format import N_CLASSES, N_PIXELS
from lightning_modules.errors import UserInputError
from lightning_modules.hyperparams import CLASSIFIERS, OPTIMIZERS, HyperParams

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


_NOT_OURS = "not a model file mnist-search wrote; export the study again with python -m search.export"
_FIELDS = tuple(field.name for field in fields(HyperParams))
_WEIGHT_TYPE = "F32"  # the weights and snapshots save_model_file writes: models leave training in float32
_STEP = re.compile(r"[0-9]{1,18}")  # snapshot.step_<global step>


def _quoted(text: object, limit: int = 60) -> str:
    """`text` as a bounded repr for an error line: a key or value from the file could be any length."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type(): True is no number here


def _hyperparams_problem(values: object) -> str | None:
    """What is wrong with the metadata's hyperparameters, checked as JSON before anything is built
    from them: hidden units of -5 raised a traceback, [100000]*3 asked for 40 GB."""
    if not isinstance(values, dict):
        return f"{_quoted(values)} is no JSON object"
    missing, unknown = [f for f in _FIELDS if f not in values], [k for k in values if k not in _FIELDS]
    if missing or unknown:
        return f"no {missing[0]}" if missing else f"an unknown field {_quoted(unknown[0])}"
    units = values["hidden_units"]
    checks = {
        "classifier": values["classifier"] in CLASSIFIERS, "optimizer": values["optimizer"] in OPTIMIZERS,
        "hidden_units": isinstance(units, list) and all(type(u) is int and u >= 1 for u in units),
        "dropout": _number(values["dropout"]) and 0 <= values["dropout"] < 1,
        "learning_rate": _number(values["learning_rate"]) and values["learning_rate"] > 0,
        "weight_decay": _number(values["weight_decay"]) and values["weight_decay"] >= 0,
        "batch_size": type(values["batch_size"]) is int and values["batch_size"] >= 1,
    }
    wanted = {"classifier": f"one of {CLASSIFIERS}", "optimizer": f"one of {OPTIMIZERS}", "hidden_units": "a list of whole numbers of at least 1",
              "dropout": "in [0, 1)", "learning_rate": "above 0", "weight_decay": "0 or more", "batch_size": "a whole number of at least 1"}
    name = next((name for name, ok in checks.items() if not ok), None)
    return None if name is None else f"{name} {_quoted(values[name])} is not {wanted[name]}"


def _hyperparams(metadata: dict[str, str], path: Path) -> HyperParams:
    if "hyperparams" not in metadata:
        raise ModelFileError(f"{path}: no hyperparameters in the file's metadata; not an mnist-search model")
    try:
        values = json.loads(metadata["hyperparams"])
    except (ValueError, RecursionError) as error:  # RecursionError: [[[...]]] nested deeper than Python recurses
        raise ModelFileError(f"{path}: unusable hyperparameters in the metadata ({error}); {_NOT_OURS}") from None
    if problem := _hyperparams_problem(values):
        raise ModelFileError(f"{path}: unusable hyperparameters in the metadata ({problem}); {_NOT_OURS}")
    return HyperParams.from_dict(values)


def _layout(hp: HyperParams) -> dict[str, tuple[int, ...]]:
    """The weights build_network makes for `hp`, by key and shape: a Linear, a ReLU and, where
    dropout > 0, a Dropout per hidden layer, then the output Linear (load_state_dict checks it again)."""
    step, shapes = 3 if hp.dropout > 0 else 2, {}
    for layer, (inputs, outputs) in enumerate(pairwise([N_PIXELS, *hp.hidden_units, N_CLASSES])):
        shapes[f"{NET_PREFIX}{layer * step}.weight"], shapes[f"{NET_PREFIX}{layer * step}.bias"] = (outputs, inputs), (outputs,)
    return shapes


def _check_tensors(path: Path, hp: HyperParams, declared: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Each tensor's type and shape, from the file's header, against what `hp` makes, before a
    tensor is read or a layer built: the model then takes the memory its file holds, no more."""
    what = f"its hyperparameters ({hp.classifier}, hidden units {_quoted(list(hp.hidden_units))})"
    weights = sum(key.startswith(NET_PREFIX) for key in declared)
    if weights != 2 * (len(hp.hidden_units) + 1):  # before the layout is listed: its length is the file's
        raise ModelFileError(f"{path}: {weights} weight tensors, where {what} make {2 * (len(hp.hidden_units) + 1)}; {_NOT_OURS}")
    layout = _layout(hp)
    for key, (kind, shape) in declared.items():
        if key.startswith(SNAPSHOT_PREFIX) and _STEP.fullmatch(key.removeprefix(SNAPSHOT_PREFIX)):
            wanted = layout[f"{NET_PREFIX}0.weight"]  # a snapshot is the first layer's weights at a step
        elif key in layout:
            wanted = layout[key]
        else:
            raise ModelFileError(f"{path}: a tensor {_quoted(key)} that is neither a weight of {what} nor a snapshot; {_NOT_OURS}")
        if (kind, shape) != (_WEIGHT_TYPE, wanted):
            raise ModelFileError(f"{path}: {_quoted(key)} is {kind} {list(shape)}, where {what} make {_WEIGHT_TYPE} {_quoted(list(wanted))}; {_NOT_OURS}")


def _read(path: Path) -> tuple[HyperParams, dict[str, torch.Tensor], dict[str, str]]:
    """The hyperparameters, the tensors (once checked against them) and the metadata, in one open;
    any unreadable file becomes a one-line ModelFileError."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            hp = _hyperparams(metadata, path)
            declared = {key: (part.get_dtype(), tuple(part.get_shape())) for key in handle.keys() for part in (handle.get_slice(key),)}  # noqa: SIM118
            _check_tensors(path, hp, declared)
            tensors = {key: handle.get_tensor(key) for key in declared}
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: not a readable safetensors model file ({error})") from None
    return hp, tensors, metadata


def load_model_file(path: Path) -> ModelFile:
    """Rebuild the model (in eval mode) from a file written by `save_model_file`."""
    hp, tensors, metadata = _read(path)
    model = Classifier(hp)
    state = {k.removeprefix(NET_PREFIX): v for k, v in tensors.items() if k.startswith(NET_PREFIX)}
    try:
        model.net.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(f"{path}: weights do not fit the recorded architecture ({str(error).splitlines()[0]})") from None
    model.eval()
    snapshots = {int(k.removeprefix(SNAPSHOT_PREFIX)): v for k, v in tensors.items() if k.startswith(SNAPSHOT_PREFIX)}
    return ModelFile(model, hp, dict(sorted(snapshots.items())), metadata)
