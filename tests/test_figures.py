"""search/export/figures.py and plots.py: each drawing function writes a PNG that decodes, at its documented size.

Numbers in, pictures out: no model, no study (except Optuna's plot of a tiny ask/tell study).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from search.export import figures, plots


def decoded_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # a truncated or corrupt PNG fails here
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


@pytest.fixture
def confusion() -> np.ndarray:
    counts = np.full((10, 10), 3, dtype=np.int64)
    np.fill_diagonal(counts, 90)
    counts[4] = 0  # a class with no test images must not divide by zero
    return counts


def test_row_normalised_rows_sum_to_one_and_empty_rows_stay_zero(confusion: np.ndarray) -> None:
    fractions = figures.row_normalised(confusion)
    sums = fractions.sum(axis=1)
    assert np.allclose(np.delete(sums, 4), 1.0)
    assert sums[4] == 0.0


def test_confusion_png(tmp_path: Path, confusion: np.ndarray) -> None:
    path = figures.confusion_png(confusion, tmp_path / "cm.png", "test accuracy 0.9000")
    assert decoded_size(path) == figures.CONFUSION_PX


def test_mosaic_puts_tiles_in_rows_of_columns_with_gaps() -> None:
    tiles = np.stack([np.full((28, 28), float(i)) for i in range(12)])
    canvas = figures.mosaic(tiles, columns=10)
    step = 28 + figures.TILE_GAP
    assert canvas.shape == (2 * step - figures.TILE_GAP, 10 * step - figures.TILE_GAP)
    assert canvas[0, 0] == 0 and canvas[0, 9 * step] == 9 and canvas[step, step] == 11
    assert np.isnan(canvas[28, 0])  # the gap between rows
    assert np.isnan(canvas[step, 2 * step])  # an empty cell after the last tile


def test_unit_tiles_scale_each_unit_to_its_own_range() -> None:
    weights = np.zeros((3, 784))
    weights[0, 5], weights[1, 7], weights[1, 8] = 0.01, -40.0, 20.0
    tiles = figures.unit_tiles(weights)
    assert tiles.shape == (3, 28, 28)
    assert tiles[0].max() == 1.0 and tiles[1].min() == -1.0 and tiles[1].max() == 0.5
    assert not tiles[2].any()  # an all-zero unit stays zero instead of dividing by zero


@pytest.mark.parametrize(("units", "class_templates"), [(10, True), (37, False)])
def test_weight_tiles_png_one_tile_per_unit(tmp_path: Path, units: int, class_templates: bool) -> None:
    weights = np.random.default_rng(0).normal(size=(units, 784))
    path = figures.weight_tiles_png(weights, tmp_path / "tiles.png", "first layer", class_templates=class_templates)
    assert decoded_size(path) == figures.tile_grid_pixels(units)
    assert figures.tile_grid_pixels(37)[1] > figures.tile_grid_pixels(30)[1]  # 4 rows vs 3


def test_weight_tiles_png_caps_huge_layers(tmp_path: Path) -> None:
    weights = np.ones((25, 784))
    path = figures.weight_tiles_png(weights, tmp_path / "tiles.png", "first layer", max_tiles=20)
    assert decoded_size(path) == figures.tile_grid_pixels(20)


def test_weight_snapshots_png_one_row_per_step(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    snapshots = {step: rng.normal(size=(64, 784)) for step in (10, 100, 1000, 1234)}
    path = figures.weight_snapshots_png(snapshots, tmp_path / "snap.png", "snapshots")
    assert decoded_size(path) == figures.snapshot_grid_pixels(4)


def test_weight_snapshots_png_without_snapshots_still_writes_a_picture(tmp_path: Path) -> None:
    path = figures.weight_snapshots_png({}, tmp_path / "snap.png", "snapshots")
    assert decoded_size(path) == figures.snapshot_grid_pixels(1)


def _history(epochs: int) -> list[dict[str, float]]:
    return [
        {"epoch": e, "step": 10 * e, "train/loss": 1.0 / (e + 1), "val/loss": 1.2 / (e + 1), "train/acc": 0.8, "val/acc": 0.7}
        for e in range(epochs)
    ]


@pytest.mark.parametrize("epochs", [0, 1, 3])
def test_learning_curves_png(tmp_path: Path, epochs: int) -> None:
    path = plots.learning_curves_png([("best DNN", _history(epochs))], tmp_path / "curves.png")
    assert decoded_size(path) == plots.curves_pixels(1)


def test_learning_curves_show_one_row_per_classifier(tmp_path: Path) -> None:
    """The tutorial draws the linear model's log-loss curves too, whichever model is best."""
    path = plots.learning_curves_png([("best linear", _history(3)), ("best DNN", _history(5))], tmp_path / "curves.png")
    assert decoded_size(path) == plots.curves_pixels(2)
    assert plots.curves_pixels(2)[1] == 2 * plots.curves_pixels(1)[1]


def test_weight_tiles_have_a_colour_scale(tmp_path: Path) -> None:
    """The scale bar sits in the right margin: pixels there are no longer all white."""
    weights = np.random.default_rng(0).normal(size=(10, 784))
    path = figures.weight_tiles_png(weights, tmp_path / "tiles.png", "first layer", class_templates=True)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    margin = pixels[:, pixels.shape[1] - figures.GRID_RIGHT :]
    assert (np.abs(margin[..., 0] - margin[..., 2]) > 80).any()  # the bar's red or blue


def test_importing_the_figures_leaves_the_matplotlib_backend_alone() -> None:
    import importlib

    import matplotlib

    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")
        importlib.reload(figures)
        importlib.reload(plots)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
        importlib.reload(figures)
        importlib.reload(plots)


def _summary(name: str, confusion: np.ndarray) -> plots.ModelSummary:
    return plots.ModelSummary(name, 3, 0.91, 0.9, 0.3, 7850, 12.5, 2, confusion)


@pytest.mark.parametrize("present", ["both", "dnn only"])
def test_comparison_png(tmp_path: Path, confusion: np.ndarray, present: str) -> None:
    linear = _summary("linear", confusion) if present == "both" else None
    path = plots.comparison_png(linear, _summary("DNN", confusion), tmp_path / "cmp.png")
    assert decoded_size(path) == plots.COMPARISON_PX


def test_samples_png(tmp_path: Path) -> None:
    images = np.random.default_rng(2).random((9, 784)).astype(np.float32)
    path = plots.samples_png(images, list(range(9)), tmp_path / "samples.png", "first nine")
    assert decoded_size(path) == plots.SAMPLES_PX


def test_optuna_plot_png_saves_at_the_fixed_size_and_closes_the_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    study = optuna.create_study(direction="maximize")
    for x in (0.1, 0.5, 0.9):
        study.enqueue_trial({"x": x})
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2, n_trials=3)
    open_before = len(plt.get_fignums())
    style_before = dict(plt.rcParams)
    path = plots.optuna_plot_png(lambda: optuna_plots.plot_optimization_history(study), tmp_path / "history.png")
    assert decoded_size(path) == plots.STUDY_PLOT_PX
    assert len(plt.get_fignums()) == open_before
    assert dict(plt.rcParams) == style_before  # Optuna's ggplot style did not leak out


def test_figures_do_not_depend_on_the_global_style(tmp_path: Path, confusion: np.ndarray) -> None:
    import matplotlib.pyplot as plt

    first = figures.confusion_png(confusion, tmp_path / "a.png", "title").read_bytes()
    with plt.style.context("ggplot"):
        second = figures.confusion_png(confusion, tmp_path / "b.png", "title").read_bytes()
    assert first == second


def test_message_png(tmp_path: Path) -> None:
    path = figures.message_png("needs two completed trials", tmp_path / "note.png")
    assert decoded_size(path) == figures.MESSAGE_PX


@pytest.mark.parametrize(
    "requested, taken, note",
    [
        ([10, 100], [10, 100, 312], ""),  # every requested step was reached: nothing to explain
        ([10, 312], [10, 312], ""),  # a step that is also the run's last
        ([], [312], ""),  # none asked for: the end alone is no shortfall
        ([10, 1000, 5000], [10, 312], "steps 1000, 5000 were asked for, but the run ended at step 312"),
    ],
)
def test_the_snapshot_note_names_the_steps_beyond_the_run_and_where_it_ended(requested: list[int], taken: list[int], note: str) -> None:
    """The caption under weight_snapshots.png: the picture has fewer rows than the settings asked
    for only when the run ended first, and the note says which steps and where it ended."""
    from search.export.exporter import snapshot_note

    assert snapshot_note(requested, taken) == note


@pytest.mark.parametrize(
    "note",
    [
        "",
        "steps 100, 1000 were asked for, but the run ended at step 30",
        "steps " + ", ".join(str(10**6 + i) for i in range(20)) + " were asked for, but the run ended at step 999999",
    ],
)
def test_a_grid_title_stays_whole_inside_the_figure(note: str) -> None:
    """A DNN's snapshot title with its note ran off both edges: "t-layer weights ... ended at step"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    title = "First-layer weights during training (trial 2, DNN 4096-4096-4096-4096)" + (f"; {note}" if note else "")
    tiles = np.zeros((20, 28, 28))
    fig = figures._draw_grid(tiles, 10, title, [f"unit {c}" for c in range(10)], ["step 10", "end: step 30"])
    shown, label = fig.texts[0], fig.texts[1]  # the title, then the first column's label
    renderer = FigureCanvasAgg(fig).get_renderer()
    box = shown.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, box
    assert box.y0 >= label.get_window_extent(renderer).y1, box  # above the column labels
    assert " ".join(shown.get_text().split()) == " ".join(title.split())
    assert (shown.get_fontsize() == 11) == (not note)
