"""The export's other pictures: learning curves, linear vs DNN, sample images, Optuna's study plots.

Fixed pixel sizes (the *_PX constants), the object API, no layout engine, as in figures.py;
only `optuna_plot_png` goes through pyplot, because Optuna's plots do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes

from lightning_modules.data.format import IMAGE_SIDE
from lightning_modules.metric_names import (
    EPOCH,
    MONITOR,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_LOSS,
)
from search.export.figures import (
    DPI,
    default_style,
    draw_confusion,
    message_png,
    new_figure,
    save_png,
)

CURVE_ROW_PX = (1100, 420)  # one model's row of curves; the figure stacks one row per model
COMPARISON_PX = (1300, 1000)
SAMPLES_PX = (600, 660)
STUDY_PLOT_PX = (900, 550)


def curves_pixels(n_models: int) -> tuple[int, int]:
    return CURVE_ROW_PX[0], CURVE_ROW_PX[1] * max(1, n_models)


@default_style
def learning_curves_png(curves: Sequence[tuple[str, Sequence[Mapping[str, float]]]], path: Path) -> Path:
    """Log loss and accuracy per epoch, training and validation, one row per (title, history).

    Training values are means over an epoch's batches, drawn at the epoch's middle; validation
    values are measured after the epoch's last step, drawn at its end.
    """
    curves = [(title, rows) for title, rows in curves if rows]
    if not curves:
        return message_png("No per-epoch history was recorded for these models.", path, curves_pixels(1))
    size = curves_pixels(len(curves))
    fig = new_figure(size)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12 / len(curves), top=1 - 0.12 / len(curves), wspace=0.18, hspace=0.45)
    grid = fig.subplots(len(curves), 2, squeeze=False)
    for (title, history), axes in zip(curves, grid, strict=True):
        ends = [int(row.get(EPOCH, i)) + 1 for i, row in enumerate(history)]
        for ax, (train_key, val_key, label) in zip(axes, ((TRAIN_LOSS, VAL_LOSS, "log loss"), (TRAIN_ACC, MONITOR, "accuracy")), strict=True):
            train = [float(row.get(train_key, float("nan"))) for row in history]
            val = [float(row.get(val_key, float("nan"))) for row in history]
            ax.plot([e - 0.5 for e in ends], train, "o-", label="training (mean over the epoch)")
            ax.plot(ends, val, "s--", label="validation (end of the epoch)")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_xlim(0, max(ends) + 0.2)
            ax.set_xticks(ends[:: max(1, math.ceil(len(ends) / 20))])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title(f"{title}: {label}", fontsize=10)
    return save_png(fig, path)


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


@default_style
def comparison_png(linear: ModelSummary | None, dnn: ModelSummary | None, path: Path) -> Path:
    """Best linear vs best DNN: accuracies, a table of costs, and both confusion matrices."""
    fig = new_figure(COMPARISON_PX)
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
    return save_png(fig, path)




@default_style
def samples_png(images: np.ndarray, labels: Sequence[int], path: Path, title: str) -> Path:
    """The first nine images with their labels in a 3x3 grid, as the model sees them."""
    images = np.asarray(images, dtype=np.float64).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)[:9]
    fig = new_figure(SAMPLES_PX)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, hspace=0.25, wspace=0.08)
    for index, ax in enumerate(fig.subplots(3, 3).flat):
        ax.set_axis_off()
        if index < len(images):
            ax.imshow(images[index], cmap="gray", vmin=0.0, vmax=max(1.0, float(images.max())), interpolation="nearest")
            ax.set_title(f"label {int(labels[index])}", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


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
            return save_png(fig, path)
        finally:
            plt.close(fig)
