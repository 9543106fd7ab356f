"""metrics.json: the export's typed schema. The exporter writes it; the dashboard note, the report
and the benchmarks read it through `read_metrics`, so a renamed field fails in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from search.export.errors import ExportError

METRICS_FILE = "metrics.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Seeds(_Frozen):
    training: int | None
    split: int | None
    sampler: int | None


class _ModelFields(_Frozen):
    """One model's numbers: what its trial recorded and what the export measured on the test set."""

    classifier: str
    params: dict[str, Any]
    hyperparams: dict[str, Any]
    val_accuracy: float | None  # the exported weights' own, in float32 (TrainedTrial.val_accuracy)
    test_accuracy: float
    test_log_loss: float | None
    test_size: int
    param_count: int
    train_seconds: float | None
    epochs: int | None
    seeds: Seeds
    promoted_from: int | None = None  # the trial whose parameters this one trained longer (search/promotion.py)
    weights: str  # "stored" or "retrained"
    retrained_val_accuracy: float | None
    reproduced: bool | None
    note: str
    trial_value: float | None = None  # what the search recorded and ranked by (bf16, or before a retrain)


class ModelMetrics(_ModelFields):
    trial: int


class TrialCounts(_Frozen):
    complete: int
    pruned: int
    failed: int
    total: int


class OnnxCheckRecord(_Frozen):
    rows: int
    max_probability_diff: float
    disagreements: int


class DataRecord(_Frozen):
    description: str
    train_rows: int
    val_rows: int
    test_rows: int
    split_seed: int
    sha256: str | None = None


class ExportMetrics(_ModelFields):
    """The best model's numbers at the top level (as since the first export), then the rest."""

    study: str
    best_trial: int
    best_linear: ModelMetrics | None
    best_dnn: ModelMetrics | None
    snapshot_steps: list[int]
    snapshot_note: str = ""
    trials: TrialCounts
    onnx_check: OnnxCheckRecord
    data: DataRecord
    study_plot_notes: dict[str, str]
    storage: str
    reproduce_command: str
    predict_command: str
    files: list[str]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"


def read_metrics(folder: Path) -> ExportMetrics:
    """The metrics.json of an export folder; ExportError if it is missing or not this schema."""
    path = folder / METRICS_FILE
    try:
        return ExportMetrics.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ExportError(f"no {METRICS_FILE} in {folder}; pass an export folder written by python -m search.export") from None
    except ValidationError as error:
        first = error.errors()[0]
        raise ExportError(f"{path} is not an export's metrics ({'.'.join(map(str, first['loc']))}: {first['msg']})") from None
