"""The study and trial record: every attribute the project writes and reads, with typed helpers.

User attributes are what optuna-dashboard shows in the trial table, so they stay short (seeds,
epochs, seconds, sizes); machine-only values (the per-epoch history, the hyperparameters, the
checkpoint key, the fit arguments, the model's artifact id) are system attributes. Readers look
in both, so studies written before the split still read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from lightning_modules.metric_names import MONITOR
from search.optuna_compat import retry_link, set_trial_system_attr, trial_system_attrs
from search.settings import RECORDED, Settings

AnyTrial = optuna.Trial | FrozenTrial

# ---------------------------------------------------------------- study attributes

SETTINGS = "settings"  # user attr: the run's settings as a dict, secrets redacted
DATA = "data"  # user attr: the identity of the data the study trains on (search.data.DataIdentity)
OBJECTIVE_NAME = "val_accuracy"  # the objective's name (Study.set_metric_names), shown by optuna-dashboard
UID = "uid"  # user attr: a random id set at creation; names the study's checkpoint folder, so a
#              new study with the name of a deleted one never resumes the old one's checkpoints
SEED_SCHEME = "seed_scheme"  # user attr: how trial n's seed derives from the study seed
#              (search/sampling.py), set at creation; absent: seed + n, the scheme before it was recorded
WARM_START = "warm_start"  # user attr: the study and trial numbers a new study's first trials came from
#              (search/warm_start.py), set at creation, storage URL redacted
ARTIFACT_STORE = "artifact_store"  # user attr: the shared store's location (search/artifact_stores.py),
#              set at creation; absent: each machine keeps artifacts in its own artifacts/ folder

# ---------------------------------------------------------------- trial user attributes (shown)

SEED_SAMPLER = "seed_sampler"
SEED_TRAINING = "seed_training"
SEED_SPLIT = "seed_split"
EPOCHS_RUN = "epochs_run"
TRAIN_SECONDS = "train_seconds"
PARAM_COUNT = "param_count"
RESUMED_FROM_EPOCH = "resumed_from_epoch"
SURPLUS = "surplus"  # set on a trial that stepped aside before training (the budget was spent)
OVER_COST = "over_cost"  # set on a DNN pruned before training: its multiply-adds over the median tried DNN's (search/cost.py)
MAX_EPOCHS = "max_epochs"  # input: set on an enqueued trial (the baseline, a promotion) to train it for other epochs
TRAINED_ON = "trained_on"  # {"device": "cpu", "threads": N} or {"device": "cuda", "gpu": name}: what
#              the values depend on besides the record (lightning_modules.device.placement)
PROMOTED_FROM = "promoted_from"  # input: the base-budget trial a promotion retrains longer (search/promotion.py)

# ---------------------------------------------------------------- trial system attributes (hidden)

HISTORY = "history"  # one row per epoch (lightning_modules.metric_names.HISTORY_KEYS)
HYPERPARAMS = "hyperparams"  # HyperParams.to_dict()
CHECKPOINT_KEY = "checkpoint_key"  # the first attempt's number: every retry resumes its file
FIT = "fit"  # the arguments `fit` ran with: max_epochs, target_accuracy, snapshot_steps
MODEL_ARTIFACT = "model_artifact_id"  # the stored weights of a new best trial of its classifier
MODEL_TRIAL = "trial"  # in those weights' metadata: the trial number they belong to (absent in older files)
# a retry's link to the attempts it repeats is Optuna's (optuna_compat.retry_attrs, retry_link)
DEATHS = "deaths"  # how many earlier attempts died (heartbeat gone stale), stop requests not counted
DIED = "died"  # why the attempt ended without a result: INTERRUPTED or DISK_ERROR
INTERRUPTED = "interrupted"  # a stop request (Ctrl-C, SIGTERM) between two batches
DISK_ERROR = "disk error"  # a full or read-only disk (search/failures.py)
STORAGE_ERROR = "storage error"  # the study's database failed under the trial (locked, connection dropped)
CHECKPOINT_SECONDS = "checkpoint_seconds"  # this attempt's seconds copying checkpoints to the artifact store
EXPORT_SUPERSEDED = "export_superseded"  # on a trial an earlier export linked its files to, once a better trial's export is linked

SYSTEM_KEYS = (HISTORY, HYPERPARAMS, CHECKPOINT_KEY, FIT, MODEL_ARTIFACT, CHECKPOINT_SECONDS)


def read(trial: AnyTrial, key: str, default: Any = None) -> Any:
    """An attribute of the record, wherever it is stored (system first, then user)."""
    system = trial_system_attrs(trial)
    if key in system:
        return system[key]
    return trial.user_attrs.get(key, default)


def read_all_system(trial: AnyTrial) -> dict[str, Any]:
    """Every system attribute of a trial (Optuna's and ours), e.g. to copy them to a retry."""
    return dict(trial_system_attrs(trial))


def write(trial: optuna.Trial, key: str, value: Any) -> None:
    """Store an attribute where the record keeps it: hidden keys as system attributes."""
    if key in SYSTEM_KEYS:
        set_trial_system_attr(trial, key, value)
    else:
        trial.set_user_attr(key, value)


def history(trial: AnyTrial) -> list[dict[str, float]]:
    return list(read(trial, HISTORY) or [])


def epochs_run(trial: AnyTrial) -> int:
    return int(read(trial, EPOCHS_RUN) or len(history(trial)))


def last_value(trial: FrozenTrial) -> float:
    """The trial's value, or its last reported validation accuracy, or NaN."""
    if trial.value is not None:
        return float(trial.value)
    rows = history(trial)
    return float(rows[-1][MONITOR]) if rows else float("nan")


def is_surplus(trial: AnyTrial) -> bool:
    return bool(trial.user_attrs.get(SURPLUS))


def record_epochs(trial: optuna.Trial, rows: list[dict[str, float]]) -> None:
    """After every validation: the history so far, so a pruned or killed trial keeps it."""
    write(trial, HISTORY, rows)
    write(trial, EPOCHS_RUN, len(rows))


@dataclass(frozen=True)
class TrialSeeds:
    sampler: int
    training: int
    split: int


def read_seeds(trial: AnyTrial) -> TrialSeeds | None:
    """The seeds a trial recorded, or None for a trial that never started training."""
    values = [read(trial, key) for key in (SEED_SAMPLER, SEED_TRAINING, SEED_SPLIT)]
    return None if any(v is None for v in values) else TrialSeeds(*(int(v) for v in values))


def record_start(
    trial: optuna.Trial, seeds: TrialSeeds, checkpoint_key: int, hyperparams: dict[str, Any], fit: dict[str, Any], trained_on: dict[str, Any]
) -> None:
    """What any trial needs to be re-run exactly, written before training starts."""
    for key, value in (
        (SEED_SAMPLER, seeds.sampler), (SEED_TRAINING, seeds.training), (SEED_SPLIT, seeds.split),
        (CHECKPOINT_KEY, checkpoint_key), (HYPERPARAMS, hyperparams), (FIT, fit), (TRAINED_ON, trained_on),
    ):
        write(trial, key, value)


def record_result(trial: optuna.Trial, train_seconds: float, param_count: int) -> None:
    write(trial, TRAIN_SECONDS, round(train_seconds, 3))
    write(trial, PARAM_COUNT, param_count)


def first_attempt(trial: AnyTrial) -> int | None:
    """The number of the first attempt a retry (of any depth) repeats, or None for a first attempt."""
    return retry_link(trial)[0]


def retried_from(trial: AnyTrial) -> int | None:
    """The attempt this trial retries (the latest one), or None for a first attempt."""
    first, chain = retry_link(trial)
    return chain[-1] if chain else first


def earlier_attempts(trial: AnyTrial) -> list[int]:
    """Every attempt this trial retries, oldest first ([] for a first attempt)."""
    return retry_link(trial)[1]


def promoted_from(trial: AnyTrial) -> int | None:
    """The trial whose parameters this one trains longer (a promotion: search/promotion.py), or None."""
    value = trial.user_attrs.get(PROMOTED_FROM)
    return None if value is None else int(value)


def study_settings(study: optuna.Study) -> Settings:
    """The settings a study was run with, as the runner recorded them (defaults if it recorded none)."""
    from pydantic import ValidationError

    from lightning_modules.errors import UserInputError

    raw = study.user_attrs.get(SETTINGS)
    try:
        return Settings.model_validate(raw, context=RECORDED) if raw else Settings()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"  # a check across sections names no field
        raise UserInputError(
            f"study {study.study_name!r} records settings this version cannot read ({where}: {first['msg'][:100]})"
        ) from None
