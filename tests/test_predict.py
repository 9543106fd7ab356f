"""search/predict.py: a model trained to >= 0.9 on 5,000 rows, exported to ONNX, reads digits back.

MNIST test images the model gets right are written as files in the forms a user might have
(28x28 PNG, inverted, enlarged black-on-white, transparent, CSV rows) and must come back with
their labels. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules.hyperparams import HyperParams
from lightning_modules.data.readers import write_csv
from lightning_modules.data.split import DataSplit
from lightning_modules.training import fit
from search import predict
from search.export.model_formats import export_onnx
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
        tmp_path / "text.png": "not an image file Pillow can read",
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


def run_cli(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "search.predict", *args], capture_output=True, text=True, env=env, timeout=120,
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
