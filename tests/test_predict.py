"""search/predict.py: a model trained to >= 0.9 on 5,000 rows, exported to ONNX, reads digits back.

MNIST test images the model gets right are written as files in the forms a user might have
(28x28 PNG, inverted, enlarged black-on-white, transparent, CSV rows) and must come back with
their labels. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, external_data_helper, helper, numpy_helper
from PIL import Image, ImageFile, features
from PIL.Image import DecompressionBombWarning

from lightning_modules.data.arrays import MnistArrays
from lightning_modules.data.readers import write_csv
from lightning_modules.data.split import DataSplit
from lightning_modules.hyperparams import HyperParams
from lightning_modules.training import fit
from search import predict
from search.export.model_formats import export_onnx
from search.image_bounds import MAX_JPEG_SCANS, MAX_TIFF_VALUES
from search.predict import PredictError


@dataclass(frozen=True)
class Known:
    """An exported model and test images it classifies right, with its probabilities for them."""

    folder: Path
    images: np.ndarray  # uint8, n x 28 x 28
    labels: np.ndarray
    probabilities: np.ndarray


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory, small_split: DataSplit) -> Known:
    result = fit(HyperParams("dnn", (128,), 0.0, 1e-2, "adam", 0.0, 128), small_split, seed=0, max_epochs=3)
    assert result.metrics["val/acc"] >= 0.9, "the model must be good enough for its predictions to mean something"
    model = result.model.eval()
    with torch.inference_mode():
        probabilities = torch.softmax(model(small_split.x_test), dim=1)
    right = probabilities.argmax(dim=1) == small_split.y_test
    folder = tmp_path_factory.mktemp("model")
    export_onnx(model, folder / "model.onnx", {})
    chosen = torch.nonzero(right).flatten()[:12]
    images = (small_split.x_test[chosen] * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()
    return Known(folder, images, small_split.y_test[chosen].numpy(), probabilities[chosen].numpy())


def save(images: np.ndarray, folder: Path, stem: str, mode: str = "L", suffix: str = ".png") -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{stem}{index}{suffix}"
        Image.fromarray(image).convert(mode).save(path)
        paths.append(path)
    return paths


def digits(predictions: list[predict.Prediction]) -> list[int]:
    return [p.digit for p in predictions]


# ---------------------------------------------------------------- predictions


def test_mnist_test_images_come_back_with_their_labels(known: Known, tmp_path: Path) -> None:
    model = predict.load_model(known.folder)
    predictions = predict.predict_images(model, save(known.images, tmp_path, "digit"))
    assert digits(predictions) == known.labels.tolist()
    probabilities = np.array([p.probability for p in predictions])
    assert np.allclose(probabilities, known.probabilities.max(axis=1), atol=1e-4)


def test_black_on_white_images_are_inverted(known: Known, tmp_path: Path) -> None:
    model = predict.load_model(known.folder / "model.onnx")  # the .onnx file itself works too
    predictions = predict.predict_images(model, save(255 - known.images, tmp_path, "inverted", mode="RGB"))
    assert digits(predictions) == known.labels.tolist()


def test_larger_images_are_framed_like_mnist(known: Known, tmp_path: Path) -> None:
    enlarged = np.stack([np.kron(255 - image, np.ones((5, 5), dtype=np.uint8)) for image in known.images])  # 140x140
    predictions = predict.predict_images(predict.load_model(known.folder), save(enlarged, tmp_path, "big", suffix=".jpg"))
    assert sum(p.digit == label for p, label in zip(predictions, known.labels, strict=True)) >= len(known.labels) - 1


def test_float_and_16_bit_images_read_as_their_8_bit_originals(known: Known, tmp_path: Path) -> None:
    """Pillow's convert("L") clips: a float image of 0-1 became all but black and was still
    predicted (a 7 at 12.5%), a 16-bit one lost every shade above 255 of 65535."""
    model = predict.load_model(known.folder)
    paths = []
    for index, image in enumerate(known.images[:4]):
        versions = {
            "float.tiff": image.astype(np.float32) / 255,
            "float255.tiff": image.astype(np.float32),
            "16bit.png": image.astype(np.uint16) * 257,
            "32bit.tiff": image.astype(np.int32) * 257,  # mode I
        }
        for name, array in versions.items():
            paths.append(tmp_path / f"{index}-{name}")
            Image.fromarray(array).save(paths[-1])
    predictions = predict.predict_images(model, paths)
    assert digits(predictions) == np.repeat(known.labels[:4], len(versions)).tolist()
    probabilities = np.array([p.probability for p in predictions])
    assert np.allclose(probabilities, np.repeat(known.probabilities[:4].max(axis=1), len(versions)), atol=1e-4)
    overshoot = known.images[0].astype(np.float32) / 255 * 1.001  # a 0-1 image rounded a hair past 1
    Image.fromarray(overshoot).save(tmp_path / "overshoot.tiff")
    assert digits(predict.predict_images(model, [tmp_path / "overshoot.tiff"])) == known.labels[:1].tolist()
    nan = np.full((28, 28), np.nan, dtype=np.float32)
    Image.fromarray(nan).save(tmp_path / "nan.tiff")
    with pytest.raises(PredictError, match="NaN or infinite"):
        predict.predict_images(model, [tmp_path / "nan.tiff"])


def test_transparent_images_use_their_strokes(known: Known, tmp_path: Path) -> None:
    paths = []
    for index, image in enumerate(known.images[:4]):  # black ink on a transparent background
        rgba = np.zeros((28, 28, 4), dtype=np.uint8)
        rgba[..., 3] = image
        paths.append(tmp_path / f"transparent{index}.png")
        Image.fromarray(rgba, "RGBA").save(paths[-1])
    assert digits(predict.predict_images(predict.load_model(known.folder), paths)) == known.labels[:4].tolist()


def test_csv_rows_come_back_with_their_labels(known: Known, tmp_path: Path) -> None:
    write_csv(known.images, known.labels, tmp_path / "rows.csv")
    predictions = predict.predict_csv(predict.load_model(known.folder), tmp_path / "rows.csv")
    assert digits(predictions) == [p.label for p in predictions] == known.labels.tolist()
    assert predictions[0].line().startswith(f"{tmp_path / 'rows.csv'} row 1: {known.labels[0]} (")


# ---------------------------------------------------------------- preprocessing


def test_light_background_is_detected_by_the_border() -> None:
    dark = np.zeros((28, 28), dtype=np.uint8)
    dark[10:18, 10:18] = 255
    assert not predict.is_light_background(dark)
    assert predict.is_light_background(255 - dark)
    assert np.array_equal(predict.to_white_on_black(255 - dark), dark)


def test_frame_digit_fits_20_pixels_and_centres_by_mass() -> None:
    image = np.zeros((90, 150), dtype=np.uint8)
    image[5:45, 100:120] = 200  # a 40x20 bar far off centre
    framed = predict.frame_digit(image)
    assert framed.shape == (28, 28)
    rows, cols = np.nonzero(framed)
    assert rows.max() - rows.min() + 1 <= 21 and cols.max() - cols.min() + 1 <= 21
    mass = framed.astype(float)
    centre = (np.indices(mass.shape) * mass).sum(axis=(1, 2)) / mass.sum()
    assert np.allclose(centre, 13.5, atol=1.0)


def test_model_input_is_784_floats_in_unit_range() -> None:
    image = np.full((28, 28), 255, dtype=np.uint8)
    image[5:20, 12:15] = 0  # a dark stroke on white
    pixels = predict.to_model_input(image, "x")
    assert pixels.shape == (784,) and pixels.dtype == np.float32
    assert pixels.min() == 0.0 and pixels.max() == 1.0 and pixels.reshape(28, 28)[10, 13] == 1.0


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_one_clear_error(known: Known, tmp_path: Path) -> None:
    model = predict.load_model(known.folder)
    (tmp_path / "text.png").write_text("not an image at all")
    Image.fromarray(known.images[0]).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:120])
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "small.png")
    cases = {
        tmp_path / "text.png": "not a PNG, JPEG, GIF, BMP, TIFF, WebP, AVIF or PBM/PGM/PPM image, or its header is corrupt; save the digit as PNG",
        tmp_path / "cut.png": "corrupt or truncated image",
        tmp_path / "small.png": "20x20 pixels; it must be at least 28x28",
        tmp_path / "missing.png": "file not found",
        tmp_path: "is a folder, not an image file",
        Path("/dev/zero"): "not a regular file",
    }
    for path, message in cases.items():
        with pytest.raises(PredictError, match=message):
            predict.predict_images(model, [path])
    with pytest.raises(PredictError, match="no model.onnx in"):
        predict.load_model(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(PredictError, match="not a loadable ONNX model"):
        predict.load_model(tmp_path)


def test_main_prints_predictions_and_exits_2_on_bad_input(known: Known, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = save(known.images[:2], tmp_path, "ok")
    assert predict.main(["--model", str(known.folder), *map(str, good)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{good[i]}: {known.labels[i]} ({known.probabilities[i].max():.1%})" for i in range(2)]
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    assert predict.main(["--model", str(known.folder), "--csv", str(tmp_path / "bad.csv")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and "columns" in captured.err


@pytest.mark.parametrize("csv", ["/dev/zero", "/dev/stdin"])
def test_predict_never_reads_a_device_or_pipe_as_a_csv(known: Known, csv: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`predict --csv /dev/zero` once read without limit."""
    assert predict.main(["--model", str(known.folder), "--csv", csv]) == 2
    err = capsys.readouterr().err
    assert "not a regular file" in err and len(err.strip().splitlines()) == 1


def test_too_many_images_on_one_command_line_is_one_line(known: Known, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        predict.main(["--model", str(known.folder), *["x.png"] * (predict.MAX_IMAGES + 1)])
    assert caught.value.code == 2 and "at most" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["--model", "http://u:hunter2@x/model.onnx", "a.png"], "argument --model: is a URL, and predict reads files on this machine"),
    (["--model", "M", "--csv", "https://u:hunter2@x/a.csv"], "argument --csv: is a URL"),
    (["--model", "M", "s3://bucket/hunter2.png"], "argument images: is a URL"),
    (["--model", "", "a.png"], "argument --model: is empty; give a file's path"),
    (["--model", "M", "--csv", ""], "argument --csv: is empty"),
    (["--model", "M", ""], "argument images: is empty"),
])
def test_a_url_or_an_empty_path_is_refused_as_such(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A URL became a path ("http:/u:hunter2@x/model.onnx does not exist", its password quoted);
    '' became "." ("is a folder")."""
    with pytest.raises(SystemExit) as caught:
        predict.main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and said in err and "hunter2" not in err, err


def test_a_path_holding_a_url_further_in_is_a_path() -> None:
    args = predict.parse_args(["--model", "exports/http://x", "photos/a://b.png"])
    assert (args.model, args.images) == (Path("exports/http://x"), [Path("photos/a://b.png")])


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit black PNG of any size, written row by row: 13000x13000 is ~20 KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(
    ("side", "size"),
    [(5000, "5000x5000 pixels"), (13000, "169,000,000 pixels"), (20000, "400,000,000 pixels")],
    ids=["over-our-bound", "pillow-warns", "pillow-refuses"],
)
def test_a_huge_image_is_refused_from_its_header_in_one_line(
    known: Known, tmp_path: Path, side: int, size: str, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    """A 328 KB 13000x13000 PNG once took 6.3 GB and 19 s, and printed Pillow's warning."""
    big = blank_png(tmp_path / "big.png", side, side)
    assert big.stat().st_size < 100_000
    with pytest.MonkeyPatch.context() as patch:  # a real PNG, as Pillow reads it without its own bound
        patch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(big) as image:
            assert image.size == (side, side)
    assert predict.main(["--model", str(known.folder), str(big)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert f"the image is {size}, more than 4096x4096; scale it down" in captured.err
    assert not [w for w in recwarn if issubclass(w.category, DecompressionBombWarning)]
    blank_png(big, predict.MAX_IMAGE_SIDE, predict.MAX_IMAGE_SIDE)  # the bound itself is read
    assert predict.read_image(big).shape == (predict.MAX_IMAGE_SIDE, predict.MAX_IMAGE_SIDE)


def test_an_image_longer_than_the_bound_on_one_side_is_refused(known: Known, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """28x599000 passed: only the pixel count was checked, though the bound is named per side."""
    long = blank_png(tmp_path / "long.png", 28, predict.MAX_IMAGE_SIDE + 1)
    assert predict.main(["--model", str(known.folder), str(long)]) == 2
    assert capsys.readouterr().err == (
        f"error: {long}: the image is 28x{predict.MAX_IMAGE_SIDE + 1} pixels, more than 4096x4096; "
        "scale it down to at most 4096x4096 pixels (a digit needs only 28x28)\n"
    )


def test_an_over_long_csv_is_refused_before_it_is_parsed(known: Known, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """predict --csv once accepted up to 2.2 GB (~10 GB of memory); rows are counted first, and
    the one-column lines here would be a parse error if they were parsed."""
    lines = tmp_path / "long.csv"
    lines.write_bytes(b"0\n" * (predict.MAX_CSV_ROWS + 2))
    assert predict.main(["--model", str(known.folder), "--csv", str(lines)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"more than {predict.MAX_CSV_ROWS + 1:,} lines" in err and "at most 10,000 rows at a time: split the file" in err, err
    sparse = tmp_path / "sparse.csv"
    with sparse.open("wb") as handle:
        handle.truncate(predict.MAX_CSV_BYTES + 1)  # a hole: no disk space
    assert predict.main(["--model", str(known.folder), "--csv", str(sparse)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{predict.MAX_CSV_BYTES + 1:,} bytes is more than the {predict.MAX_CSV_BYTES:,} a CSV of 10,000 rows may have" in err


def test_the_csv_row_bound_allows_a_header_and_exactly_its_rows(known: Known, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict, "MAX_CSV_ROWS", 3)
    model = predict.load_model(known.folder)
    rows = tmp_path / "rows.csv"
    write_csv(known.images[:3], known.labels[:3], rows)
    rows.write_text("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n" + rows.read_text())
    assert digits(predict.predict_csv(model, rows)) == known.labels[:3].tolist()
    write_csv(known.images[:4], known.labels[:4], rows)  # four rows, no header: one too many
    with pytest.raises(PredictError, match="4 rows; predict reads at most 3 rows at a time"):
        predict.predict_csv(model, rows)
    rows.write_text("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n" + rows.read_text())
    with pytest.raises(PredictError, match="more than 4 lines"):  # and with a header, before parsing
        predict.predict_csv(model, rows)


def run_cli(python: str, env: dict[str, str], *args: str, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, python, "-m", "search.predict", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.slow
def test_cli_success_and_corrupt_image(known: Known, tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    paths = save(255 - known.images[:3], tmp_path, "cli")
    result = run_cli(python, run_env, "--model", str(known.folder), *map(str, paths))
    assert result.returncode == 0, result.stderr
    assert [line.split(": ")[1].split(" ")[0] for line in result.stdout.splitlines()] == [str(d) for d in known.labels[:3]]
    (tmp_path / "broken.png").write_bytes(b"GIF89a truncated")
    result = run_cli(python, run_env, "--model", str(known.folder), str(paths[0]), str(tmp_path / "broken.png"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "broken.png" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_huge_image_is_one_line_without_pillows_warning(known: Known, tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    big = blank_png(tmp_path / "big.png", 13000, 13000)
    result = run_cli(python, run_env, "--model", str(known.folder), str(big))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {big}: the image is 169,000,000 pixels, more than 4096x4096; scale it down to at most 4096x4096 pixels (a digit needs only 28x28)"
    ], result.stderr


# ---------------------------------------------------------------- models of the wrong kind


def onnx_folder(folder: Path, nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray] | None = None) -> Path:
    """An export-like folder holding a small hand-built ONNX graph (opset 17, as the export writes)."""
    initializers = [numpy_helper.from_array(array, name) for name, array in (weights or {}).items()]
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializers)
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "model.onnx")
    return folder


def value(name: str, kind: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, shape)


PIXELS = value("x", TensorProto.FLOAT, ["N", 784])
FLOAT = TensorProto.FLOAT


def matmul_folder(folder: Path, weights: np.ndarray, output: str, pixels: onnx.ValueInfoProto = PIXELS) -> Path:
    """x (N, 784) @ weights (784, 10) as the model's one output, named `output`."""
    n = pixels.type.tensor_type.shape.dim[0]
    scores = value(output, FLOAT, [n.dim_value or n.dim_param, 10])
    return onnx_folder(folder, [helper.make_node("MatMul", ["x", "w"], [output])], [pixels], [scores], {"w": weights.astype(np.float32)})


WRONG_KINDS = {  # the red-team's models: each once passed load_model and then crashed with a traceback
    "int64-input": (
        [helper.make_node("Identity", ["x"], ["y"])],
        [value("x", TensorProto.INT64, ["N", 784])],
        [value("y", TensorProto.INT64, ["N", 784])],
        "is tensor(int64), not tensor(float)",
    ),
    "1-d-output": (
        [helper.make_node("ReduceMax", ["x"], ["y"], axes=[1], keepdims=0)],
        [PIXELS],
        [value("y", FLOAT, ["N"])],
        "has shape (N), not (N, 10)",
    ),
    "bool-output": (
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BOOL)],
        [PIXELS],
        [value("y", TensorProto.BOOL, ["N", 784])],
        "is tensor(bool), not float scores",
    ),
    "no-classes": (
        [helper.make_node("Slice", ["x", "zero", "zero", "one"], ["y"])],
        [PIXELS],
        [value("y", FLOAT, ["N", 0])],
        "has shape (N, 0), not (N, 10)",
    ),
    "two-inputs": (
        [helper.make_node("Add", ["x", "z"], ["y"])],
        [PIXELS, value("z", FLOAT, ["N", 784])],
        [value("y", FLOAT, ["N", 784])],
        "takes 2 inputs (x, z), not one",
    ),
    "784-probabilities": (
        [helper.make_node("Identity", ["x"], ["probabilities"])],
        [PIXELS],
        [value("probabilities", FLOAT, ["N", 784])],
        "has shape (N, 784)",
    ),
}


def two_digits(folder: Path) -> list[Path]:
    """Two 28x28 images: a bar and a blank, enough to run any model on a batch of two."""
    bar = np.zeros((28, 28), dtype=np.uint8)
    bar[5:23, 12:16] = 255
    return save(np.stack([bar, np.zeros_like(bar)]), folder, "digit")


def assert_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert message in captured.err and "export one with python -m search.export" in captured.err, captured.err


@pytest.mark.parametrize("kind", list(WRONG_KINDS))
def test_a_model_of_the_wrong_kind_is_refused_when_loaded(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the first input's shape was checked: an int64 input, a 1-D, bool or empty output and a
    second input crashed in ONNX Runtime or numpy with a traceback."""
    nodes, inputs, outputs, message = WRONG_KINDS[kind]
    zero, one = np.array([0], dtype=np.int64), np.array([1], dtype=np.int64)
    folder = onnx_folder(tmp_path / "model", nodes, inputs, outputs, {"zero": zero, "one": one} if kind == "no-classes" else None)
    with pytest.raises(PredictError, match="not an mnist-search model"):
        predict.load_model(folder)
    assert_one_line_exit_2(["--model", str(folder), *map(str, two_digits(tmp_path))], message, capsys)


RUNTIME_FAULTS = {  # graphs that look right when loaded and go wrong when run
    "nan-probabilities": (lambda folder: matmul_folder(folder, np.full((784, 10), np.nan), "probabilities"), "holds NaN or infinite values"),
    "negative-probabilities": (lambda folder: matmul_folder(folder, -np.ones((784, 10)), "probabilities"), "are not probabilities"),
    "fixed-batch-of-1": (
        lambda folder: matmul_folder(folder, np.zeros((784, 10)), "logits", value("x", FLOAT, [1, 784])),
        "it fails on 2 images",
    ),
    "784-scores-at-run-time": (
        lambda folder: onnx_folder(  # reshaped to its own shape: the graph cannot say its output is 784 wide
            folder,
            [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])],
            [PIXELS],
            [value("y", FLOAT, ["N", "C"])],
        ),
        "gives 'y' of shape (2, 784) for 2 images",
    ),
}


@pytest.mark.parametrize("fault", list(RUNTIME_FAULTS))
def test_a_model_that_goes_wrong_when_run_is_one_line(fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model giving NaN once printed "0 (inf%)" and exited 0; its output is checked when it is run."""
    build, message = RUNTIME_FAULTS[fault]
    folder = build(tmp_path / "model")
    model = predict.load_model(folder)
    with pytest.raises(PredictError, match="not an mnist-search model"):
        predict.predict_images(model, two_digits(tmp_path))
    assert_one_line_exit_2(["--model", str(folder), *map(str, two_digits(tmp_path))], message, capsys)


def test_a_bare_logits_model_is_softmaxed(tmp_path: Path) -> None:
    """The checks refuse nothing that works: logits of a size the graph leaves open are read."""
    weights = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)
    folder = onnx_folder(
        tmp_path / "model", [helper.make_node("MatMul", ["x", "w"], ["scores"])], [PIXELS], [value("scores", FLOAT, ["N", "C"])], {"w": weights}
    )
    paths = two_digits(tmp_path)
    predictions = predict.predict_images(predict.load_model(folder), paths)
    logits = np.stack([predict.to_model_input(predict.read_image(path), "x") for path in paths]) @ weights
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert digits(predictions) == expected.argmax(axis=1).tolist()
    assert np.allclose([p.probability for p in predictions], expected.max(axis=1), atol=1e-5)


# ---------------------------------------------------------------- images Pillow cannot decode


CORRUPT_HEADERS = {  # a corrupt header where Pillow's plugin raised NotImplementedError, not OSError
    "pixel-format-flags-0.dds": b"DDS " + struct.pack("<7I", 124, 0x1007, 40, 40, 0, 0, 0) + bytes(96),
    "compression-161.blp": b"BLP2" + struct.pack("<i4B2I", 161, 1, 0, 0, 0, 40, 40) + bytes(16 * 4 * 2 + 1024),
}


@pytest.mark.parametrize("name", list(CORRUPT_HEADERS))
def test_a_corrupt_dds_or_blp_is_one_line(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DDS's "Unknown pixel format flags 0" and BLP's BLPFormatError once ended in a traceback; neither
    format is opened now (only IMAGE_FORMATS are)."""
    path = tmp_path / name
    path.write_bytes(CORRUPT_HEADERS[name])
    with pytest.raises(PredictError, match=f"{name}: not a PNG, JPEG, GIF, BMP, TIFF, WebP, AVIF or PBM/PGM/PPM image"):
        predict.read_image(path)
    bar = np.zeros((784, 10), dtype=np.float32)
    assert predict.main(["--model", str(matmul_folder(tmp_path / "model", bar, "logits")), str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "error",
    [
        struct.error("unpack requires a buffer of 4 bytes"),
        SyntaxError("not a PSD file"),
        EOFError(),
        IndexError("list index out of range"),
        KeyError(7),
        TypeError("bad tile"),
        ZeroDivisionError("division by zero"),
        RuntimeError("decoder"),
        Exception("bare"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_any_decoder_failure_is_one_line(error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's plugins raise many types on a corrupt file (a bare EOFError has no message at all)."""
    (path,) = save(np.zeros((1, 28, 28), dtype=np.uint8), tmp_path, "digit")

    def fail(self: ImageFile.ImageFile) -> None:
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    reason = str(error) or type(error).__name__
    with pytest.raises(PredictError, match=f"corrupt or truncated image \\({reason}"):
        predict.read_image(path)


def tiff_with_rows_per_strip(path: Path, count: int, keep: int | None = None) -> Path:
    """A 28x28 TIFF whose RowsPerStrip tag (278) claims `count` entries: Pillow warns, then decodes
    it; cut to `keep` bytes, it warns and then fails."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[5:23, 12:16] = 255
    Image.fromarray(image).save(path)
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    entry = next(
        ifd + 2 + 12 * i for i in range(struct.unpack_from("<H", data, ifd)[0]) if struct.unpack_from("<H", data, ifd + 2 + 12 * i)[0] == 278
    )
    struct.pack_into("<II", data, entry + 4, count, 8)
    path.write_bytes(bytes(data[:keep]))
    return path


def test_pillows_warnings_are_not_printed(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    """A TIFF with a bad tag printed Pillow's UserWarning and its source line before the prediction
    or the one-line error."""
    assert predict.read_image(tiff_with_rows_per_strip(tmp_path / "large.tif", 100_000)).max() == 255  # "Tag data larger than file"
    assert predict.read_image(tiff_with_rows_per_strip(tmp_path / "many.tif", 2)).max() == 255  # "tag 278 had too many entries"
    with pytest.raises(PredictError, match="corrupt or truncated image"):
        predict.read_image(tiff_with_rows_per_strip(tmp_path / "cut.tif", 2, keep=130))
    assert not [str(w.message) for w in recwarn]


@pytest.mark.slow
def test_cli_pillows_warnings_stay_off_stderr(tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    folder = matmul_folder(tmp_path / "model", np.zeros((784, 10)), "logits")
    result = run_cli(python, run_env, "--model", str(folder), str(tiff_with_rows_per_strip(tmp_path / "warns.tif", 2)))
    assert result.returncode == 0 and result.stderr == "" and len(result.stdout.splitlines()) == 1, result.stderr
    cut = tiff_with_rows_per_strip(tmp_path / "cut.tif", 2, keep=130)
    result = run_cli(python, run_env, "--model", str(folder), str(cut))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {cut}: corrupt or truncated image (image file is truncated (8 bytes not processed))"
    ], result.stderr


def jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan of a JPEG: its SOS segment and the entropy-coded data after it."""
    at, scans = 2, []
    while data[at + 1] != 0xD9:  # EOI
        end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] == 0xDA:  # SOS: the scan runs to the next marker that is no stuffed byte or restart
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
            scans.append((at, end))
        at = end
    return scans


def progressive_jpeg(path: Path, extra_scans: int = 0) -> Path:
    """A 64x64 progressive JPEG of a bar, its smallest scan repeated `extra_scans` times more (the red
    team's 3.3 MB file repeated one 100,000 times at 4096x4096: 260 s to decode)."""
    image = np.zeros((64, 64), dtype=np.uint8)
    image[10:54, 28:36] = 255
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    scans = jpeg_scans(data)
    start, end = min(scans, key=lambda scan: scan[1] - scan[0])
    path.write_bytes(data[: scans[-1][1]] + data[start:end] * extra_scans + data[scans[-1][1] :])
    return path


def never_opened(*_: object, **__: object) -> None:
    raise AssertionError("Pillow was given an image whose decoding cost is beyond the bound")


def test_a_jpeg_of_more_scans_than_a_decoder_should_read_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each scan of a progressive JPEG passes over the whole image again; only the sides were
    checked. The scans are counted in the file's bytes before Pillow opens it."""
    folder = matmul_folder(tmp_path / "model", np.zeros((784, 10)), "logits")
    assert predict.read_image(progressive_jpeg(tmp_path / "normal.jpg")).max() > 200  # libjpeg's 6 scans
    assert predict.read_image(progressive_jpeg(tmp_path / "slow.jpg", MAX_JPEG_SCANS - 10)).max() > 200
    many = progressive_jpeg(tmp_path / "many.jpg", MAX_JPEG_SCANS)
    monkeypatch.setattr(Image, "open", never_opened)
    assert predict.main(["--model", str(folder), str(many)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"error: {many}: a JPEG of more than {MAX_JPEG_SCANS} scans, more than a JPEG decoder should read "
        "(a progressive JPEG has about 10); save the digit as PNG\n"
    ), captured.err


def test_start_of_scan_bytes_outside_the_scans_are_no_scans(tmp_path: Path) -> None:
    """FF DA was counted anywhere in the file: a photo with 40 MB appended after its end (a phone's
    motion-photo video; random bytes hold an FF DA every 64 KB) was refused as a JPEG of 621 scans."""
    from search.image_bounds import jpeg_scans as scans_read

    data = progressive_jpeg(tmp_path / "plain.jpg").read_bytes()
    comment = b"\xff\xda" * (MAX_JPEG_SCANS + 1)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:] + comment)
    assert scans_read(padded.read_bytes()) == scans_read(data) == len(jpeg_scans(data))
    assert np.array_equal(predict.read_image(padded), predict.read_image(tmp_path / "plain.jpg"))


def test_a_photo_on_its_side_is_turned_without_decoding_every_number_of_its_exif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageOps.exif_transpose wrote the EXIF block out again after turning the image, decoding every
    number in it: an 8 MB PNG whose eXIf listed 4M of them took 3 s and 800 MB. Only the
    orientation is read now; the image is still turned as EXIF says."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[2:8, 3:25] = 255  # a bar along the top: where it lands tells the turn
    exif = Image.Exif()
    exif[0x0112], exif[50_000] = 6, tuple(range(1000))  # 6: stored turned a quarter left, to be turned right
    Image.fromarray(image).save(tmp_path / "side.png", exif=exif.tobytes())

    def never(*_: object, **__: object) -> bytes:
        raise AssertionError("the EXIF block was written out again")

    monkeypatch.setattr(Image.Exif, "tobytes", never)
    assert np.array_equal(predict.read_image(tmp_path / "side.png"), np.rot90(image, k=-1))


def tiff_of_strips(path: Path, strips: int, endian: str = "<", big: bool = False) -> Path:
    """A 28x28 8-bit grey TIFF (BigTIFF where `big`) of a bar, in strips of one row: with 28 a
    proper one; with more its rows listed again and again (the red team's 64 MB file listed 8M
    strips: 75 s and 2.2 GB to open)."""
    word, inline = ("Q", 8) if big else ("I", 4)
    header = (b"II" if endian == "<" else b"MM") + (struct.pack(endian + "HHHQ", 43, 8, 0, 16) if big else struct.pack(endian + "HI", 42, 8))
    short = {256: 28, 257: 28, 258: 8, 259: 1, 262: 1, 277: 1}  # sides, bits, no compression, black is 0, one sample
    tags = 9
    pixels = len(header) + (8 if big else 2) + tags * (12 + 2 * (inline - 4)) + inline  # after the directory: count, entries, next
    offsets, counts = pixels + 28 * 28, pixels + 28 * 28 + 4 * strips

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack(endian + "HH" + word, tag, kind, count) + value.ljust(inline, b"\0")

    entries = [entry(tag, 3, 1, struct.pack(endian + "H", value)) for tag, value in short.items()]
    entries += [entry(273, 4, strips, struct.pack(endian + word, offsets)), entry(278, 4, 1, struct.pack(endian + "I", 1))]
    entries += [entry(279, 4, strips, struct.pack(endian + word, counts))]
    image = np.zeros((28, 28), dtype=np.uint8)
    image[5:23, 12:16] = 255
    row_offsets = [pixels + 28 * (row % 28) for row in range(strips)]
    path.write_bytes(
        header + struct.pack(endian + ("Q" if big else "H"), tags) + b"".join(sorted(entries)) + struct.pack(endian + word, 0)
        + image.tobytes() + struct.pack(f"{endian}{strips}I", *row_offsets) + struct.pack(f"{endian}{strips}I", *[28] * strips)
    )
    return path


@pytest.mark.parametrize("layout", ["little-endian", "big-endian", "bigtiff"])
def test_a_tiff_listing_more_strips_than_an_image_could_need_is_refused_before_it_is_opened(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pillow reads every value of the first directory's strip tags on open and makes a tile of
    each strip: the numbers listed there are counted from the file's bytes before it opens it.
    TIFFs Pillow writes (several strips, compressed, BigTIFF) are read as before."""
    endian, big = (">" if layout == "big-endian" else "<"), layout == "bigtiff"
    bar = predict.read_image(tiff_of_strips(tmp_path / "rows.tif", 28, endian, big))
    assert bar.shape == (28, 28) and bar[5:23, 12:16].min() == 255 and bar[:5].max() == 0
    image = Image.fromarray(np.kron(bar, np.ones((8, 8), dtype=np.uint8)))
    for name, options in {"strips": {"strip_size": 224}, "deflate": {"compression": "tiff_adobe_deflate"}, "lzw": {"compression": "tiff_lzw"},
                          "big": {"big_tiff": True, "strip_size": 224}}.items():
        image.save(tmp_path / f"{name}.tif", **options)
        assert predict.read_image(tmp_path / f"{name}.tif").shape == (224, 224), name
    folder = matmul_folder(tmp_path / "model", np.zeros((784, 10)), "logits")
    strips = MAX_TIFF_VALUES // 2 + 1  # offsets and byte counts: 1.05 MB
    hostile = tiff_of_strips(tmp_path / "strips.tif", strips, endian, big)
    monkeypatch.setattr(Image, "open", never_opened)
    assert predict.main(["--model", str(folder), str(hostile)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"error: {hostile}: a TIFF whose first directory lists {2 * strips + 7:,} numbers (strip offsets and the like), "
        f"more than {MAX_TIFF_VALUES:,}; save the digit as PNG\n"
    ), captured.err


# ---------------------------------------------------------------- unreadable files, hostile names and graphs


@pytest.fixture(scope="module")
def permissions_apply(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command prefix under which a file's permissions bind: none for an ordinary user; for
    root, setpriv dropping the capabilities that let it read anything. Skips where neither works."""
    probe = tmp_path_factory.mktemp("probe") / "locked"
    probe.write_text("x")
    probe.chmod(0)
    for prefix in ([], ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]):
        if prefix and shutil.which(prefix[0]) is None:
            continue
        result = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe)!r})"], check=False, capture_output=True, text=True)
        if "PermissionError" in result.stderr:
            return prefix
    pytest.skip("this process reads every file whatever its permissions, and setpriv cannot take that away here")


UNREADABLE = ["model-folder", "model-in-a-locked-folder", "model-file", "image", "image-in-a-locked-folder", "csv", "csv-in-a-locked-folder"]


@pytest.mark.slow
@pytest.mark.parametrize("case", UNREADABLE)
def test_an_unreadable_model_image_or_csv_is_one_line(
    case: str, known: Known, tmp_path: Path, python: str, run_env: dict[str, str], permissions_apply: list[str]
) -> None:
    """--model on a folder this user may not read ended in a PermissionError traceback (exit 1),
    an unreadable image was "corrupt or truncated", an unreadable model "not a loadable ONNX model"."""
    (good,) = save(known.images[:1], tmp_path / "readable", "ok")
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(known.folder / "model.onnx", locked / "model.onnx")
    shutil.copy(good, locked / "digit.png")
    write_csv(known.images[:1], known.labels[:1], locked / "rows.csv")
    for name in ("model.onnx", "digit.png", "rows.csv"):  # unreadable files in a readable folder
        shutil.copy(locked / name, tmp_path / name)
        (tmp_path / name).chmod(0)
    model = ["--model", str(known.folder)]
    argv, named = {
        "model-folder": (["--model", str(locked), str(good)], locked),
        "model-in-a-locked-folder": (["--model", str(locked / "model.onnx"), str(good)], locked / "model.onnx"),
        "model-file": (["--model", str(tmp_path / "model.onnx"), str(good)], tmp_path / "model.onnx"),
        "image": ([*model, str(tmp_path / "digit.png")], tmp_path / "digit.png"),
        "image-in-a-locked-folder": ([*model, str(locked / "digit.png")], locked / "digit.png"),
        "csv": ([*model, "--csv", str(tmp_path / "rows.csv")], tmp_path / "rows.csv"),
        "csv-in-a-locked-folder": ([*model, "--csv", str(locked / "rows.csv")], locked / "rows.csv"),
    }[case]
    locked.chmod(0)
    try:
        result = run_cli(python, run_env, *argv, prefix=permissions_apply)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.splitlines() == [
        f"error: {named}: cannot be read (permission denied); give this user read access to it, or pass a copy it can read"
    ]


def icon(path: Path, png: bytes, side: int) -> Path:
    """An ICO file holding one square image stored as PNG: ICONDIR, then one ICONDIRENTRY (its side,
    0 for 256 or more) pointing at the PNG's bytes after it. Pillow writes no icon over 256x256."""
    dim = side if side < 256 else 0
    entry = struct.pack("<4B2H2I", dim, dim, 0, 0, 1, 32, len(png), 6 + 16)
    path.write_bytes(struct.pack("<3H", 0, 1, 1) + entry + png)
    return path


def test_only_formats_opened_from_their_header_are_read(known: Known, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pillow decodes an ICO whole when it opens it, before the size check could refuse it: a 368 KB
    icon holding a 9459x9459 PNG took 2 s and 431 MB. Formats whose open reads more than the
    header are refused by name; the others are read."""
    small = icon(tmp_path / "small.ico", blank_png(tmp_path / "small.png", 64, 64).read_bytes(), 64)
    with Image.open(small) as image:  # the icon is real: Pillow reads it
        assert image.format == "ICO" and image.size == (64, 64)
    big = icon(tmp_path / "big.ico", blank_png(tmp_path / "big.png", 6000, 6000).read_bytes(), 6000)
    assert predict.main(["--model", str(known.folder), str(big)]) == 2
    assert capsys.readouterr().err == (
        f"error: {big}: not a PNG, JPEG, GIF, BMP, TIFF, WebP, AVIF or PBM/PGM/PPM image, or its header is corrupt; save the digit as PNG\n"
    )
    model = predict.load_model(known.folder)
    for suffix in (".gif", ".bmp", ".webp", ".pgm"):  # PNG, JPEG and TIFF are read in the tests above
        paths = [tmp_path / f"digit{i}{suffix}" for i in range(3)]
        for image, path in zip(known.images, paths, strict=False):
            Image.fromarray(image).save(path, **({"lossless": True} if suffix == ".webp" else {}))
        assert digits(predict.predict_images(model, paths)) == known.labels[:3].tolist(), suffix
    if features.check("avif"):  # what phones and browsers save; lossy, so read, not checked digit by digit
        Image.fromarray(known.images[0]).save(tmp_path / "digit.avif", quality=100)
        assert len(predict.predict_images(model, [tmp_path / "digit.avif"])) == 1


def loop_folder(folder: Path) -> Path:
    """The red-team's model: a Loop of 10^15 trips around an Add, then (N, 784) @ (784, 10) logits."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["again"], ["again_out"]), helper.make_node("Add", ["v", "v"], ["v_out"])],
        "body",
        [value("i", TensorProto.INT64, []), value("again", TensorProto.BOOL, []), value("v", FLOAT, ["N", 784])],
        [value("again_out", TensorProto.BOOL, []), value("v_out", FLOAT, ["N", 784])],
    )
    nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["looped"], body=body), helper.make_node("MatMul", ["looped", "w"], ["logits"])]
    weights = {"trips": np.array(10**15, dtype=np.int64), "go": np.array(True), "w": np.zeros((784, 10), dtype=np.float32)}
    return onnx_folder(folder, nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights)


def chain_folder(folder: Path, op: str, count: int, extra: list[str] | None = None, weights: dict[str, np.ndarray] | None = None) -> Path:
    """`count` nodes of `op` one after another on the pixels, then (N, 784) @ (784, 10) logits."""
    names = ["x", *(f"t{i}" for i in range(count))]
    nodes = [helper.make_node(op, [names[i], *(extra or [])], [names[i + 1]]) for i in range(count)]
    nodes.append(helper.make_node("MatMul", [names[-1], "w"], ["logits"]))
    weights = {**(weights or {}), "w": np.zeros((784, 10), dtype=np.float32)}
    return onnx_folder(folder, nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights)


UNBOUNDED_MODELS = {  # each loaded, and the loop then ran forever
    "loop": (loop_folder, "its graph uses the operator 'Loop', control flow, whose cost has no bound"),
    "tile": (
        lambda folder: chain_folder(folder, "Tile", 1, ["reps"], {"reps": np.array([1, 1], dtype=np.int64)}),
        "its graph uses the operator 'Tile', an operator exports never hold",
    ),
    "too-many-nodes": (lambda folder: chain_folder(folder, "Identity", 1_001), "its graph has more than 1,000 nodes"),
    "local-function": (lambda folder: local_function_folder(folder), "its graph defines functions of its own"),
}


@pytest.mark.parametrize("kind", list(UNBOUNDED_MODELS))
def test_a_model_whose_cost_has_no_bound_is_refused_unrun(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 32 KB model.onnx looping 10^15 times around an Add ran forever: its graph is read before
    ONNX Runtime loads it, and any operator outside the exports' few is refused by name."""
    build, message = UNBOUNDED_MODELS[kind]
    folder = build(tmp_path / "model")
    with pytest.raises(PredictError, match=message):
        predict.load_model(folder)
    assert_one_line_exit_2(["--model", str(folder), *map(str, two_digits(tmp_path))], message, capsys)


def test_a_file_name_cannot_fake_a_line_of_output(known: Known, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name holding a line end printed a result line of its own, and a terminal escape sequence
    or a right-to-left mark reached the terminal: names are printed escaped, on every line."""
    (good,) = save(known.images[:1], tmp_path / "plain", "ok")
    names = ["seven.png: 7 (99.9%)\nx.png", "\x1b[2Jclear.png", "mark\u202egnp.png"]
    for name in names:
        shutil.copy(good, tmp_path / name)
    rows = tmp_path / "rows\r.csv"
    write_csv(known.images[:1], known.labels[:1], rows)
    assert predict.main(["--model", str(known.folder), *(str(tmp_path / name) for name in names), "--csv", str(rows)]) == 0
    out = capsys.readouterr().out
    assert not {"\x1b", "\u202e", "\r"} & set(out), out
    lines = out.removesuffix("\n").split("\n")
    label, shown = known.labels[0], f"({known.probabilities[0].max():.1%})"
    assert lines == [
        f"{tmp_path}/seven.png: 7 (99.9%)\\nx.png: {label} {shown}",
        f"{tmp_path}/\\x1b[2Jclear.png: {label} {shown}",
        f"{tmp_path}/mark\\u202egnp.png: {label} {shown}",
        f"{tmp_path}/rows\\r.csv row 1: {label} {shown}, label {label}",
        f"{tmp_path}/rows\\r.csv: 1 of 1 rows right (100.00%)",
    ]


@pytest.mark.parametrize("case", ["image-name", "csv-name", "deep-image", "deep-model", "csv-cell", "deep-csv-cell"])
def test_an_error_quotes_a_bounded_part_of_what_it_names(case: str, known: Known, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Errors quoted a path or a CSV cell whole: a 100,000-character image or CSV name printed
    ~120 KB, a 3,000,000-character cell a 3 MB line. Each error is now one line of a few hundred
    characters at most, its path or cell cut in the middle and its fix kept."""
    long_name = str(tmp_path / ("a" * 100_000))
    deep = tmp_path.joinpath(*["d" * 200] * 19, "digit.png")  # ~3,900 characters, under PATH_MAX; never created
    cell = tmp_path / "cell.csv"
    cell.write_text("1," + "x" * 10_000 + ",0" * 783 + "\n")  # a row short enough to be parsed, its cell quoted
    deep_cell = tmp_path.joinpath(*["c" * 200] * 5, "cell.csv")  # the reader quotes its path whole: over the line's cut
    deep_cell.parent.mkdir(parents=True)
    deep_cell.write_bytes(cell.read_bytes())
    model = ["--model", str(known.folder)]
    argv, message = {
        "image-name": ([*model, long_name], "holds a name of 100000 bytes (at most 255 per folder or file name); pass a shorter path"),
        "csv-name": ([*model, "--csv", long_name], "holds a name of 100000 bytes (at most 255 per folder or file name); pass a shorter path"),
        "deep-image": ([*model, str(deep)], "dddd/digit.png: file not found"),
        "deep-model": (["--model", str(deep.parent), str(deep)], "does not exist; pass --model an export folder written by python -m search.export"),
        "csv-cell": ([*model, "--csv", str(cell)], "' is not a whole number"),
        "deep-csv-cell": ([*model, "--csv", str(deep_cell)], "' is not a whole number"),
    }[case]
    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err[:1000]
    assert len(captured.err) <= 500 and message in captured.err, captured.err[:1000]


# ---------------------------------------------------------------- graphs whose cost is known before they run


def broadcast_folder(folder: Path, side: int = 30_000) -> Path:
    """The red-team's 272 KB model of allowed operators: (M, 1) + (1, M), its max added to the
    logits. At M = 30,000 it took 3.7 GB."""
    nodes = [
        helper.make_node("Add", ["column", "row"], ["square"]),
        helper.make_node("ReduceMax", ["square"], ["top"]),
        helper.make_node("MatMul", ["x", "w"], ["scores"]),
        helper.make_node("Add", ["scores", "top"], ["logits"]),
    ]
    weights = {"column": np.zeros((side, 1), np.float32), "row": np.zeros((1, side), np.float32), "w": np.zeros((784, 10), np.float32)}
    return onnx_folder(folder, nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights)


def long_chain_folder(folder: Path, count: int = 606) -> Path:
    """The red-team's 66 KB model of 606 nodes that ran over 120 s: each image made 1,000 times
    over by a Mul, then carried through a chain of Transposes, Muls and Identities."""
    nodes = [helper.make_node("Reshape", ["x", "rows"], ["t0"]), helper.make_node("Mul", ["t0", "copies"], ["t1"])]
    for i in range(1, count - 3):
        op = ("Transpose", "Mul", "Identity")[i % 3]
        nodes.append(helper.make_node(op, [f"t{i}", "one"] if op == "Mul" else [f"t{i}"], [f"t{i + 1}"], **({"perm": [0, 1, 2]} if op == "Transpose" else {})))
    nodes += [helper.make_node("ReduceMax", [f"t{count - 3}"], ["pixels"], axes=[1], keepdims=0), helper.make_node("MatMul", ["pixels", "w"], ["logits"])]
    weights = {
        "rows": np.array([-1, 1, 784], dtype=np.int64), "copies": np.ones((1000, 1), np.float32),
        "one": np.ones(1, np.float32), "w": np.zeros((784, 10), np.float32),
    }
    return onnx_folder(folder, nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights)


def unknown_shape_folder(folder: Path) -> Path:
    """A Reshape to sizes read from the pixels themselves: no shape can be known before it runs."""
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["brightest"], axes=[0], keepdims=0),
        helper.make_node("Cast", ["brightest"], ["sizes"], to=TensorProto.INT64),
        helper.make_node("Slice", ["sizes", "zero", "two"], ["target"]),
        helper.make_node("Reshape", ["x", "target"], ["reshaped"]),
        helper.make_node("MatMul", ["reshaped", "w"], ["logits"]),
    ]
    weights = {"zero": np.array([0], dtype=np.int64), "two": np.array([2], dtype=np.int64), "w": np.zeros((784, 10), np.float32)}
    return onnx_folder(folder, nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights)


def declared_mlp_folder(folder: Path, hidden: Sequence[int]) -> Path:
    """An MLP as the export writes it (Gemm, Relu, ..., Gemm, Softmax) whose weights are declared
    and not stored (ONNX external data): a few KB for any size. Only shapes are read before a graph
    runs, so its cost is judged as a real model's would be (ONNX Runtime itself cannot load it)."""
    widths, nodes, weights, last = [784, *hidden, 10], [], [], "pixels"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        for name, dims in ((f"w{i}", [n_out, n_in]), (f"b{i}", [n_out])):
            tensor = TensorProto(name=name, data_type=FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
            tensor.external_data.add(key="location", value="weights.bin")
            weights.append(tensor)
        out = "logits" if i == len(hidden) else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"b{i}"], [out], transB=1))
        if i < len(hidden):
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            last = f"relu{i}"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    outputs = [value(name, FLOAT, ["batch", 10]) for name in ("logits", "probabilities")]
    graph = helper.make_graph(nodes, "main_graph", [value("pixels", FLOAT, ["batch", 784])], outputs, weights)
    folder.mkdir()
    (folder / "model.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    return folder


def local_function_folder(folder: Path) -> Path:
    """A model defining its own Relu: ONNX Runtime runs the standard one, while shape inference may
    read the body; which one a node means is not left to chance."""
    file = matmul_folder(folder, np.zeros((784, 10)), "logits") / "model.onnx"
    model = onnx.load(file)
    body = [helper.make_node("Reshape", ["X", "shape"], ["Y"])]
    model.functions.append(helper.make_function("", "Relu", ["X", "shape"], ["Y"], body, [helper.make_opsetid("", 17)]))
    onnx.save(model, file)
    return folder


COSTLY_MODELS = {  # each loaded, then ran out of memory or for minutes
    "broadcast": (broadcast_folder, "its nodes make 1,800,000,021 values for one image"),  # the square, its max's read of it, 21 more
    "606-node-chain": (long_chain_folder, "values for one image, more than the 1,048,576 per image an export could need"),
    "9-layers-of-8192": (
        lambda folder: declared_mlp_folder(folder, [8192] * 9),
        "its matrix products do 543,375,360 multiply-adds for one image, more than the 500,000,000 per image",
    ),
    "unknown-shape": (unknown_shape_folder, "the shape of 'reshaped', an output of its Reshape node, cannot be known before it runs"),
}


@pytest.mark.parametrize("kind", list(COSTLY_MODELS))
def test_a_model_whose_shapes_cost_too_much_is_refused_unrun(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Small files of allowed operators had no bound: a 272 KB broadcast took 3.7 GB, a 66 KB chain
    of 606 nodes ran over 120 s. Every shape is now inferred for the batch that runs, and the work
    and values it adds up to are bounded per image, before ONNX Runtime is given the graph."""
    build, message = COSTLY_MODELS[kind]
    folder = build(tmp_path / "model")
    assert (folder / "model.onnx").stat().st_size < 300_000
    with pytest.raises(PredictError, match="not an mnist-search model"):
        predict.load_model(folder)
    assert_one_line_exit_2(["--model", str(folder), *map(str, two_digits(tmp_path))], message, capsys)


def test_the_largest_model_the_search_can_export_passes_its_cost_check_from_its_shapes_alone(tmp_path: Path) -> None:
    """The search's space allows at most 4 hidden layers of 8192 units; that model's cost (207,831,040
    multiply-adds per image) passes with room to spare, for one image and a chunk of 256, and is
    judged from its shapes alone: its weights are declared in a file that does not exist."""
    from pydantic import ValidationError

    from search.onnx_graph import graph_of
    from search.settings_space import IntRange, SpaceConfig

    for too_big in ({"hidden_layers": IntRange(low=1, high=5)}, {"units": IntRange(low=64, high=8193)}):
        with pytest.raises(ValidationError):
            SpaceConfig(**too_big)
    file = declared_mlp_folder(tmp_path / "model", [8192] * 4) / "model.onnx"
    graph = graph_of(file, onnx.load(file, load_external_data=False))  # its weights declared in another file: read_graph refuses it
    one, chunk = graph.check(1), graph.check(predict.CHUNK_ROWS)  # each raises PredictError over the bounds
    assert not (file.parent / "weights.bin").exists() and file.stat().st_size < 10_000  # 831 MB of weights, never read
    assert one.multiply_adds == 784 * 8192 + 3 * 8192**2 + 8192 * 10 and chunk.multiply_adds == 256 * one.multiply_adds
    assert one.values == 8 * 8192 + 3 * 10  # Gemm and Relu outputs, logits, probabilities and the softmax's read


def test_a_model_whose_cost_grows_faster_than_its_batch_is_checked_at_the_batch_that_runs(tmp_path: Path) -> None:
    """Shapes inferred for one image alone would pass a graph whose tensors grow as N^4: (N, N)
    made a column and a row of N^2, added into N^2 x N^2 (585 MB for 110 images, 17 GB for 256)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"]),
        helper.make_node("MatMul", ["x", "xt"], ["gram"]),
        helper.make_node("Reshape", ["gram", "column"], ["tall"]),
        helper.make_node("Reshape", ["gram", "row"], ["wide"]),
        helper.make_node("Add", ["tall", "wide"], ["square"]),
        helper.make_node("ReduceMax", ["square"], ["top"]),
        helper.make_node("MatMul", ["x", "w"], ["scores"]),
        helper.make_node("Add", ["scores", "top"], ["logits"]),
    ]
    weights = {"column": np.array([-1, 1], dtype=np.int64), "row": np.array([1, -1], dtype=np.int64), "w": np.zeros((784, 10), np.float32)}
    model = predict.load_model(onnx_folder(tmp_path / "model", nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights))
    assert model.probabilities(np.zeros((2, 784), np.float32)).shape == (2, 10)  # 16 values: it runs
    with pytest.raises(PredictError, match=r"its nodes make [\d,]+ values for a batch of 110 images, more than the 1,048,576 per image"):
        model.probabilities(np.zeros((110, 784), np.float32))


def test_a_model_failing_at_run_time_prints_only_predicts_own_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime's own error log (a coloured line naming its source file) was printed before
    predict's one line: a Reshape that cannot hold 2 images fails only when it runs."""
    nodes = [helper.make_node("Reshape", ["x", "target"], ["square"]), helper.make_node("MatMul", ["square", "w"], ["logits"])]
    weights = {"target": np.array([7, 7], dtype=np.int64), "w": np.zeros((7, 10), np.float32)}
    folder = onnx_folder(tmp_path / "model", nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights)
    assert predict.main(["--model", str(folder), *map(str, two_digits(tmp_path))]) == 2
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("error: ") and "it fails on 2 images: [ONNXRuntimeError]" in captured.err, captured.err


def matmul_chain_folder(folder: Path, count: int = 100) -> Path:
    """A slow model within the bounds: `count` products with a 784x784 matrix made at run time
    (6.1e7 multiply-adds per image, ~0.4 s for 256 images; a 40 KB file)."""
    nodes = [helper.make_node("Add", ["column", "row"], ["m"])]
    nodes += [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", "m"], [f"h{i}"]) for i in range(count)]
    nodes.append(helper.make_node("MatMul", [f"h{count - 1}", "w"], ["logits"]))
    weights = {"column": np.zeros((784, 1), np.float32), "row": np.zeros((1, 784), np.float32), "w": np.zeros((784, 10), np.float32)}
    return onnx_folder(folder, nodes, [PIXELS], [value("logits", FLOAT, ["N", 10])], weights)


@pytest.mark.parametrize("held_by", ["weight", "constant"])
def test_a_model_whose_weights_are_in_another_file_is_refused(held_by: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX external data: a model.onnx naming w.bin for its weights was loaded, w.bin read from
    the current folder (not the model's), so predict ran on whatever file of that name was where
    it was started. Exports never write external data; such a file is refused before it loads."""
    folder = matmul_folder(tmp_path / "model", np.eye(784, 10, dtype=np.float32), "scores")
    model = onnx.load(folder / "model.onnx")
    if held_by == "constant":  # the weight as a Constant node's tensor instead of an initializer
        weight = model.graph.initializer.pop()
        model.graph.node.insert(0, helper.make_node("Constant", [], ["w"], value=weight))
    external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=0, convert_attribute=True)
    onnx.save(model, folder / "model.onnx")
    assert (folder / "w.bin").stat().st_size == 784 * 10 * 4
    monkeypatch.chdir(folder)  # where ONNX Runtime would find w.bin
    with pytest.raises(PredictError, match=r"model.onnx: .*weights in another file \(ONNX external data\), which exports never do"):
        predict.load_model(folder)


STOPPABLE = """
import os, signal, sys
import numpy as np
from pathlib import Path
from search import predict

# SIGINT's arrival, as it happens: the C-level handler writes its number here; Python's own handler,
# which raises KeyboardInterrupt where the interpreter next checks for signals, is left as it is
wake_read, wake_write = os.pipe()
os.set_blocking(wake_read, False)
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)
arrived = []


def signal_arrived():
    if not arrived:
        try:
            arrived.extend(os.read(wake_read, 16))
        except BlockingIOError:
            pass
    return "after the signal" if arrived else "before the signal"


class Observed:
    # the model's own ONNX Runtime session, printing a line as each of its runs starts and ends
    def __init__(self, session):
        self.session, self.runs = session, 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, output_names, feed, *rest):
        self.runs += 1
        rows = len(next(iter(feed.values())))
        print(f"start {self.runs} {rows} {signal_arrived()}", flush=True)
        result = self.session.run(output_names, feed, *rest)
        print(f"end {self.runs} {signal_arrived()}", flush=True)
        return result


model = predict.load_model(Path(sys.argv[1]))
model.session = Observed(model.session)
print("running", flush=True)
try:
    predict.predict_pixels(model, np.zeros((10_000, 784), np.float32), [""] * 10_000)
except KeyboardInterrupt:
    print("stopped", signal_arrived(), flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_long_run_between_two_chunks(tmp_path: Path, python: str, run_env: dict[str, str]) -> None:
    """ONNX Runtime runs without Python's signal handling: one run of 10,000 images (~15 s here)
    finished before a Ctrl-C was seen. Run 256 images at a time, it stops within one of them: the
    child reports each chunk (the model's own session, observed) and when the signal arrived, and
    no chunk starts once it has."""
    folder = matmul_chain_folder(tmp_path / "model")
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([python, "-c", STOPPABLE, str(folder)], stdout=subprocess.PIPE, text=True, env=run_env, cwd=root)
    try:
        assert child.stdout is not None and child.stdout.readline() == "running\n"
        first = [child.stdout.readline(), child.stdout.readline()]
        assert first == ["start 1 256 before the signal\n", "end 1 before the signal\n"], first
        child.send_signal(signal.SIGINT)  # a Ctrl-C once the first chunk is done
        out, _ = child.communicate(timeout=300)  # a hang guard only
    finally:
        child.kill()
    lines = out.splitlines()
    assert (child.returncode, lines[-1]) == (130, "stopped after the signal"), out
    starts = [line.split() for line in lines if line.startswith("start ")]
    assert all(line[3] == "before" for line in starts), out  # no chunk started once the signal had arrived
    assert sum(int(line[2]) for line in starts) < 10_000, out  # the run stopped before all 10,000 rows (40 chunks)
    assert all(int(line[2]) == predict.CHUNK_ROWS for line in starts), out
    ended_after = [line for line in lines if line.startswith("end ") and line.endswith("after the signal")]
    assert len(ended_after) <= 1, out  # at most the chunk that was running when it arrived


def test_a_file_name_that_is_not_utf8_is_shown_by_its_bytes(known: Known, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes of a name that are not UTF-8 were printed as the surrogates Python holds them as
    ('seven\\udcff.png'), not as the name's bytes ('seven\\xff.png')."""
    (good,) = save(known.images[:1], tmp_path / "plain", "ok")
    named = tmp_path / os.fsdecode(b"seven\xff.png")
    shutil.copy(good, named)
    assert predict.main(["--model", str(known.folder), str(named)]) == 0
    assert capsys.readouterr().out == f"{tmp_path}/seven\\xff.png: {known.labels[0]} ({known.probabilities[0].max():.1%})\n"
    missing = tmp_path / os.fsdecode(b"gone\xfe.png")
    assert predict.main(["--model", str(known.folder), str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/gone\\xfe.png: file not found\n"


# ---------------------------------------------------------------- digits on grey paper


def on_paper(digit: np.ndarray, background: int, noise: float = 0.0, side: int = 200, ink: int = 20) -> np.ndarray:
    """An MNIST digit (white on black, 28x28) drawn `side` pixels wide in ink of `ink` on paper of
    `background`, with Gaussian grain of `noise` levels (seeded)."""
    strokes = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    page = background + (ink - background) * strokes + np.random.default_rng(0).normal(0, noise, strokes.shape) * (noise > 0)
    return np.clip(np.rint(page), 0, 255).astype(np.uint8)


def test_digits_on_grey_paper_read_as_well_as_on_white(known: Known, small_split: DataSplit, tmp_path: Path) -> None:
    """200x200 MNIST digits in ink of 20 on paper of 200 scored 32% (on white: 91%): after inversion
    the background (~55) was above the ink cut-off (~47) and the whole image was framed as the
    digit. The background level is now taken off first; MNIST's own images read exactly as before."""
    images = (small_split.x_test[:50] * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()
    labels = small_split.y_test[:50].numpy()
    model = predict.load_model(known.folder)
    plain = predict.predict_images(model, save(images, tmp_path / "plain", "digit"))
    reference = model.probabilities(images.reshape(-1, 784).astype(np.float32) / 255)
    assert np.array_equal([p.probability for p in plain], reference.max(axis=1))  # bit for bit: MNIST's black is left alone
    write_csv(images, labels, tmp_path / "rows.csv")
    assert [p.probability for p in predict.predict_csv(model, tmp_path / "rows.csv")] == [p.probability for p in plain]
    accuracy = {}
    for name, background, noise in (("white", 255, 0), ("grey", 200, 0), ("grey-grain", 200, 8.0)):
        pages = np.stack([on_paper(image, background, noise) for image in images])
        predictions = predict.predict_images(model, save(pages, tmp_path / name, "page"))
        accuracy[name] = float(np.mean(digits(predictions) == labels))
    assert accuracy["white"] >= 0.85, accuracy
    assert abs(accuracy["grey"] - accuracy["white"]) <= 0.06 and abs(accuracy["grey-grain"] - accuracy["white"]) <= 0.06, accuracy
    small_grey = np.stack([on_paper(image, 200, side=28) for image in images[:10]])  # 28x28: not framed, levelled all the same
    levelled = np.stack([predict.to_model_input(page, "page") for page in small_grey])
    assert np.abs(levelled - images[:10].reshape(-1, 784) / 255).max() <= 3 / 255


def test_a_digit_cropped_to_its_outline_is_not_taken_for_paper(mnist_arrays: MnistArrays) -> None:
    """Test image 180 (a 1) cropped to its outline, 8x, dark on white: its border is mostly ink,
    whose level, taken for the paper's, erased the whole digit (the model saw a black image)."""
    image = mnist_arrays.test_images[180].numpy()
    rows, cols = np.nonzero(image)
    cropped = np.kron(255 - image[rows.min():rows.max() + 1, cols.min():cols.max() + 1], np.ones((8, 8), dtype=np.uint8))
    assert min(cropped.shape) >= 28 and int(mnist_arrays.test_labels[180]) == 1
    assert predict.to_model_input(cropped, "cropped").max() > 0.5, "the digit was erased"
