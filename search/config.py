"""Run settings: built-in defaults, overridden by a YAML config file, overridden by the CLI.

Validation is strict (unknown keys, wrong types, inverted ranges are errors) and every error
becomes one line that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lightning_modules.errors import UserInputError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(UserInputError):
    """An invalid config file or command-line value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FloatRange(_Strict):
    """A float searched between low and high (log scale when `log`)."""

    low: float
    high: float
    log: bool = False

    @field_validator("low", "high", mode="before")
    @classmethod
    def _ints_are_floats(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low})")
        return self


class IntRange(_Strict):
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


Classifier = Literal["linear", "dnn"]
Optimizer = Literal["adam", "adamw", "sgd"]


class SpaceConfig(_Strict):
    """What the sampler searches. Conditional: hidden layers, units and dropout are DNN-only."""

    classifier: list[Classifier] = Field(default=["linear", "dnn"], min_length=1)
    hidden_layers: IntRange = IntRange(low=1, high=3)
    units: IntRange = IntRange(low=64, high=1024, log=True)
    dropout: FloatRange = FloatRange(low=0.0, high=0.5)
    learning_rate: FloatRange = FloatRange(low=3e-4, high=1e-2, log=True)
    optimizer: list[Optimizer] = Field(default=["adam", "adamw"], min_length=1)
    weight_decay: FloatRange = FloatRange(low=1e-7, high=1e-4, log=True)
    batch_size: list[int] = Field(default=[64, 128, 256], min_length=1)

    @field_validator("hidden_layers")
    @classmethod
    def _at_most_four_layers(cls, value: IntRange) -> IntRange:
        if value.high > 4:
            raise ValueError(f"high must be at most 4 (got {value.high})")
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
        if value.low <= 0:
            raise ValueError(f"learning rate must be positive (got low={value.low})")
        return value

    @field_validator("weight_decay")
    @classmethod
    def _non_negative_decay(cls, value: FloatRange) -> FloatRange:
        if value.low < 0:
            raise ValueError(f"weight decay must not be negative (got low={value.low})")
        return value

    @field_validator("batch_size")
    @classmethod
    def _positive_batches(cls, value: list[int]) -> list[int]:
        if any(b < 1 for b in value):
            raise ValueError(f"batch sizes must be positive (got {value})")
        return value


class BaselineConfig(_Strict):
    """The first, enqueued trial: the tutorial's linear classifier, so linear vs DNN always exists."""

    enabled: bool = True
    learning_rate: float = Field(default=3e-3, gt=0)
    optimizer: Optimizer = "adam"
    weight_decay: float = Field(default=1e-6, ge=0)
    batch_size: int = Field(default=128, gt=0)
    max_epochs: int = Field(default=3, gt=0)  # the tutorial's baseline is a short run


class StudyConfig(_Strict):
    name: str = Field(default="mnist", min_length=1)
    storage: str | None = None  # None: sqlite file in the runtime folder
    trials: int = Field(default=100, gt=0)  # total finished trials (complete + pruned)
    timeout: float | None = Field(default=None, gt=0)
    target_accuracy: float | None = Field(default=0.95, gt=0, le=1)
    seed: int = Field(default=0, ge=0)
    workers: int = Field(default=1, gt=0)
    heartbeat_seconds: int = Field(default=5, gt=0)  # a running trial proves it is alive this often
    stale_after_seconds: int = Field(default=20, gt=0)  # silent this long: failed and retried

    @field_validator("timeout", "target_accuracy", mode="before")
    @classmethod
    def _ints_are_floats(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SamplerConfig(_Strict):
    name: Literal["tpe", "random"] = "tpe"
    n_startup_trials: int = Field(default=5, ge=0)


class PrunerConfig(_Strict):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(default=3, ge=0)  # median: trials before pruning starts
    n_warmup_steps: int = Field(default=0, ge=0)  # median: epochs before a trial can be pruned
    min_resource: int = Field(default=1, gt=0)  # hyperband
    reduction_factor: int = Field(default=3, gt=1)  # hyperband


class DataConfig(_Strict):
    source: str | None = None  # dataset name, IDX directory or CSV file; None: MNIST
    data_dir: str | None = None
    val_size: int = Field(default=10_000, gt=0)
    train_size: int | None = Field(default=None, gt=0)
    split_seed: int = Field(default=0, ge=0)
    verify_checksums: bool = True


class TrainingConfig(_Strict):
    max_epochs: int = Field(default=8, gt=0)
    snapshot_steps: list[int] = Field(default=[10, 100, 1000])


class Settings(_Strict):
    """Everything one run needs; `configs/default.yaml` spells out the same defaults."""

    study: StudyConfig = StudyConfig()
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    space: SpaceConfig = SpaceConfig()
    baseline: BaselineConfig = BaselineConfig()
    export: bool = True

    @model_validator(mode="after")
    def _baseline_inside_space(self) -> Settings:
        if not self.baseline.enabled:
            return self
        if "linear" not in self.space.classifier:
            raise ValueError("baseline.enabled needs 'linear' in space.classifier (or set it to false)")
        checks = [
            ("learning_rate", self.baseline.learning_rate, self.space.learning_rate),
            ("weight_decay", self.baseline.weight_decay, self.space.weight_decay),
        ]
        for key, value, span in checks:
            if not span.low <= value <= span.high:
                raise ValueError(f"baseline.{key} {value} lies outside space.{key} [{span.low}, {span.high}]")
        if self.baseline.optimizer not in self.space.optimizer:
            raise ValueError(f"baseline.optimizer {self.baseline.optimizer!r} is not in space.optimizer")
        if self.baseline.batch_size not in self.space.batch_size:
            raise ValueError(f"baseline.batch_size {self.baseline.batch_size} is not in space.batch_size")
        return self


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against configs/default.yaml)"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    return f"invalid config {origin}: {key + ': ' if key else ''}{message}"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a YAML config file; unreadable or non-mapping files are ConfigErrors."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing file to --config") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read ({error})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults <- config file <- command-line overrides (nested dicts), validated together."""
    raw = read_config_file(path) if path is not None else {}
    origin = f"in {path}" if path is not None else "value"
    try:
        return Settings.model_validate(_merge(raw, overrides or {}))
    except ValidationError as error:
        raise ConfigError(_describe(error, origin)) from None


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="json")
