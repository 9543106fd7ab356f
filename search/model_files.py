"""Model weights as safetensors files that rebuild the model without unpickling anything.

One file holds the network's state dict, the first-layer snapshots taken during training,
and the hyperparameters as JSON metadata, so `load_model_file` needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightning_modules.classifiers import Classifier, HyperParams, build_classifier
from lightning_modules.errors import UserInputError

SNAPSHOT_PREFIX = "snapshot.step_"


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
    tensors = {f"net.{k}": v.detach().contiguous() for k, v in model.net.state_dict().items()}
    for step, weight in (snapshots or {}).items():
        tensors[f"{SNAPSHOT_PREFIX}{step}"] = weight.contiguous()
    metadata = {"hyperparams": json.dumps(model.hp.to_dict()), "format": "mnist-search/1", **(extra or {})}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_model_file(path: Path) -> ModelFile:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: not a readable safetensors model file ({error})") from None
    if "hyperparams" not in metadata:
        raise ModelFileError(f"{path}: no hyperparameters in the file's metadata; not an mnist-search model")
    hp = HyperParams.from_dict(json.loads(metadata["hyperparams"]))
    model = build_classifier(hp)
    state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
    try:
        model.net.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFileError(f"{path}: weights do not fit the recorded architecture ({str(error).splitlines()[0]})") from None
    model.eval()
    snapshots = {int(k.removeprefix(SNAPSHOT_PREFIX)): v for k, v in tensors.items() if k.startswith(SNAPSHOT_PREFIX)}
    return ModelFile(model, hp, dict(sorted(snapshots.items())), metadata)
