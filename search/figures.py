"""Drawing only: numbers in, PNG files out (confusion matrix, weight tiles, curves, samples).

Every figure has a size fixed in pixels and is saved without a tight bounding box, so its size
is known in advance (the *_PX constants, `tile_grid_pixels`, `snapshot_grid_pixels`) and tests
can check it. Figures use the object API (`Figure`, no pyplot state) and fixed axes positions
rather than a layout engine: layout engines measure every text twice, which made the export's
text-heavy figures several times slower. Tile mosaics are coloured in numpy and placed pixel
for pixel with `figimage`, so a 1,000-unit layer costs one image, not a thousand axes.
Optuna's study plots draw through pyplot; `optuna_plot_png` saves and closes them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib

matplotlib.use("Agg")  # no screen on a server; set before anything imports pyplot

import matplotlib.style  # noqa: E402 - not loaded by `import matplotlib` alone
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import IdentityTransform  # noqa: E402

_P = ParamSpec("_P")
_R = TypeVar("_R")

DPI = 100
IMAGE_SIDE = 28
TILE_SCALE = 2  # screen pixels per weight pixel: every weight visible, edges stay crisp
TILE_GAP = 2  # blank weight-pixels between tiles
TILE_COLUMNS = 10
MAX_TILES = 1024  # the widest layer the default search space builds
SNAPSHOT_UNITS = 10
PNG_OPTIONS = {"compress_level": 3}  # measured: under half the save time of the default 6, files ~4 % larger
TILE_CMAP = "RdBu_r"  # red positive, blue negative, white zero

CONFUSION_PX = (700, 600)
CURVES_PX = (1100, 420)
COMPARISON_PX = (1300, 1000)
SAMPLES_PX = (600, 660)
STUDY_PLOT_PX = (900, 550)
MESSAGE_PX = STUDY_PLOT_PX
# Margins of the tile grids, in pixels: room for the title, column labels and row labels.
GRID_LEFT, GRID_RIGHT, GRID_TOP, GRID_BOTTOM = 110, 20, 56, 12


def _default_style(draw: Callable[_P, _R]) -> Callable[_P, _R]:
    """Draw with matplotlib's default style whatever the global state: Optuna's plots switch
    the whole process to ggplot, and a user's matplotlibrc could change anything."""

    @functools.wraps(draw)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with matplotlib.style.context("default"):
            return draw(*args, **kwargs)

    return wrapper


def _new_figure(pixels: tuple[int, int]) -> Figure:
    # A quarter pixel over: the canvas truncates size * dpi, and 5.8 * 100 is 579.99...
    return Figure(figsize=((pixels[0] + 0.25) / DPI, (pixels[1] + 0.25) / DPI), dpi=DPI)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, format="png", pil_kwargs=PNG_OPTIONS)
    return path


# ---------------------------------------------------------------- confusion matrix


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each true class's row as fractions (rows with no samples stay 0), as the tutorial draws it."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def draw_confusion(ax: Axes, cax: Axes, counts: np.ndarray, title: str, fontsize: float = 8.0) -> None:
    """Heatmap coloured by the row fraction, every cell labelled with its count; colour bar in `cax`."""
    counts = np.asarray(counts, dtype=np.int64)
    fractions = row_normalised(counts)
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    n = counts.shape[0]
    for row in range(n):
        for col in range(n):
            value = counts[row, col]
            color = "white" if fractions[row, col] > 0.55 else ("#9a9a9a" if value == 0 else "black")
            ax.text(col, row, f"{value}", ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, cax=cax, label="share of the true digit's images")


@_default_style
def confusion_png(counts: np.ndarray, path: Path, title: str) -> Path:
    """The best model's test-set confusion matrix (rows: true digit, columns: predicted)."""
    fig = _new_figure(CONFUSION_PX)
    width = 0.84 * CONFUSION_PX[1] / CONFUSION_PX[0]  # square heatmap, colour bar just beside it
    draw_confusion(fig.add_axes((0.09, 0.09, width, 0.84)), fig.add_axes((0.11 + width, 0.09, 0.025, 0.84)), counts, title)
    return _save(fig, path)


# ---------------------------------------------------------------- weight tiles


def unit_tiles(weights: np.ndarray) -> np.ndarray:
    """Rows of 784 weights -> 28x28 tiles, each scaled by its own largest |weight| to [-1, 1].

    One scale per tile: a unit's pattern is what matters, and a few large units would
    otherwise wash out the rest.
    """
    weights = np.asarray(weights, dtype=np.float64).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    scale = np.abs(weights).max(axis=(1, 2), keepdims=True)
    return np.divide(weights, scale, out=np.zeros_like(weights), where=scale > 0)


def mosaic(tiles: np.ndarray, columns: int) -> np.ndarray:
    """Tiles (n x 28 x 28) laid out row by row in a grid, NaN in the gaps and empty cells."""
    rows = max(1, math.ceil(len(tiles) / columns))
    step = IMAGE_SIDE + TILE_GAP
    canvas = np.full((rows * step - TILE_GAP, columns * step - TILE_GAP), np.nan)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, columns)
        canvas[row * step : row * step + IMAGE_SIDE, col * step : col * step + IMAGE_SIDE] = tile
    return canvas


def _mosaic_rgba(tiles: np.ndarray, columns: int) -> np.ndarray:
    """The coloured mosaic (values in [-1, 1]), blown up TILE_SCALE times, as RGBA bytes."""
    cmap = matplotlib.colormaps[TILE_CMAP].with_extremes(bad="white")
    rgba = cmap(np.ma.masked_invalid((mosaic(tiles, columns) + 1.0) / 2.0), bytes=True)
    return np.repeat(np.repeat(rgba, TILE_SCALE, axis=0), TILE_SCALE, axis=1)


def _grid_body(n_tiles: int, columns: int) -> tuple[int, int]:
    rows = max(1, math.ceil(n_tiles / columns))
    step = (IMAGE_SIDE + TILE_GAP) * TILE_SCALE
    return columns * step - TILE_GAP * TILE_SCALE, rows * step - TILE_GAP * TILE_SCALE


def tile_grid_pixels(n_tiles: int, columns: int = TILE_COLUMNS) -> tuple[int, int]:
    """(width, height) of a tile grid figure: the mosaic plus margins for labels and title."""
    width, height = _grid_body(n_tiles, columns)
    return width + GRID_LEFT + GRID_RIGHT, height + GRID_TOP + GRID_BOTTOM


def _draw_grid(
    tiles: np.ndarray, columns: int, title: str, column_labels: Sequence[str], row_labels: Sequence[str]
) -> Figure:
    """A mosaic placed pixel for pixel, with a title, a label over each column and beside each row."""
    _, height = size = tile_grid_pixels(len(tiles), columns)
    fig = _new_figure(size)
    fig.figimage(_mosaic_rgba(tiles, columns), xo=GRID_LEFT, yo=GRID_BOTTOM, origin="upper")
    pixels = IdentityTransform()  # display coordinates: pixels from the bottom left
    step = (IMAGE_SIDE + TILE_GAP) * TILE_SCALE
    half = IMAGE_SIDE * TILE_SCALE / 2
    top = height - GRID_TOP
    fig.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=11)
    for col, label in enumerate(column_labels):
        fig.text(GRID_LEFT + col * step + half, top + 4, label, transform=pixels, ha="center", va="bottom", fontsize=8)
    for row, label in enumerate(row_labels):
        fig.text(GRID_LEFT - 8, top - row * step - half, label, transform=pixels, ha="right", va="center", fontsize=8)
    return fig


@_default_style
def weight_tiles_png(
    weights: np.ndarray, path: Path, title: str, class_templates: bool = False, max_tiles: int = MAX_TILES
) -> Path:
    """First-layer weights, one 28x28 tile per unit in a 10-column grid (red +, blue -).

    For the linear model the ten units are the class templates, labelled with their digit.
    """
    weights = np.asarray(weights)
    tiles = unit_tiles(weights[:max_tiles])
    if len(weights) > max_tiles:
        title += f" (first {max_tiles} of {len(weights)} units)"
    rows = math.ceil(len(tiles) / TILE_COLUMNS)
    if class_templates:
        column_labels = [f"digit {d}" for d in range(min(TILE_COLUMNS, len(tiles)))]
        row_labels: list[str] = []
    else:
        column_labels = [f"+{c}" for c in range(TILE_COLUMNS)]
        row_labels = [f"units {r * TILE_COLUMNS}-" for r in range(rows)]
    return _save(_draw_grid(tiles, TILE_COLUMNS, title, column_labels, row_labels), path)


def snapshot_grid_pixels(n_steps: int, units: int = SNAPSHOT_UNITS) -> tuple[int, int]:
    return tile_grid_pixels(max(1, n_steps) * units, units)


@_default_style
def weight_snapshots_png(
    snapshots: Mapping[int, np.ndarray], path: Path, title: str, units: int = SNAPSHOT_UNITS, class_templates: bool = False
) -> Path:
    """One row per training step (the first `units` tiles of each), so the tiles visibly sharpen."""
    steps = sorted(snapshots)
    if not steps:
        return message_png("No weight snapshots were recorded for this model.", path, snapshot_grid_pixels(1, units))
    units = min(units, min(len(np.asarray(snapshots[s])) for s in steps))
    tiles = np.concatenate([unit_tiles(np.asarray(snapshots[s])[:units]) for s in steps])
    row_labels = [f"step {s}" for s in steps]
    row_labels[-1] = f"end: step {steps[-1]}"
    column_labels = [f"digit {c}" if class_templates else f"unit {c}" for c in range(units)]
    return _save(_draw_grid(tiles, units, title, column_labels, row_labels), path)


# ---------------------------------------------------------------- learning curves


@_default_style
def learning_curves_png(history: Sequence[Mapping[str, float]], path: Path, title: str) -> Path:
    """Log loss and accuracy per epoch, training and validation, side by side."""
    if not history:
        return message_png(f"{title}: no per-epoch history was recorded.", path, CURVES_PX)
    fig = _new_figure(CURVES_PX)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.88, wspace=0.18)
    epochs = [int(row.get("epoch", i)) + 1 for i, row in enumerate(history)]
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("log loss", "accuracy"), strict=True):
        for stage, style in (("train", "o-"), ("val", "s--")):
            values = [float(row.get(f"{stage}/{metric}", float("nan"))) for row in history]
            ax.plot(epochs, values, style, label="training" if stage == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xticks(epochs[:: max(1, math.ceil(len(epochs) / 20))])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# ---------------------------------------------------------------- linear vs DNN


@dataclass(frozen=True)
class ModelSummary:
    """What the comparison shows of one model: its name, headline numbers and test confusion."""

    name: str
    trial: int
    val_accuracy: float
    test_accuracy: float
    test_log_loss: float
    param_count: int
    train_seconds: float | None
    epochs: int | None
    confusion: np.ndarray


def _comparison_rows(models: Sequence[ModelSummary]) -> tuple[list[str], list[list[str]]]:
    labels = ["trial", "val accuracy", "test accuracy", "test log loss", "parameters", "training time", "epochs"]
    columns = [
        [
            str(m.trial), f"{m.val_accuracy:.4f}", f"{m.test_accuracy:.4f}", f"{m.test_log_loss:.4f}", f"{m.param_count:,}",
            "?" if m.train_seconds is None else f"{m.train_seconds:.1f} s", "?" if m.epochs is None else str(m.epochs),
        ]
        for m in models
    ]
    return labels, [list(row) for row in zip(*columns, strict=True)]


@_default_style
def comparison_png(linear: ModelSummary | None, dnn: ModelSummary | None, path: Path) -> Path:
    """Best linear vs best DNN: accuracies, a table of costs, and both confusion matrices."""
    fig = _new_figure(COMPARISON_PX)
    fig.suptitle("Best linear vs best DNN", fontsize=12)
    present = [m for m in (linear, dnn) if m is not None]
    bars = fig.add_axes((0.06, 0.64, 0.38, 0.28))
    width = 0.8 / max(1, len(present))
    for i, model in enumerate(present):
        offsets = np.arange(2) + (i - (len(present) - 1) / 2) * width
        drawn = bars.bar(offsets, [model.val_accuracy, model.test_accuracy], width, label=model.name)
        bars.bar_label(drawn, fmt="%.4f", fontsize=8, padding=2)
    low = min((min(m.val_accuracy, m.test_accuracy) for m in present), default=0.0)
    bars.set_ylim(max(0.0, low - 0.1), 1.0)
    bars.set_xticks(np.arange(2), ["validation accuracy", "test accuracy"])
    bars.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    bars.grid(axis="y", alpha=0.3)
    table_ax = fig.add_axes((0.58, 0.62, 0.38, 0.30))
    table_ax.set_axis_off()
    if present:
        labels, rows = _comparison_rows(present)
        table = table_ax.table(cellText=rows, rowLabels=labels, colLabels=[m.name for m in present], loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(10)
        table.scale(1.0, 1.6)
    width = 0.50 * COMPARISON_PX[1] / COMPARISON_PX[0]
    for left, (model, kind) in zip((0.05, 0.54), ((linear, "linear"), (dnn, "DNN")), strict=True):
        ax = fig.add_axes((left, 0.05, width, 0.50))
        if model is None:
            ax.text(0.5, 0.5, f"no completed {kind} trial in this study", ha="center", va="center")
            ax.set_axis_off()
            continue
        cax = fig.add_axes((left + width + 0.01, 0.05, 0.012, 0.50))
        draw_confusion(ax, cax, model.confusion, f"{model.name}: test confusion (accuracy {model.test_accuracy:.4f})", fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------- data and study plots


@_default_style
def samples_png(images: np.ndarray, labels: Sequence[int], path: Path, title: str) -> Path:
    """The first nine images with their labels in a 3x3 grid, as the model sees them."""
    images = np.asarray(images, dtype=np.float64).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)[:9]
    fig = _new_figure(SAMPLES_PX)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, hspace=0.25, wspace=0.08)
    for index, ax in enumerate(fig.subplots(3, 3).flat):
        ax.set_axis_off()
        if index < len(images):
            ax.imshow(images[index], cmap="gray", vmin=0.0, vmax=max(1.0, float(images.max())), interpolation="nearest")
            ax.set_title(f"label {int(labels[index])}", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@_default_style
def message_png(text: str, path: Path, pixels: tuple[int, int] = MESSAGE_PX) -> Path:
    """A plain note in place of a plot that cannot be drawn, so the export's files stay the same."""
    fig = _new_figure(pixels)
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11)
    return _save(fig, path)


def optuna_plot_png(draw: Callable[[], Axes | np.ndarray], path: Path, pixels: tuple[int, int] = STUDY_PLOT_PX) -> Path:
    """Run one of optuna.visualization.matplotlib's plots and save it at a fixed size.

    Inside an rc_context: those plots switch matplotlib to the ggplot style for the whole
    process; the context keeps that to this figure. The figure is closed afterwards.
    """
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        axes = draw()
        fig = (axes.flat[0] if isinstance(axes, np.ndarray) else axes).figure
        try:
            fig.set_dpi(DPI)
            fig.set_size_inches((pixels[0] + 0.25) / DPI, (pixels[1] + 0.25) / DPI)
            fig.set_layout_engine("constrained")  # Optuna puts legends outside the axes
            return _save(fig, path)
        finally:
            plt.close(fig)
