"""The searched space and the trials enqueued before it: ranges, the space, the linear baseline
and the first DNN, and the check that an enqueued trial lies inside the space.

Part of the run settings (search/settings.py holds the model that combines them); kept apart
so each file stays readable. Every default and description here is still the one place it is named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)  # a NaN bound passed every check


def ints_as_floats(value: Any) -> Any:
    """A YAML integer where a float is meant (strict mode would refuse 1 for 1.0)."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def files_not_urls(value: str | None) -> str | None:
    """A URL as data became a path (`https:/user:pw@host/x.csv`: not found), and its error quoted
    the password: data is read from files only (mnist and fashion-mnist download themselves)."""
    if value is not None and "://" in value:
        raise ValueError("is a URL, and data is read from files: download it and give its path (mnist and fashion-mnist download themselves)")
    return value


def each_listed_once(value: list[Any], info: ValidationInfo) -> list[Any]:
    """A list validator refusing a repeated item. Optuna keeps a repeated choice: [64, 128, 128]
    drew 128 twice as often, unsaid; snapshot steps [10, 10] took one snapshot, and the export said
    both were asked for. A new run's settings only: a study recorded with one still exports and resumes."""
    repeated = sorted({str(v) for v in value if value.count(v) > 1})
    if repeated and not (info.context or {}).get("recorded"):  # settings.RECORDED
        raise ValueError(f"lists {', '.join(repeated)} more than once; name each once")
    return value


class FloatRange(Strict):
    """A float searched between low and high (log scale when `log`)."""

    low: float
    high: float
    log: bool = False

    _ints_are_floats = field_validator("low", "high", mode="before")(ints_as_floats)

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low})")
        return self


class IntRange(Strict):
    """An integer searched between low and high inclusive."""

    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.low < 1:
            raise ValueError(f"low must be at least 1 (got {self.low})")
        return self


Classifier = Literal["linear", "dnn"]  # lightning_modules.hyperparams.CLASSIFIERS (a test keeps them equal)
Optimizer = Literal["adam", "adamw", "sgd"]  # lightning_modules.hyperparams.OPTIMIZERS


class SpaceConfig(Strict):
    """What the sampler searches. Conditional: hidden layers, units and dropout are DNN-only."""

    classifier: list[Classifier] = Field(default=["linear", "dnn"], min_length=1, max_length=2, description="classifiers to search")
    hidden_layers: IntRange = Field(default=IntRange(low=1, high=3), description="hidden layers of a DNN, at most 4")
    units: IntRange = Field(default=IntRange(low=64, high=1024, log=True), description="units per hidden layer, at most 8192")
    dropout: FloatRange = Field(default=FloatRange(low=0.0, high=0.5), description="dropout after each hidden layer, in [0, 1)")
    learning_rate: FloatRange = Field(default=FloatRange(low=3e-4, high=1e-2, log=True), description="learning rate")
    optimizer: list[Optimizer] = Field(default=["adam", "adamw"], min_length=1, max_length=3, description="adam | adamw | sgd")
    weight_decay: FloatRange = Field(default=FloatRange(low=1e-7, high=1e-4, log=True), description="weight decay")
    batch_size: list[int] = Field(default=[64, 128, 256], min_length=1, max_length=16, description="batch sizes")
    max_cost_ratio: float | None = Field(
        default=None, ge=1, le=1000,
        description="dnn: prune before training a net whose multiply-adds per image exceed this many times the median "
        "tried DNN's (search/cost.py) (null: no bound)",
    )

    _ints_are_floats = field_validator("max_cost_ratio", mode="before")(ints_as_floats)

    @field_validator("hidden_layers")
    @classmethod
    def _at_most_four_layers(cls, value: IntRange) -> IntRange:
        if value.high > 4:
            raise ValueError(f"high must be at most 4 (got {value.high})")
        return value

    @field_validator("units")
    @classmethod
    def _bounded_units(cls, value: IntRange) -> IntRange:
        if value.high > 8192:
            raise ValueError(f"high must be at most 8192 (got {value.high})")
        return value

    @field_validator("dropout")
    @classmethod
    def _dropout_probability(cls, value: FloatRange) -> FloatRange:
        if value.low < 0 or value.high >= 1:
            raise ValueError("dropout must lie in [0, 1)")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _positive_learning_rate(cls, value: FloatRange) -> FloatRange:
        if value.low <= 0 or value.high > 10:
            raise ValueError(f"learning rate must be positive and at most 10 (got [{value.low}, {value.high}])")
        return value

    @field_validator("weight_decay")
    @classmethod
    def _non_negative_decay(cls, value: FloatRange) -> FloatRange:
        if value.low < 0 or value.high > 1:
            raise ValueError(f"weight decay must lie in [0, 1] (got [{value.low}, {value.high}])")
        return value

    _each_choice_once = field_validator("classifier", "optimizer", "batch_size")(each_listed_once)

    @field_validator("batch_size")
    @classmethod
    def _positive_batches(cls, value: list[int]) -> list[int]:
        if any(not 1 <= b <= 65536 for b in value):
            raise ValueError(f"batch sizes must lie in 1-65536 (got {value})")
        return value


class BaselineConfig(Strict):
    """The first, enqueued trial: the tutorial's linear classifier, so linear vs DNN always exists."""

    enabled: bool = Field(default=True, description="enqueue the linear baseline as trial 0")
    learning_rate: float = Field(default=3e-3, gt=0, description="the baseline's learning rate")
    optimizer: Optimizer = Field(default="adam", description="the baseline's optimizer")
    weight_decay: float = Field(default=1e-6, ge=0, description="the baseline's weight decay")
    batch_size: int = Field(default=128, gt=0, description="the baseline's batch size")
    max_epochs: int = Field(default=3, gt=0, le=1000, description="the baseline is a short run, as in the tutorial")


class FirstDnnConfig(Strict):
    """The second enqueued trial: a standard dropout MLP, so the first DNN a search trains is a
    sound one whatever the seed draws (with seed 0 the sampler's first two trials are linear)."""

    enabled: bool = Field(default=True, description="enqueue a standard DNN as the trial after the baseline")
    units: list[int] = Field(default=[512, 512], min_length=1, max_length=4, description="units of each hidden layer")
    dropout: float = Field(default=0.2, ge=0, lt=1, description="dropout after each hidden layer")
    learning_rate: float = Field(default=1e-3, gt=0, description="its learning rate")
    optimizer: Optimizer = Field(default="adam", description="its optimizer")
    weight_decay: float = Field(default=1e-6, ge=0, description="its weight decay")
    batch_size: int = Field(default=128, gt=0, description="its batch size")


def outside_space(section: str, values: dict[str, float], space: SpaceConfig) -> str | None:
    """The first of `values` (learning_rate, weight_decay, dropout) outside its range in `space`."""
    for key, value in values.items():
        span: FloatRange = getattr(space, key)
        if not span.low <= value <= span.high:
            return f"{section}.{key} {value} lies outside space.{key} [{span.low}, {span.high}]"
    return None


def first_dnn_problem(first: FirstDnnConfig, space: SpaceConfig) -> str | None:
    """Why the first DNN does not lie inside `space`, or None when it does."""
    if "dnn" not in space.classifier:
        return "first_dnn needs 'dnn' in space.classifier"
    problem = outside_space("first_dnn", {"learning_rate": first.learning_rate, "weight_decay": first.weight_decay, "dropout": first.dropout}, space)
    if problem:
        return problem
    layers, units = space.hidden_layers, space.units
    if not layers.low <= len(first.units) <= layers.high:
        return f"first_dnn.units has {len(first.units)} layers, outside space.hidden_layers [{layers.low}, {layers.high}]"
    for width in first.units:
        if not units.low <= width <= units.high:
            return f"first_dnn.units {width} lies outside space.units [{units.low}, {units.high}]"
    return choices_problem("first_dnn", first.optimizer, first.batch_size, space)


def choices_problem(section: str, optimizer: str, batch_size: int, space: SpaceConfig) -> str | None:
    """Why an enqueued trial's optimizer or batch size is not among the space's choices, or None."""
    if optimizer not in space.optimizer:
        return f"{section}.optimizer {optimizer!r} is not in space.optimizer"
    if batch_size not in space.batch_size:
        return f"{section}.batch_size {batch_size} is not in space.batch_size"
    return None
