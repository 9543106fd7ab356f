"""Hostile model files, built here as a red team built them: each is one line and exit code 2 (or
a ModelFileError), refused before the work it would cost is done.

- ONNX with sparse tensors (a weight, a Constant's sparse_value): ONNX Runtime made each dense,
  31 KB asking for GBs, and no node's output counted them.
- A model.onnx that is a loop of symbolic links was called missing.
- A safetensors model file whose metadata claims other layers than its tensors hold: a
  Classifier was built from the metadata first (hidden units of -5: a traceback; [100000]*3: 40 GB).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_modules import model_file
from lightning_modules.classifier import Classifier
from lightning_modules.hyperparams import HyperParams
from lightning_modules.model_file import ModelFileError, load_model_file, save_model_file
from search import predict

PIXELS = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])
LOGITS = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])


def sparse(name: str, side: int = 2000) -> onnx.SparseTensorProto:
    """A side x side float tensor holding one value: a few bytes in the file, 16 MB dense (the red
    team's were 16000x16000, 1 GB each; any sparse tensor is refused, so a small one tells)."""
    values = numpy_helper.from_array(np.array([1.0], dtype=np.float32), name)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0], dtype=np.int64), f"{name}_index"), [side, side])


def model_folder(folder: Path, extra_nodes: list | None = None, sparse_weights: list | None = None) -> Path:
    """x (N, 784) @ w (784, 10) -> logits, a model predict runs, with unused extras beside it."""
    weights = numpy_helper.from_array(np.zeros((784, 10), dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), *(extra_nodes or [])]
    graph = helper.make_graph(nodes, "hostile", [PIXELS], [LOGITS], [weights], sparse_initializer=sparse_weights or [])
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "model.onnx")
    return folder


def digit(folder: Path) -> Path:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[5:23, 12:16] = 255
    Image.fromarray(image).save(folder / "digit.png")
    return folder / "digit.png"


def one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


def subgraph_with_sparse_weight() -> onnx.NodeProto:
    """An Identity node carrying a graph attribute whose graph holds a sparse weight: the operator
    check walks every graph attribute, so the sparse check sees this one too."""
    inner = helper.make_graph([], "inner", [], [], sparse_initializer=[sparse("inner")])
    return helper.make_node("Identity", ["logits"], ["unused"], body=inner)


SPARSE_MODELS = {
    "sparse-weight": (lambda folder: model_folder(folder, sparse_weights=[sparse("S0"), sparse("S1")]), "it holds a sparse weight ('S0')"),
    "sparse-constant": (
        lambda folder: model_folder(folder, [helper.make_node("Constant", [], ["C"], sparse_value=sparse("C"))]),
        "its Constant node holds a sparse tensor",
    ),
    "sparse-in-a-subgraph": (lambda folder: model_folder(folder, [subgraph_with_sparse_weight()]), "it holds a sparse weight ('inner')"),
}


@pytest.mark.parametrize("kind", list(SPARSE_MODELS))
def test_a_model_holding_a_sparse_tensor_is_refused_before_onnx_runtime_sees_it(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """31 KB of unused 16000x16000 sparse weights took 3 GB: ONNX Runtime makes each dense, and the
    cost check counted only node outputs. Exports hold no sparse tensor: refused in one line."""
    build, message = SPARSE_MODELS[kind]
    folder, image = build(tmp_path / "model"), digit(tmp_path)

    def never(*_: object, **__: object) -> None:
        raise AssertionError("ONNX Runtime was handed a model holding a sparse tensor")

    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    err = one_line_exit_2(["--model", str(folder), str(image)], capsys)
    assert f"not an mnist-search model ({message}, which exports never do)" in err, err


def test_a_model_path_that_is_a_loop_of_symbolic_links_is_named_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A loop at <model dir>/model.onnx was reported as "no model.onnx in loop_model"; as for images,
    the line now says what it is. The same for --model itself."""
    folder, image = tmp_path / "loop_model", digit(tmp_path)
    folder.mkdir()
    (folder / "model.onnx").symlink_to(folder / "other.onnx")
    (folder / "other.onnx").symlink_to(folder / "model.onnx")
    err = one_line_exit_2(["--model", str(folder), str(image)], capsys)
    assert err == f"error: {folder / 'model.onnx'}: cannot be read (too many levels of symbolic links); check the path\n", err
    err = one_line_exit_2(["--model", str(folder / "other.onnx"), str(image)], capsys)
    assert "too many levels of symbolic links" in err, err
    err = one_line_exit_2(["--model", str(tmp_path / "missing"), str(image)], capsys)  # still said as before
    assert f"{tmp_path / 'missing'} does not exist; pass --model an export folder" in err, err


# ---------------------------------------------------------------- tampered safetensors model files

DNN = HyperParams("dnn", (8,), 0.2, 1e-3, "adam", 0.0, 64)
LINEAR = HyperParams("linear", (), 0.0, 1e-3, "sgd", 1e-4, 32)


def written(path: Path, hp: HyperParams = DNN) -> Path:
    """A model file as the objective writes one: weights, a first-layer snapshot, the hyperparameters."""
    torch.manual_seed(0)
    model = Classifier(hp)
    return save_model_file(model, path, snapshots={40: model.first_layer.weight.detach().clone()}, extra={"trial": "3"})


def tampered(source: Path, path: Path, hyperparams: object = None, raw: str | None = None, tensors: dict | None = None) -> Path:
    """`source` written again with other hyperparameters (JSON of `hyperparams`, or `raw` text) or other tensors."""
    with safe_open(str(source), framework="pt") as handle:
        metadata, original = dict(handle.metadata()), {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    if hyperparams is not None or raw is not None:
        metadata["hyperparams"] = raw if raw is not None else json.dumps(hyperparams)
    save_file({**original, **(tensors or {})}, str(path), metadata=metadata)
    return path


TAMPERED = {  # the red team's files, and a few more of their kind: (hyperparameters, raw metadata, tensors), message
    "negative-units": (({**DNN.to_dict(), "hidden_units": [-5]}, None, None), "hidden_units [-5] is not a list of whole numbers"),
    "units-of-40-gb": (({**DNN.to_dict(), "hidden_units": [100_000] * 3}, None, None), "4 weight tensors, where its hyperparameters"),
    "units-beyond-the-weights": (({**DNN.to_dict(), "hidden_units": [100_000]}, None, None), "'net.0.bias' is F32 [8], where its hyperparameters (dnn, hidden units [100000]) make F32 [100000]"),
    "dropout-5": (({**DNN.to_dict(), "dropout": 5.0}, None, None), "dropout 5.0 is not in [0, 1)"),
    "units-as-text": (({**DNN.to_dict(), "hidden_units": "abc"}, None, None), "hidden_units 'abc' is not"),
    "units-as-booleans": (({**DNN.to_dict(), "hidden_units": [True]}, None, None), "hidden_units [True] is not"),
    "nan-learning-rate": (({**DNN.to_dict(), "learning_rate": float("nan")}, None, None), "learning_rate nan is not above 0"),
    "unknown-field": (({**DNN.to_dict(), "evil": 1}, None, None), "an unknown field 'evil'"),
    "no-batch-size": (({k: v for k, v in DNN.to_dict().items() if k != "batch_size"}, None, None), "(no batch_size)"),
    "a-list": (([1, 2], None, None), "[1, 2] is no JSON object"),
    "nested-too-deep": ((None, "[" * 100_000, None), "unusable hyperparameters in the metadata"),
    "snapshot-step-abc": ((None, None, {"snapshot.step_abc": torch.zeros(2)}), "a tensor 'snapshot.step_abc' that is neither"),
    "float64-weights": ((None, None, {"net.0.bias": torch.zeros(8, dtype=torch.float64)}), "'net.0.bias' is F64 [8], where"),
    "int8-weights": ((None, None, {"net.0.bias": torch.zeros(8, dtype=torch.int8)}), "'net.0.bias' is I8 [8], where"),
    "snapshot-of-another-shape": ((None, None, {"snapshot.step_7": torch.zeros(3, 3)}), "'snapshot.step_7' is F32 [3, 3], where"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_model_file_is_one_line_before_any_layer_is_built(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Classifier(hp) was built from the metadata before its shapes were compared with the tensors:
    a negative size raised RuntimeError (a traceback), [100000]*3 asked for 40 GB, and a snapshot
    key of no number raised ValueError. The metadata is checked as JSON, then every tensor's type
    and shape from the file's header, before a tensor is read or a layer built."""
    source = written(tmp_path / "model.safetensors")
    assert load_model_file(source).hp == DNN and sorted(load_model_file(source).snapshots) == [40]  # the file untampered loads
    assert load_model_file(written(tmp_path / "linear.safetensors", LINEAR)).hp == LINEAR
    (hyperparams, raw, tensors), message = TAMPERED[case]
    path = tampered(source, tmp_path / f"{case}.safetensors", hyperparams, raw, tensors)

    def never(*_: object, **__: object) -> None:
        raise AssertionError("a Classifier was built before the file was checked")

    monkeypatch.setattr(model_file, "Classifier", never)
    with pytest.raises(ModelFileError) as caught:
        load_model_file(path)
    line = str(caught.value)
    assert message in line and line.startswith(f"{path}: ") and "\n" not in line and len(line) < 400, line
    assert line.endswith("not a model file mnist-search wrote; export the study again with python -m search.export"), line


def test_a_tampered_artifact_is_a_model_file_error_to_the_export(tmp_path: Path) -> None:
    """search.export loads a trial's stored weights through load_model_file and retrains, saying
    why, on a ModelFileError; hidden units of -5 raised RuntimeError past it, a traceback."""
    from optuna.artifacts import FileSystemArtifactStore

    from search.export.trained import _download_model

    store = tmp_path / "artifacts"
    store.mkdir()
    tampered(written(tmp_path / "model.safetensors"), store / "weights-of-trial-3", {**DNN.to_dict(), "hidden_units": [-5]})
    with pytest.raises(ModelFileError, match=r"^unusable hyperparameters in the metadata \(hidden_units \[-5\]"):
        _download_model(FileSystemArtifactStore(str(store)), "weights-of-trial-3")
