"""report.html: one self-contained page (images inline as base64) about an export, and the
shell command that retrains its best trial."""

from __future__ import annotations

import base64
import html
import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_modules.classifiers import HyperParams
from search.config import Settings


def _call_arguments(values: dict[str, Any]) -> str:
    """`k=v, ...` with double-quoted strings, so the whole command fits in shell single quotes."""
    def literal(value: Any) -> str:
        return json.dumps(value) if isinstance(value, str) else repr(value)

    return ", ".join(f"{key}={literal(value)}" for key, value in values.items())


def reproduce_command(hp: HyperParams, settings: Settings, *, seed: int, epochs: int, recorded: float | None) -> str:
    """A shell command that retrains a trial exactly (its hyperparameters, training seed and
    epochs) and prints its validation accuracy next to the `recorded` one."""
    data = settings.data.model_dump(mode="json")
    code = "\n".join([
        "from lightning_modules.classifiers import HyperParams",
        "from lightning_modules.training import fit",
        "from search.config import DataConfig, Settings",
        "from search.export import load_split",
        f"split = load_split(Settings(data=DataConfig({_call_arguments(data)})))",
        f"hp = HyperParams({_call_arguments(hp.to_dict())})",
        f"result = fit(hp, split, seed={seed}, max_epochs={epochs}, "
        f"snapshot_steps={list(settings.training.snapshot_steps)!r})",
        f'print("val/acc", result.metrics["val/acc"], "recorded", {recorded!r})',
    ])
    env = ""
    if not data.get("source") and not data.get("data_dir") and os.environ.get("MNIST_DATA_DIR"):
        env = f"MNIST_DATA_DIR={shlex.quote(os.environ['MNIST_DATA_DIR'])} "
    return f"{env}python -c {shlex.quote(code)}"


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


def _comparison_table(metrics: dict[str, Any]) -> str:
    models = [(name, metrics[key]) for name, key in (("best linear", "best_linear"), ("best DNN", "best_dnn")) if metrics.get(key)]
    if not models:
        return ""
    fields = [
        ("trial", "trial", "count"), ("validation accuracy", "val_accuracy", "ratio"), ("test accuracy", "test_accuracy", "ratio"),
        ("test log loss", "test_log_loss", "ratio"), ("parameters", "param_count", "count"),
        ("training time", "train_seconds", "seconds"), ("epochs", "epochs", "count"),
    ]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in models)
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{html.escape(_fmt(m.get(key), kind))}</td>" for _, m in models) + "</tr>"
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


def render_report(metrics: dict[str, Any], folder: Path, notes: dict[str, str]) -> str:
    """report.html: one self-contained page (images inline as base64) with everything above."""
    esc = html.escape
    retrained = {}  # the best model's note first; a comparison model's too if it was retrained
    for entry in (metrics, metrics.get("best_linear"), metrics.get("best_dnn")):
        if entry and entry["note"]:
            retrained.setdefault(entry["note"], "note" if entry["reproduced"] else "note warn")
    note = "".join(f'<p class="{css}">{esc(text)}</p>' for text, css in retrained.items())
    headline = _table([
        ("study", metrics["study"]), ("best trial", metrics["best_trial"]), ("classifier", metrics["classifier"]),
        ("validation accuracy", _fmt(metrics["val_accuracy"])),
        ("test accuracy", f"{_fmt(metrics['test_accuracy'])} ({metrics['test_size']:,} test images)"),
        ("test log loss", _fmt(metrics["test_log_loss"])), ("parameters", _fmt(metrics["param_count"], "count")),
        ("epochs", _fmt(metrics["epochs"], "count")), ("training time", _fmt(metrics["train_seconds"], "seconds")),
        ("weights", metrics["weights"]),
    ])
    params = _table(sorted(metrics["params"].items()))
    status = metrics["trials"]
    study_notes = "".join(f'<p class="note">{esc(text)}</p>' for text in notes.values())
    onnx = metrics["onnx_check"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Export of study {esc(metrics['study'])}</title><style>{_STYLE}</style></head>
<body>
<h1>Best model of study “{esc(metrics['study'])}”</h1>
<p>Study stored in {esc(metrics['storage'])}.</p>
{note}
{headline}
<h2>Hyperparameters</h2>
{params}
<h2>Test set</h2>
<p>Rows: true digit; columns: predicted digit; colour: share of the true digit's images; numbers: counts
(also in <code>confusion_matrix.csv</code>). The diagonal sums to {int(round(metrics['test_accuracy'] * metrics['test_size'])):,} of {metrics['test_size']:,}.</p>
{_image(folder, 'confusion_matrix.png', 'confusion matrix')}
<h2>What the first layer learned</h2>
<p>Each tile is one unit's 784 input weights drawn as a 28x28 image (red positive, blue negative, each tile on its own scale).</p>
{_image(folder, 'weight_tiles.png', 'weight tiles')}
{_image(folder, 'weight_snapshots.png', 'weight snapshots during training')}
<h2>Learning curves</h2>
{_image(folder, 'learning_curves.png', 'learning curves')}
<h2>Linear vs DNN</h2>
{_comparison_table(metrics)}
{_image(folder, 'comparison.png', 'linear vs DNN')}
<h2>The study</h2>
<p>{status['complete']} completed, {status['pruned']} pruned, {status['failed']} failed trials.</p>
{study_notes}
{_image(folder, 'optimization_history.png', 'optimization history')}
{_image(folder, 'param_importances.png', 'parameter importances')}
{_image(folder, 'intermediate_values.png', 'intermediate values')}
<h2>Data</h2>
<p>{esc(metrics['data']['description'])}: {metrics['data']['train_rows']:,} training, {metrics['data']['val_rows']:,} validation,
{metrics['data']['test_rows']:,} test images (split seed {metrics['data']['split_seed']}).</p>
{_image(folder, 'samples.png', 'first nine images')}
<h2>Using the model</h2>
<p><code>model.onnx</code> takes float32 pixels scaled to [0, 1], shape (N, 784), white digit on black, and returns
<code>logits</code> and <code>probabilities</code>; checked against PyTorch on {onnx['rows']:,} test images
(largest probability difference {onnx['max_probability_diff']:.1e}). <code>model.safetensors</code> and <code>model.ckpt</code>
hold the same weights; <code>model.json</code> the hyperparameters and preprocessing.</p>
<pre>{esc(metrics['predict_command'])}</pre>
<h2>Reproduce the best trial</h2>
<pre>{esc(metrics['reproduce_command'])}</pre>
</body></html>
"""
