"""Run settings: every default and its description, in one typed, strict model.

`configs/default.yaml` spells out the same defaults (a test keeps the two equal); the
command-line flags and their help are generated from these fields (search/options.py).
Validation is strict: unknown keys, wrong types, inverted ranges and out-of-bound values are
errors, so a typo never silently falls back to a default. Every count, size and length has an
upper bound, checked before any work it would cost.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from search.paths import DEFAULT_DB
from search.redaction import shown_name
from search.settings_space import (
    BaselineConfig,
    FirstDnnConfig,
    SpaceConfig,
    Strict,
    choices_problem,
    each_listed_once,
    files_not_urls,
    first_dnn_problem,
    ints_as_floats,
    outside_space,
)

MAX_SEED = 2**31 - 1  # older studies add the trial number to it (search/sampling.py); numpy seeds stop at 2**32
MAX_NAME_LENGTH = 100
MAX_URL_LENGTH = 2000  # a storage URL, from any command (search/storage_url.py checks the ones given as flags)
MAX_WORKERS = 64
MAX_GPU_INDEX = 4095  # CUDA numbers a machine's GPUs from 0; no machine has this many
MAX_SNAPSHOTS = 20
# Validation context for settings a study recorded: checks added after it was made (one that only
# saves a user from a setting with no effect) must not strand its trials, which export reads back.
RECORDED: dict[str, bool] = {"recorded": True}


def _name_problem(name: str, info: ValidationInfo | None = None) -> str | None:
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "must not contain control characters (newlines, NUL, ...)"
    if name != name.strip():
        return "must not start or end with white space"
    recorded = info is not None and info.context == RECORDED  # a name already stored keeps working
    if shown_name(name) != name and not recorded:  # a storage URL in a name's place: the study would carry its password
        return "holds a URL with a password; pass storage URLs with --storage (or --warm-start-storage), names here"
    return None


class StudyConfig(Strict):
    name: str = Field(default="mnist", min_length=1, max_length=MAX_NAME_LENGTH, description="study to create or resume")
    storage: str | None = Field(
        default=None, min_length=1, max_length=MAX_URL_LENGTH,
        description=f"storage URL: sqlite:///file.db or postgresql://user@host/db (null: {DEFAULT_DB})",
    )
    artifact_store: str | None = Field(
        default=None, min_length=1, max_length=1024,
        description="where checkpoints and the best weights go, for every machine: a shared folder (e.g. an NFS mount) or "
        "s3://bucket/prefix; recorded on the study (null: the study's, else artifacts/ under the run folder)",
    )
    trials: int = Field(default=100, gt=0, le=100_000, description="total budget of finished trials in the study, counting earlier runs and promotions")
    timeout: float | None = Field(default=None, gt=0, le=365 * 86400, description="start no new trial after this many seconds of this run (null: no limit)")
    target_accuracy: float | None = Field(
        default=0.95, gt=0, le=1, description="stop once a completed trial reaches this validation accuracy; 'none' spends the whole budget",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="trial n samples and trains with a seed drawn from (seed, n)")
    workers: int = Field(default=1, gt=0, le=MAX_WORKERS, description="worker processes on this machine sharing the study")
    heartbeat_seconds: int = Field(default=5, gt=0, le=3600, description="a running trial proves it is alive this often")
    stale_after_seconds: int = Field(default=20, gt=0, le=86400, description="a trial silent this long is failed and retried")

    _ints_are_floats = field_validator("timeout", "target_accuracy", mode="before")(ints_as_floats)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str, info: ValidationInfo) -> str:
        problem = _name_problem(value, info)
        if problem:
            raise ValueError(f"the study name {problem}")
        return value

    @model_validator(mode="after")
    def _stale_after_heartbeats(self) -> StudyConfig:
        if self.stale_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(f"stale_after_seconds ({self.stale_after_seconds}) must be at least twice heartbeat_seconds "
                             f"({self.heartbeat_seconds}), or live trials would be failed as stale")
        return self


MAX_WARM_START_TRIALS = 100


class WarmStartConfig(Strict):
    """Seed a new study with the best parameter sets of an earlier one (search/warm_start.py)."""

    study: str | None = Field(
        default=None, min_length=1, max_length=MAX_NAME_LENGTH,
        description="earlier study whose best parameter sets a new study runs first (null: none)",
    )
    storage: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH, description="storage URL of that study (null: this run's storage)")
    trials: int = Field(default=5, gt=0, le=MAX_WARM_START_TRIALS, description="how many of its best distinct parameter sets to enqueue")

    @field_validator("study")
    @classmethod
    def _printable_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        problem = None if value is None else _name_problem(value, info)
        if problem:
            raise ValueError(f"the warm-start study name {problem}")
        return value

    @model_validator(mode="after")
    def _storage_only_with_a_study(self) -> WarmStartConfig:
        if self.storage is not None and self.study is None:
            raise ValueError("warm_start.storage names where the earlier study is; give the study too (--warm-start STUDY)")
        return self


class SamplerConfig(Strict):
    name: Literal["tpe", "random", "gp"] = Field(
        default="tpe", description="tpe | random | gp (Optuna's GPSampler; parameters only DNNs have are sampled by TPE)",
    )
    n_startup_trials: int = Field(default=5, ge=0, le=10_000, description="trials before TPE starts modelling (gp: completed trials, TPE sampling until then)")
    multivariate: bool = Field(default=False, description="tpe: model the parameters jointly, one group per classifier's parameters")
    constant_liar: bool = Field(default=True, description="tpe: count other workers' running trials as bad, so workers spread out")


class PrunerConfig(Strict):
    name: Literal["median", "successive_halving", "hyperband", "none"] = Field(
        default="median", description="median | successive_halving (per classifier) | hyperband | none",
    )
    n_startup_trials: int = Field(default=3, ge=0, le=10_000, description="median: completed (not pruned) trials of a classifier before pruning starts")
    n_warmup_steps: int = Field(default=0, ge=0, le=1000, description="median: epochs a trial always runs before it can be pruned")
    min_resource: int = Field(default=1, gt=0, le=1000, description="successive_halving, hyperband: the epoch index (from 0) of the first rung; 1: after 2 epochs")
    reduction_factor: int = Field(default=3, gt=1, le=100, description="successive_halving, hyperband: how many trials each rung keeps one of")


class DataConfig(Strict):
    source: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="mnist, fashion-mnist, a directory of IDX files, or a CSV file (label, 784 pixels) (null: mnist)",
    )
    data_dir: str | None = Field(
        default=None, min_length=1, max_length=4096, description="directory holding the IDX files (null: $MNIST_DATA_DIR, else the user cache)",
    )
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="share of the training rows held out for validation")
    val_size: int = Field(default=10_000, gt=0, le=1_000_000, description="at most this many validation rows")
    train_size: int | None = Field(default=None, gt=0, le=1_000_000, description="train on a stratified subsample of this many rows (null: every training row)")
    split_seed: int = Field(default=0, ge=0, le=MAX_SEED, description="seed of the train/validation split, the same for every trial")
    verify_checksums: bool = Field(default=True, description="refuse IDX files whose MD5 differs from the published one")

    _ints_are_floats = field_validator("val_fraction", mode="before")(ints_as_floats)
    _files_not_urls = field_validator("source", "data_dir")(files_not_urls)


Accelerator = Literal["auto", "cpu", "gpu"]  # lightning_modules.device.ACCELERATORS (a test keeps them equal)
Precision = Literal["32-true", "bf16-mixed"]
FULL_PRECISION: Precision = "32-true"  # no autocast: the arithmetic of the exported float32 model
MAX_TRIAL_EPOCHS = 1000  # no trial trains longer: max_epochs and a promotion's epochs


class TrainingConfig(Strict):
    max_epochs: int = Field(default=8, gt=0, le=MAX_TRIAL_EPOCHS, description="epochs per trial (a promotion trains longer)")
    promote_factor: int | None = Field(
        default=3, ge=2, le=100,
        description=f"a trial that becomes its classifier's best is trained once more with this many times max_epochs (2-100; at most {MAX_TRIAL_EPOCHS} epochs) (null: never)",
    )
    snapshot_steps: list[int] = Field(
        default=[10, 100, 1000], max_length=MAX_SNAPSHOTS, description="optimizer steps at which first-layer weights are kept",
    )
    _each_step_once = field_validator("snapshot_steps")(each_listed_once)  # a new run's only: RECORDED ones load
    accelerator: Accelerator = Field(default="auto", description="auto (a GPU when torch sees one, else the CPU) | cpu | gpu")
    devices: list[int] | None = Field(
        default=None, min_length=1, max_length=MAX_WORKERS, description="GPU indices to train on, e.g. 0,1 (null: every visible GPU)",
    )
    workers_per_device: int = Field(default=1, gt=0, le=MAX_WORKERS, description="worker processes sharing one GPU (--workers at most GPUs x this)")
    precision: Precision = Field(default=FULL_PRECISION, description="32-true | bf16-mixed (bfloat16 autocast: faster on a GPU, other results)")

    @field_validator("snapshot_steps")
    @classmethod
    def _positive_steps(cls, value: list[int]) -> list[int]:
        if any(step < 1 for step in value):
            raise ValueError(f"snapshot steps must be at least 1 (got {value})")
        return value

    @property
    def promote_epochs(self) -> int | None:
        """A promotion's epochs (search/promotion.py): promote_factor x max_epochs, at most the
        ceiling of max_epochs; None when promotion is off or the ceiling leaves nothing to add."""
        if self.promote_factor is None:
            return None
        epochs = min(self.promote_factor * self.max_epochs, MAX_TRIAL_EPOCHS)
        return epochs if epochs > self.max_epochs else None

    @field_validator("devices")
    @classmethod
    def _distinct_indices(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (any(not 0 <= i <= MAX_GPU_INDEX for i in value) or len(set(value)) != len(value)):
            raise ValueError(f"devices must be distinct GPU indices 0-{MAX_GPU_INDEX} (got {value})")
        return value


class Settings(Strict):
    """Everything one run needs; `configs/default.yaml` spells out the same defaults."""

    study: StudyConfig = StudyConfig()
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    space: SpaceConfig = SpaceConfig()
    baseline: BaselineConfig = BaselineConfig()
    first_dnn: FirstDnnConfig = FirstDnnConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    export: bool = Field(default=True, description="export the best model when the study ends")

    @model_validator(mode="after")
    def _baseline_inside_space(self) -> Settings:
        if not self.baseline.enabled:
            return self
        if "linear" not in self.space.classifier:
            raise ValueError("baseline.enabled needs 'linear' in space.classifier (or set it to false)")
        baseline = self.baseline
        problem = outside_space("baseline", {"learning_rate": baseline.learning_rate, "weight_decay": baseline.weight_decay}, self.space)
        problem = problem or choices_problem("baseline", baseline.optimizer, baseline.batch_size, self.space)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _pruner_within_the_epochs(self, info: ValidationInfo) -> Settings:
        """A first rung (or warm-up) past the last epoch never prunes: refused (one at it, only reported, stays
        allowed so older studies resume, with a note: search/trial_loop.py). A new run's settings only (`RECORDED`)."""
        pruner, last = self.pruner, self.training.max_epochs - 1
        if info.context == RECORDED:
            return self
        if pruner.name in ("successive_halving", "hyperband") and pruner.min_resource > last:
            raise ValueError(f"pruner.min_resource {pruner.min_resource} is past the last epoch index ({last}) of training.max_epochs {last + 1}, "
                             f"so {pruner.name} would never prune; raise --max-epochs to at least {pruner.min_resource + 2} or lower it in the config file")
        if pruner.name == "median" and pruner.n_warmup_steps > last:
            raise ValueError(f"pruner.n_warmup_steps {pruner.n_warmup_steps} is past the last epoch index ({last}) of training.max_epochs "
                             f"{self.training.max_epochs}, so the median pruner would never prune; lower it in the config file or raise --max-epochs")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_first_dnn_only_where_it_fits(cls, data: Any) -> Any:
        """Without a first_dnn section, the default one is turned off (and recorded so) where a
        narrowed space excludes it; a first_dnn section the user wrote must fit (below)."""
        if not isinstance(data, dict) or "first_dnn" in data:
            return data
        try:
            space = SpaceConfig.model_validate(data.get("space", {}))
        except ValidationError:
            return data  # reported by the space's own validation
        return {**data, "first_dnn": {"enabled": False}} if first_dnn_problem(FirstDnnConfig(), space) else data

    @model_validator(mode="after")
    def _first_dnn_inside_space(self) -> Settings:
        """Enqueued parameters outside the space would be stored but never sampled near again."""
        problem = first_dnn_problem(self.first_dnn, self.space) if self.first_dnn.enabled else None
        if problem:
            raise ValueError(f"{problem} (or set first_dnn.enabled: false)")
        return self


# The settings that make a study's trials what they are: a resume runs with the ones the study
# was created with (search/study_identity.py), or a study would hold trials of two searches and
# record only the last. The others belong to one run and may change (budget, target, timeout,
# workers, device, storage, snapshots, export); the data and the warm start have checks of their own.
TRIAL_DEFINING = ("study.seed", "sampler", "pruner", "training.max_epochs", "training.promote_factor", "training.precision", "space", "baseline", "first_dnn")
# Checked as those are: a run declaring trials dead after 3 s failed those of a run beating every 15 s.
SHARED_BY_RUNS = ("study.heartbeat_seconds", "study.stale_after_seconds")


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="json")


def field_info(path: tuple[str, ...]) -> tuple[Any, str, type]:
    """(default, description, value type) of the settings field at `path`, e.g. ("study", "trials").

    The type is the annotation without None: `int | None` gives int.
    """
    import types
    import typing

    model: Any = Settings
    for part in path[:-1]:
        model = model.model_fields[part].annotation
    field = model.model_fields[path[-1]]
    kind: Any = field.annotation
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        kind = str
    return field.get_default(call_default_factory=True), field.description or "", kind
