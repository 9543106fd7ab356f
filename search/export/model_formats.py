"""The exported model's files: model.safetensors, model.ckpt, model.onnx (checked) and model.json.

The ONNX graph is run in ONNX Runtime against the PyTorch model before it is kept; one that
disagrees raises ExportError and nothing is exported.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import optuna
import torch
from torch import nn

from lightning_modules.classifier import RNG_KEYS, TRAINED_SECONDS, Classifier
from lightning_modules.data.format import IMAGE_SIDE, N_CLASSES, N_PIXELS
from lightning_modules.metric_names import EPOCH, STEP
from lightning_modules.model_file import FORMAT, save_model_file
from lightning_modules.training import build_trainer
from search.export.errors import ExportError
from search.export.trained import TrainedTrial

ONNX_INPUT = "pixels"
ONNX_OUTPUTS = ("logits", "probabilities")
ONNX_OPSET = 17
# A prediction may differ between PyTorch and ONNX Runtime only where the top two probabilities
# are closer than this (float rounding on a near tie); anywhere else it is a broken export.
ONNX_TIE = 1e-4
ONNX_PROB_TOLERANCE = 1e-4


class _OnnxHead(nn.Module):
    """The network plus softmax: ONNX users get probabilities without re-implementing it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(pixels)
        return logits, torch.softmax(logits, dim=1)


def preprocessing() -> dict[str, Any]:
    """What the model expects: the same for the ONNX graph, the checkpoint and the safetensors."""
    return {
        "input_name": ONNX_INPUT,
        "input_shape": [None, N_PIXELS],
        "dtype": "float32",
        "image_shape": [IMAGE_SIDE, IMAGE_SIDE],
        "layout": "28x28 image flattened row by row",
        "scaling": "pixel / 255 (uint8 0-255 -> float 0-1)",
        "range": [0.0, 1.0],
        "normalisation": "none beyond the scaling",
        "polarity": "white digit (1.0) on black background (0.0), as in MNIST",
        "outputs": {name: [None, N_CLASSES] for name in ONNX_OUTPUTS},
        "classes": list(range(N_CLASSES)),
    }


def export_onnx(model: Classifier, path: Path, metadata: dict[str, str]) -> Path:
    """Float32 (N, 784) pixels in [0, 1] -> logits and probabilities, any batch size.

    Uses the TorchScript-based exporter (dynamo=False): torch 2.13's default dynamo exporter
    needs the onnxscript package and takes ~9 s for an MLP, against ~0.5 s here; the result
    is checked against the PyTorch model in ONNX Runtime before it is kept.
    """
    import onnx

    head = _OnnxHead(model.net).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            head, (torch.zeros(1, N_PIXELS),), str(path), dynamo=False, input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS), opset_version=ONNX_OPSET,
            dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, *ONNX_OUTPUTS)},
        )
    proto = onnx.load(str(path))
    proto.doc_string = "mnist-search digit classifier: float32 pixels in [0,1], shape (N, 784), white on black"
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


@dataclass(frozen=True)
class OnnxCheck:
    rows: int
    max_probability_diff: float
    disagreements: int  # predictions that differ away from a near tie

    def as_dict(self) -> dict[str, Any]:
        """The check as model.json and metrics.json record it."""
        return dataclasses.asdict(self)


def check_onnx(path: Path, x: torch.Tensor, probabilities: torch.Tensor) -> OnnxCheck:
    """Run the ONNX file in ONNX Runtime on `x` and compare with PyTorch's probabilities."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    _, onnx_probs = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x.numpy().astype(np.float32, copy=False)})
    reference = probabilities.numpy()
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > ONNX_TIE
    differ = onnx_probs.argmax(axis=1) != reference.argmax(axis=1)
    return OnnxCheck(len(x), float(np.abs(onnx_probs - reference).max(initial=0.0)), int((differ & clear).sum()))


def save_checkpoint(model: Classifier, path: Path) -> Path:
    """A Lightning checkpoint (weights + hyperparameters) that `load_from_checkpoint` rebuilds.

    weights_only: no optimizer or loop state, and nothing that needs unpickling code to load
    (torch.load(path, weights_only=True) reads it). Written by a fresh trainer, it would say
    epoch 0, step 0 and carry this process's random state, which loading it would then impose on
    the user's process (Classifier.on_load_checkpoint restores it for resumed trials); so the
    epoch and step are the training's last (from the model's history) and the random state goes.
    """
    trainer = build_trainer(1)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=True)
    checkpoint = torch.load(path, weights_only=True)
    for key in (*RNG_KEYS, TRAINED_SECONDS):  # this trainer's clock, not the training's: train_seconds is in the report
        checkpoint.pop(key, None)
    if model.history:
        checkpoint["epoch"], checkpoint["global_step"] = int(model.history[-1][EPOCH]), int(model.history[-1][STEP])
    torch.save(checkpoint, path)
    return path


def model_json(top: TrainedTrial, study_name: str, onnx_check: OnnxCheck) -> dict[str, Any]:
    """model.json: everything needed to use the model without the study. Its accuracies are the
    exported weights' own; `trial_value` is what the search recorded (bf16, or before a retrain)."""
    model_file, trial = top.model_file, top.trial
    hp = model_file.hp
    return {
        "format": FORMAT,
        "study": study_name,
        "trial": trial.number,
        "classifier": hp.classifier,
        "hyperparams": hp.to_dict(),
        "architecture": " -> ".join([str(N_PIXELS), *(f"{u} ReLU" for u in hp.hidden_units), str(N_CLASSES)]),
        "param_count": model_file.model.parameter_count(),
        "val_accuracy": top.val_accuracy,
        "test_accuracy": top.test_accuracy,
        "trial_value": trial.value,
        "note": top.note,
        "preprocessing": preprocessing(),
        "files": {"weights": "model.safetensors", "checkpoint": "model.ckpt", "onnx": "model.onnx"},
        "lightning_module": f"{Classifier.__module__}.{Classifier.__qualname__}",
        "onnx_check": onnx_check.as_dict(),
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__, "optuna": optuna.__version__},
    }


def write_model_files(top: TrainedTrial, study_name: str, folder: Path, x_test: torch.Tensor, probabilities: torch.Tensor) -> OnnxCheck:
    """model.safetensors, model.ckpt, model.onnx (checked in ONNX Runtime) and model.json.

    `probabilities` are the PyTorch model's on `x_test`, which the ONNX graph must reproduce.
    """
    model, trial = top.model_file.model, top.trial
    extra = {"study": study_name, "trial": str(trial.number), "preprocessing": json.dumps(preprocessing())}
    save_model_file(model, folder / "model.safetensors", extra=extra)
    save_checkpoint(model, folder / "model.ckpt")
    export_onnx(model, folder / "model.onnx", {"study": study_name, "trial": str(trial.number)})
    check = check_onnx(folder / "model.onnx", x_test, probabilities)
    if check.disagreements or check.max_probability_diff > ONNX_PROB_TOLERANCE:
        raise ExportError(
            f"the ONNX model disagrees with the trained model on {check.disagreements} of {check.rows} test images "
            f"(largest probability difference {check.max_probability_diff:.2g}); nothing was exported"
        )
    (folder / "model.json").write_text(json.dumps(model_json(top, study_name, check), indent=2) + "\n")
    return check
