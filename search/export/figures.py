"""Drawing primitives and the model's pictures: numbers in, PNG files out (confusion matrix,
weight tiles and their snapshots during training; curves and the rest are in plots.py).

Every figure has a size fixed in pixels and is saved without a tight bounding box, so its size
is known in advance (the *_PX constants, `tile_grid_pixels`, `snapshot_grid_pixels`) and tests
can check it. Figures use the object API (`Figure`, no pyplot state) and fixed axes positions
rather than a layout engine: layout engines measure every text twice, which made the export's
text-heavy figures several times slower. Tile mosaics are coloured in numpy and placed pixel
for pixel with `figimage`, so a 1,000-unit layer costs one image, not a thousand axes.
Nothing here touches pyplot or the process's matplotlib backend: a `Figure` saves through
its own Agg canvas.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib
import matplotlib.cm
import matplotlib.style  # not loaded by `import matplotlib` alone
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.transforms import IdentityTransform

from lightning_modules.data.format import IMAGE_SIDE

_P = ParamSpec("_P")
_R = TypeVar("_R")

DPI = 100
TILE_SCALE = 2  # screen pixels per weight pixel: every weight visible, edges stay crisp
TILE_GAP = 2  # blank weight-pixels between tiles
TILE_COLUMNS = 10
MAX_TILES = 1024  # the widest layer the default search space builds
SNAPSHOT_UNITS = 10
PNG_OPTIONS = {"compress_level": 3}  # measured: under half the save time of the default 6, files ~4 % larger
TILE_CMAP = "RdBu_r"  # red positive, blue negative, white zero

CONFUSION_PX = (700, 600)
MESSAGE_PX = (900, 550)
# Margins of the tile grids, in pixels: room for the title, column labels and row labels.
GRID_LEFT, GRID_RIGHT, GRID_TOP, GRID_BOTTOM = 110, 150, 56, 12  # right: the colour scale
SCALE_BAR_PX = (14, 120)


def default_style(draw: Callable[_P, _R]) -> Callable[_P, _R]:
    """Draw with matplotlib's default style whatever the global state: Optuna's plots switch
    the whole process to ggplot, and a user's matplotlibrc could change anything."""

    @functools.wraps(draw)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with matplotlib.style.context("default"):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(pixels: tuple[int, int]) -> Figure:
    # A quarter pixel over: the canvas truncates size * dpi, and 5.8 * 100 is 579.99...
    return Figure(figsize=((pixels[0] + 0.25) / DPI, (pixels[1] + 0.25) / DPI), dpi=DPI)


def save_png(fig: Figure, path: Path) -> Path:
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


@default_style
def confusion_png(counts: np.ndarray, path: Path, title: str) -> Path:
    """The best model's test-set confusion matrix (rows: true digit, columns: predicted)."""
    fig = new_figure(CONFUSION_PX)
    width = 0.84 * CONFUSION_PX[1] / CONFUSION_PX[0]  # square heatmap, colour bar just beside it
    draw_confusion(fig.add_axes((0.09, 0.09, width, 0.84)), fig.add_axes((0.11 + width, 0.09, 0.025, 0.84)), counts, title)
    return save_png(fig, path)


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
    fig = new_figure(size)
    fig.figimage(_mosaic_rgba(tiles, columns), xo=GRID_LEFT, yo=GRID_BOTTOM, origin="upper")
    pixels = IdentityTransform()  # display coordinates: pixels from the bottom left
    step = (IMAGE_SIDE + TILE_GAP) * TILE_SCALE
    half = IMAGE_SIDE * TILE_SCALE / 2
    top = height - GRID_TOP
    _fit_title(fig, title, 1 - 8 / height)
    for col, label in enumerate(column_labels):
        fig.text(GRID_LEFT + col * step + half, top + 4, label, transform=pixels, ha="center", va="bottom", fontsize=8)
    for row, label in enumerate(row_labels):
        fig.text(GRID_LEFT - 8, top - row * step - half, label, transform=pixels, ha="right", va="center", fontsize=8)
    _scale_bar(fig, size, top)
    return fig


def _fit_title(fig: Figure, title: str, y: float) -> None:
    """The title at 11 pt on one line when it fits the figure's width, else split after its '; '
    (a snapshot note) at 9 pt or less, else wrapped in three lines at 6 pt: a DNN's snapshot
    title with its note ran off both edges and lost the step the run ended at. Two lines at
    9 pt or three at 6 pt stay above the column labels (GRID_TOP)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    room = fig.bbox.width - 16
    tries = [(title, 11)] + [(text, size) for size in (9, 8, 7) for text in (title.replace("; ", ";\n", 1),)]
    for text, size in tries:
        artist = fig.text(0.5, y, text, ha="center", va="top", fontsize=size)
        if artist.get_window_extent(renderer).width <= room:
            return
        artist.remove()
    width = math.ceil(len(title) / 3)
    while len(lines := textwrap.wrap(title, width)) > 3:
        width += 1
    fig.text(0.5, y, "\n".join(lines), ha="center", va="top", fontsize=6)


def _scale_bar(fig: Figure, size: tuple[int, int], top: int) -> None:
    """The tiles' colour scale: each tile is divided by its own largest |weight|, so -1..1."""
    width, height = size
    bar_height = min(SCALE_BAR_PX[1], top - GRID_BOTTOM)
    left = width - GRID_RIGHT + 24
    cax = fig.add_axes((left / width, (top - bar_height) / height, SCALE_BAR_PX[0] / width, bar_height / height))
    mappable = matplotlib.cm.ScalarMappable(norm=Normalize(-1.0, 1.0), cmap=TILE_CMAP)
    bar = fig.colorbar(mappable, cax=cax, ticks=[-1, 0, 1])
    bar.ax.tick_params(labelsize=7)
    bar.set_label("weight / the tile's\nlargest |weight|", fontsize=7)


@default_style
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
    return save_png(_draw_grid(tiles, TILE_COLUMNS, title, column_labels, row_labels), path)


def snapshot_grid_pixels(n_steps: int, units: int = SNAPSHOT_UNITS) -> tuple[int, int]:
    return tile_grid_pixels(max(1, n_steps) * units, units)


@default_style
def weight_snapshots_png(
    snapshots: Mapping[int, np.ndarray], path: Path, title: str, units: int = SNAPSHOT_UNITS, class_templates: bool = False,
    note: str = "",
) -> Path:
    """One row per training step (the first `units` tiles of each), so the tiles visibly sharpen.

    `note` (e.g. which requested steps lay beyond the run) is added to the title.
    """
    steps = sorted(snapshots)
    title = f"{title}; {note}" if note else title
    if not steps:
        return message_png("No weight snapshots were recorded for this model.", path, snapshot_grid_pixels(1, units))
    units = min(units, min(len(np.asarray(snapshots[s])) for s in steps))
    tiles = np.concatenate([unit_tiles(np.asarray(snapshots[s])[:units]) for s in steps])
    row_labels = [f"step {s}" for s in steps]
    row_labels[-1] = f"end: step {steps[-1]}"
    column_labels = [f"digit {c}" if class_templates else f"unit {c}" for c in range(units)]
    return save_png(_draw_grid(tiles, units, title, column_labels, row_labels), path)




@default_style
def message_png(text: str, path: Path, pixels: tuple[int, int] = MESSAGE_PX) -> Path:
    """A plain note in place of a plot that cannot be drawn, so the export's files stay the same."""
    fig = new_figure(pixels)
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11)
    return save_png(fig, path)
