"""report.html: one self-contained page (images inline as base64) about an export, read from its
typed metrics, with the command that reproduces the best trial."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.export.metrics import ExportMetrics


def _image(folder: Path, name: str, alt: str) -> str:
    data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(name)}</figcaption></figure>'


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: Any, kind: str = "ratio") -> str:
    """Accuracies and losses to 4 places, counts with thousands separators, seconds to 0.1."""
    if value is None:
        return "n/a"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "seconds":
        return f"{float(value):.1f} s"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _comparison_table(metrics: ExportMetrics) -> str:
    models = [(name, m) for name, m in (("best linear", metrics.best_linear), ("best DNN", metrics.best_dnn)) if m is not None]
    if not models:
        return ""
    fields = [
        ("trial", "trial", "count"), ("validation accuracy", "val_accuracy", "ratio"), ("test accuracy", "test_accuracy", "ratio"),
        ("test log loss", "test_log_loss", "ratio"), ("parameters", "param_count", "count"),
        ("training time", "train_seconds", "seconds"), ("epochs", "epochs", "count"),
    ]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in models)
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{html.escape(_fmt(getattr(m, key), kind))}</td>" for _, m in models) + "</tr>"
        for label, key, kind in fields
    )
    return f"<table><tr><th></th>{head}</tr>{rows}</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ddd;padding:.3em .7em;text-align:left}
th{background:#f6f6f6}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#777;font-size:.85em}pre{background:#f6f6f6;padding:1em;overflow-x:auto;white-space:pre-wrap}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em}.warn{background:#fde2e1;border-left-color:#c0392b}
"""


def _trial_name(number: int, promoted_from: int | None) -> str:
    return str(number) if promoted_from is None else f"{number} (the parameters of trial {promoted_from}, trained longer: a promotion)"


def render_report(metrics: ExportMetrics, folder: Path) -> str:
    """report.html: one self-contained page (images inline as base64) with everything above."""
    esc = html.escape
    m = metrics
    retrained: dict[str, str] = {}  # the best model's note first; a comparison model's too if it was retrained
    for entry in (m, m.best_linear, m.best_dnn):
        if entry is not None and entry.note:
            retrained.setdefault(entry.note, "note" if entry.reproduced else "note warn")
    note = "".join(f'<p class="{css}">{esc(text)}</p>' for text, css in retrained.items())
    headline = _table([
        ("study", m.study), ("best trial", _trial_name(m.best_trial, m.promoted_from)), ("classifier", m.classifier),
        ("validation accuracy", _fmt(m.val_accuracy)),
        ("test accuracy", f"{_fmt(m.test_accuracy)} ({m.test_size:,} test images)"),
        ("test log loss", _fmt(m.test_log_loss)), ("parameters", _fmt(m.param_count, "count")),
        ("epochs", _fmt(m.epochs, "count")), ("training time", _fmt(m.train_seconds, "seconds")),
        ("weights", m.weights),
    ])
    params = _table(sorted(m.params.items()))
    study_notes = "".join(f'<p class="note">{esc(text)}</p>' for text in m.study_plot_notes.values())
    snapshot_note = f'<p class="note">{esc(m.snapshot_note)}</p>' if m.snapshot_note else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Export of study {esc(m.study)}</title><style>{_STYLE}</style></head>
<body>
<h1>Best model of study “{esc(m.study)}”</h1>
<p>Study stored in {esc(m.storage)}.</p>
{note}
{headline}
<h2>Hyperparameters</h2>
{params}
<h2>Test set</h2>
<p>Rows: true digit; columns: predicted digit; colour: share of the true digit's images; numbers: counts
(also in <code>confusion_matrix.csv</code>). The diagonal sums to {int(round(m.test_accuracy * m.test_size)):,} of {m.test_size:,}.</p>
{_image(folder, 'confusion_matrix.png', 'confusion matrix')}
<h2>What the first layer learned</h2>
<p>Each tile is one unit's 784 input weights drawn as a 28x28 image (red positive, blue negative). Each tile is divided by
its own largest |weight|, so the colour bar runs from -1 to 1 in every tile: a unit's pattern is what it shows, not its size.</p>
{_image(folder, 'weight_tiles.png', 'weight tiles')}
{snapshot_note}
{_image(folder, 'weight_snapshots.png', 'weight snapshots during training')}
<h2>Learning curves</h2>
<p>Log loss and accuracy of the best linear and the best DNN model per epoch. Training values are means over the
epoch's batches (drawn at the epoch's middle); validation values are measured after its last step (drawn at its end).</p>
{_image(folder, 'learning_curves.png', 'learning curves')}
<h2>Linear vs DNN</h2>
{_comparison_table(m)}
{_image(folder, 'comparison.png', 'linear vs DNN')}
<h2>The study</h2>
<p>{m.trials.complete} completed, {m.trials.pruned} pruned, {m.trials.failed} failed trials.</p>
{study_notes}
{_image(folder, 'optimization_history.png', 'optimization history')}
{_image(folder, 'param_importances.png', 'parameter importances')}
{_image(folder, 'intermediate_values.png', 'intermediate values')}
<h2>Data</h2>
<p>{esc(m.data.description)}: {m.data.train_rows:,} training, {m.data.val_rows:,} validation,
{m.data.test_rows:,} test images (split seed {m.data.split_seed}). The first nine images of the data as given:</p>
{_image(folder, 'samples.png', 'first nine images')}
<h2>Using the model</h2>
<p><code>model.onnx</code> takes float32 pixels scaled to [0, 1], shape (N, 784), white digit on black, and returns
<code>logits</code> and <code>probabilities</code>; checked against PyTorch on {m.onnx_check.rows:,} test images
(largest probability difference {m.onnx_check.max_probability_diff:.1e}). <code>model.safetensors</code> and <code>model.ckpt</code>
hold the same weights; <code>model.json</code> the hyperparameters and preprocessing.</p>
<pre>{esc(m.predict_command)}</pre>
<h2>Reproduce the best trial</h2>
<p>Trains the trial again from what the study recorded and prints the recorded and the reproduced validation accuracy of every epoch.</p>
<pre>{esc(m.reproduce_command)}</pre>
</body></html>
"""
