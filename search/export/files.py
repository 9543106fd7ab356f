"""What an export folder holds, by name: its files (a contract) and the study its marker names.

Light (the standard library and the study record, no torch, Lightning or matplotlib): the runner
checks its export folder before any trial trains, beside workers that are still starting.
"""

from __future__ import annotations

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
