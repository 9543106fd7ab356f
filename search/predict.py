"""python -m search.predict: classify handwritten digits with an exported model.

    python -m search.predict --model storage/exports/mnist digit.png [more.png ...]
    python -m search.predict --model storage/exports/mnist --csv rows.csv

Images: PNG, JPEG, GIF, BMP, TIFF, WebP, AVIF or PBM/PGM/PPM, grayscale or colour, 28x28 or larger, up
to 4096x4096 pixels (judged from the file's header, before it is decoded). Dark digits on a light background are
inverted (MNIST is white on black). A larger image is framed the way MNIST was made: the digit's
bounding box is scaled to fit 20x20 and centred by its centre of mass in a 28x28 image. CSV: the
tutorial's rows (label in column 0, then 784 pixels 0-255), at most 10,000 rows (MNIST's test
set) at a time, counted before the file is parsed.

Runs the export's model.onnx in ONNX Runtime, without importing PyTorch, so it starts fast, 256
images at a time (Ctrl-C stops it between two). A graph with control flow (Loop, Scan, If) or
another operator no export holds, a shape that cannot be known before it runs, or more work or
memory per image than the largest export could need, is refused unrun (search/onnx_graph.py).
Bad input (a missing model or one of another kind, a corrupt or too small image, a bad CSV) prints one line on stderr
and exits with code 2. File names are printed with control characters escaped, bytes that are not UTF-8 as \\xff.
"""

from __future__ import annotations

from search.console import OutputGuard, quiet_interrupt_while_starting, starting_done

if __name__ == "__main__":
    quiet_interrupt_while_starting()

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_modules.data.format import CSV_COLUMNS, N_CLASSES, N_PIXELS
from lightning_modules.errors import UserInputError, check_path_length, error_line, one_line
from search.digit_inputs import (  # re-exported (__all__): the predictor's public names
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    PredictError,
    _regular_file,
    cannot_read,
    check_path,
    file_in,
    first_line,
    frame_digit,
    is_light_background,
    read_bounded,
    read_image,
    real_bytes,
    shown,
    to_model_input,
    to_white_on_black,
)
from search.onnx_graph import Graph, not_ours, read_graph, unloadable
from search.options import URL_START, OneLineParser

# Every CSV row costs ~15 KB on its way through the parser and the model (text, int64 cells,
# float32 pixels), and every line, blank or not, a list entry; 10,000 rows (MNIST's test set)
# peak near 150 MB. The line count is taken in bounded chunks before anything is parsed.
MAX_CSV_ROWS = 10_000
MAX_CSV_LINE_BYTES = 4 * CSV_COLUMNS  # "255," per cell at most, the line end in place of the last comma
MAX_CSV_HEADER_BYTES = 16 * CSV_COLUMNS  # a header of column names, e.g. "label,pixel0,...,pixel783"
MAX_CSV_BYTES = MAX_CSV_HEADER_BYTES + MAX_CSV_ROWS * MAX_CSV_LINE_BYTES
MAX_IMAGES = 10_000  # files on one command line (a CSV has its own row bound)
MAX_MODEL_BYTES = 1024 * 1024 * 1024  # the largest searchable MLP is ~850 MB of float32 weights
MODEL_FILE = "model.onnx"
PROBABILITIES = "probabilities"  # the export's softmax output; any other is read as logits
OUTPUT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)")  # scores numpy can softmax
PROBABILITY_SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; float16 within ~1e-3
CHUNK_ROWS = 256  # images per ONNX Runtime call: a Ctrl-C is handled between two calls, not inside one


@dataclass(frozen=True)
class Prediction:
    source: str
    digit: int
    probability: float
    label: int | None = None  # the true label, when the input carries one (CSV)

    def line(self) -> str:
        text = f"{one_line(real_bytes(self.source))}: {self.digit} ({self.probability:.1%})"  # a name cannot print a line
        if self.label is not None:
            text += f", label {self.label}" + ("" if self.label == self.digit else " WRONG")
        return text


# ---------------------------------------------------------------- model


@dataclass
class Model:
    """An ONNX Runtime session on an exported model: float32 (N, 784) in [0, 1] -> probabilities."""

    session: Any
    path: Path
    graph: Graph  # its shapes, to bound each run's cost before it starts
    output: str = PROBABILITIES  # the output read: the export's probabilities, or bare logits

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 10) probabilities, CHUNK_ROWS images per run: Python handles a Ctrl-C only once ONNX
        Runtime's call returns (one run of 10,000 images ignored it to the end)."""
        parts = [self._chunk(pixels[start : start + CHUNK_ROWS]) for start in range(0, len(pixels), CHUNK_ROWS)]
        return np.concatenate(parts) if parts else np.zeros((0, N_CLASSES))

    def _chunk(self, pixels: np.ndarray) -> np.ndarray:
        """One run, its cost checked on the shapes of this batch size first; what it gives is checked
        too: a graph's declared shapes may be dynamic or wrong, and its scores NaN."""
        self.graph.check(len(pixels))
        try:
            (result,) = self.session.run([self.output], {self.session.get_inputs()[0].name: pixels.astype(np.float32)})
        except Exception as error:  # noqa: BLE001 - ORT raises its own untyped errors (a fixed batch size, a bad node)
            raise not_ours(self.path, f"it fails on {len(pixels)} images: {shown(first_line(error))}") from None
        result = np.asarray(result, dtype=np.float64)
        if result.shape != (len(pixels), N_CLASSES):
            raise not_ours(self.path, f"it gives {shown(repr(self.output), 60)} of shape {result.shape} for {len(pixels)} images, not (N, 10)")
        if not np.isfinite(result).all():
            raise not_ours(self.path, f"its {shown(repr(self.output), 60)} holds NaN or infinite values")
        if self.output != PROBABILITIES:  # a bare-logits model: softmax here
            shifted = np.exp(result - result.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        if result.min() < 0 or result.max() > 1 or not np.allclose(result.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE):
            raise not_ours(self.path, f"its {shown(repr(self.output), 60)} are not probabilities (each row in [0, 1], summing to 1)")
        return result


def _dims(shape: Sequence[Any]) -> str:
    """A graph's declared shape as (N, 784): a dynamic size by its name, ? where it has none."""
    return "(" + ", ".join("?" if size is None else shown(size, 40) for size in shape[:8]) + ")"


def _check_input(file: Path, session: Any) -> None:
    """Exactly one input, float32 (N, 784): the pixels predict feeds. Anything else fails in ONNX Runtime."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise not_ours(file, f"it takes {len(inputs)} inputs ({shown(', '.join(i.name for i in inputs[:10]))}), not one")
    (pixels,) = inputs
    if pixels.type != "tensor(float)":
        raise not_ours(file, f"its input {shown(repr(pixels.name), 60)} is {pixels.type}, not tensor(float)")
    if len(pixels.shape) != 2 or pixels.shape[1] != N_PIXELS:
        raise not_ours(file, f"its input has shape {_dims(pixels.shape)}, not (N, 784)")


def _chosen_output(file: Path, session: Any) -> str:
    """The export's "probabilities", else the first output as logits; float scores of rank 2, 10
    classes where the graph says its size."""
    outputs = session.get_outputs()
    if not outputs:
        raise not_ours(file, "it has no outputs")
    output = next((o for o in outputs if o.name == PROBABILITIES), outputs[0])
    if output.type not in OUTPUT_TYPES:
        raise not_ours(file, f"its output {shown(repr(output.name), 60)} is {output.type}, not float scores")
    shape = output.shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != N_CLASSES):
        raise not_ours(file, f"its output {shown(repr(output.name), 60)} has shape {_dims(shape)}, not (N, 10)")
    return output.name


def load_model(path: Path) -> Model:
    """The export folder's model.onnx (or an .onnx file given directly), its operators and the cost
    of its shapes checked before it is loaded, its inputs and outputs after. The bytes checked are the bytes run."""
    check_path_length(path, "--model")
    file = file_in(path, MODEL_FILE, "pass --model an export folder written by python -m search.export")
    data = read_bounded(file, MAX_MODEL_BYTES, "a model file")
    graph = read_graph(file, data)  # operators, shapes and cost, before ONNX Runtime folds a constant
    import onnxruntime as ort

    options = ort.SessionOptions()
    # fatal only: its errors are raised to predict too, which says them in one line; at 3 a node
    # failing at run time printed ONNX Runtime's own coloured log line before it
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ORT raises its own untyped errors for bad files
        raise unloadable(file, error) from None
    _check_input(file, session)
    return Model(session, file, graph, _chosen_output(file, session))


def predict_pixels(model: Model, pixels: np.ndarray, sources: Sequence[str], labels: Sequence[int] | None = None) -> list[Prediction]:
    probabilities = model.probabilities(pixels)
    digits = probabilities.argmax(axis=1)
    return [
        Prediction(source, int(digit), float(probabilities[i, digit]), None if labels is None else int(labels[i]))
        for i, (source, digit) in enumerate(zip(sources, digits, strict=True))
    ]


def predict_images(model: Model, paths: Sequence[Path]) -> list[Prediction]:
    """Read every image first (one bad file fails before anything is printed), then one batch."""
    pixels = np.stack([to_model_input(read_image(path), str(path)) for path in paths])  # to_model_input shows the path bounded
    return predict_pixels(model, pixels, [str(path) for path in paths])


def count_lines(path: Path, stop_after: int) -> int:
    """The lines of `path` (a last one without a line end included), counted in 1 MB chunks and
    stopping once there are more than `stop_after`: its size, not its line count, bounds the work."""
    lines, last = 0, b"\n"
    try:
        with path.open("rb") as handle:
            while lines <= stop_after and (chunk := handle.read(1024 * 1024)):
                lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    except OSError as error:
        raise cannot_read(path, error) from None
    return lines + (last != b"\n")


def _split_csv() -> str:
    return f"predict reads at most {MAX_CSV_ROWS:,} rows at a time: split the file"


def check_csv(path: Path) -> None:
    """Refuse a CSV with more than MAX_CSV_ROWS rows (one header line allowed) before it is parsed:
    its size first, then its lines, counted in chunks and stopping at the first line too many."""
    split = _split_csv()
    check_path(path, "--csv")
    _regular_file(path, MAX_CSV_BYTES, f"a CSV of {MAX_CSV_ROWS:,} rows", split)
    allowed = MAX_CSV_ROWS + 1  # the header
    if count_lines(path, allowed) > allowed:
        raise PredictError(f"{shown(path)}: more than {allowed:,} lines (blank ones included); {split}")


def predict_csv(model: Model, path: Path) -> list[Prediction]:
    """Rows of the tutorial's CSV (label, 784 pixels); each prediction carries the row's label."""
    from lightning_modules.data.readers import read_csv

    check_csv(path)
    try:
        images, labels = read_csv(path, limit=MAX_CSV_BYTES)
    except UserInputError as error:  # it quotes the path whole: shown cut in the middle, so the cut line keeps the reason
        raise PredictError(str(error).replace(str(path), shown(path))) from None
    if len(labels) > MAX_CSV_ROWS:  # one row over at most, in a file without a header
        raise PredictError(f"{shown(path)}: {len(labels):,} rows; {_split_csv()}")
    pixels = np.stack([to_model_input(image, f"{path} row {i + 1}") for i, image in enumerate(images)])
    return predict_pixels(model, pixels, [f"{path} row {i + 1}" for i in range(len(images))], labels.tolist())


# ---------------------------------------------------------------- command line


def _local_path(text: str) -> Path:
    """A file's path on this machine. A URL became a path (`http:/u:pw@x/m.onnx` "does not exist",
    its password quoted); '' became "." ("is a folder")."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; give a file's path")
    if URL_START.match(text):
        raise argparse.ArgumentTypeError("is a URL, and predict reads files on this machine: download it and give its path")
    return Path(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m search.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=_local_path, required=True, help="export folder (or its model.onnx)")
    parser.add_argument("--csv", type=_local_path, default=None, help="CSV file of rows: label, then 784 pixels 0-255")
    parser.add_argument("images", nargs="*", type=_local_path, help="image files (PNG, JPEG, ...), 28x28 or larger")
    args = parser.parse_args(argv)
    if not args.images and args.csv is None:
        parser.error("give image files, --csv FILE, or both")
    if len(args.images) > MAX_IMAGES:
        parser.error(f"{len(args.images):,} image files; at most {MAX_IMAGES:,} at a time")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    guard = OutputGuard().install()  # `| head -1` exited: the rest of the lines go to /dev/null, no traceback
    try:
        starting_done()  # from here on the except below says it
        model = load_model(args.model)
        predictions = predict_images(model, args.images) if args.images else []
        csv_predictions = predict_csv(model, args.csv) if args.csv is not None else []
        for prediction in [*predictions, *csv_predictions]:
            print(prediction.line())
        if csv_predictions:
            right = sum(p.digit == p.label for p in csv_predictions)
            print(f"{one_line(real_bytes(str(args.csv)))}: {right} of {len(csv_predictions)} rows right ({right / len(csv_predictions):.2%})")
        return 0
    except UserInputError as error:
        print(f"error: {error_line(real_bytes(str(error)))}", file=sys.stderr)  # escaped, and bounded whatever it quotes
        return 2
    except KeyboardInterrupt:  # Ctrl-C, even while the model loads: one line, not a traceback
        print("\nstopped", file=sys.stderr)
        return 130
    finally:
        guard.uninstall()


__all__ = [  # the predictor's public names
    "MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "Model", "PredictError", "Prediction", "frame_digit",
    "is_light_background", "load_model", "main", "predict_csv", "predict_images", "read_image", "to_model_input", "to_white_on_black",
]


if __name__ == "__main__":
    sys.exit(main())
