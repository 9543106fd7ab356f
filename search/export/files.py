"""What an export folder holds, by name: its files (a contract) and the study its marker names.

Light (the standard library and the study record, no torch, Lightning or matplotlib): the runner
checks its export folder before any trial trains, beside workers that are still starting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from search import record
from search.export.folder import ExportIdentity

STUDY_PLOTS = ("optimization_history.png", "param_importances.png", "intermediate_values.png")
FIGURES = (
    "confusion_matrix.png", "weight_tiles.png", "weight_snapshots.png", "learning_curves.png",
    "comparison.png", "samples.png", *STUDY_PLOTS,
)
FILES = (
    "model.safetensors", "model.ckpt", "model.json", "model.onnx", "confusion_matrix.csv",
    *FIGURES, "metrics.json", "report.html",
)


def export_identity(study: Any) -> ExportIdentity:
    """What the export folder's marker names: the study's name and its uid (search/record.py), if any."""
    uid = study.user_attrs.get(record.UID)
    return ExportIdentity(study.study_name, str(uid) if uid not in (None, "") else None)


MAX_METRICS_BYTES = 1 << 20  # an export's metrics.json is a few KB


def exported_metrics(folder: Path) -> dict[str, Any] | None:
    """The metrics.json of the export in `folder` (read at most MAX_METRICS_BYTES), or None where it
    is missing, unreadable or no JSON object: what a swap and the dashboard note read of an export."""
    try:
        with (folder / "metrics.json").open("rb") as handle:
            metrics = json.loads(handle.read(MAX_METRICS_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return metrics if isinstance(metrics, dict) else None
