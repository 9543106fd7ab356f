"""One trial's model and training as plain values: what the search suggests and a model rebuilds from.

No defaults here: the search space (search/settings.py) and the baseline name every value, so
nothing can silently fall back to a second copy of a default. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

CLASSIFIERS = ("linear", "dnn")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class HyperParams:
    """Everything that defines one trial's model and training; a linear model has no hidden layer."""

    classifier: str
    hidden_units: tuple[int, ...]
    dropout: float
    learning_rate: float
    optimizer: str
    weight_decay: float
    batch_size: int

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.classifier == "linear" and (self.hidden_units or self.dropout):
            object.__setattr__(self, "hidden_units", ())
            object.__setattr__(self, "dropout", 0.0)
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in self.hidden_units))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["hidden_units"] = list(self.hidden_units)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HyperParams:
        return cls(**{**values, "hidden_units": tuple(values.get("hidden_units", ()))})
