"""What a study was created with, and the refusal to continue it (or export it) on anything else.

A study records its data's identity (`search.data.DataIdentity`) and its settings when it is
created. `require_same_data` refuses to go on, or to export, on data with another checksum; a
study created before identities were recorded is compared with the data its recorded settings
load, so it never adopts whatever data the next run brings. `require_same_settings` refuses a
resume whose trial-defining settings (`search.settings.TRIAL_DEFINING`: seed, sampler, pruner,
epochs, space, ...) differ from the recorded ones: Optuna failed a trial on a changed choice
list with a traceback, and any other change mixed two searches in one study without a word.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from lightning_modules.errors import DataError, UserInputError
from search.data import DataIdentity, check_data, data_identity, load_split
from search.record import DATA, SETTINGS, study_settings
from search.settings import SHARED_BY_RUNS, TRIAL_DEFINING
from search.space import CATEGORICAL_FIELDS

SHOWN_DIFFERENCES = 3
SHOWN_CHARS = 40  # of each value, around where the two first differ


def recorded_identity(study: optuna.Study) -> DataIdentity | None:
    """The identity the study recorded, or None for a study created before identities existed."""
    raw = study.user_attrs.get(DATA)
    try:
        return DataIdentity(**raw) if isinstance(raw, dict) else None
    except TypeError:
        return None


def identity_from_settings(study: optuna.Study) -> DataIdentity | None:
    """For a study created before identities were recorded: the identity of the data its recorded
    settings describe (source, data folder, sizes, split seed), read the way its runs read it; None
    for a study that recorded no settings either. A DataError when that data cannot be read, since
    then nothing says which data the study's trials trained on."""
    if not study.user_attrs.get(SETTINGS):
        return None
    config = study_settings(study).data
    try:
        source = check_data(config)
        if source.download:  # never fetch data only to compare it
            raise DataError(f"{source.path} holds no {source.spec.name if source.spec else 'data'} files")
        split = load_split(config, source)
    except DataError as error:
        raise DataError(
            f"study {study.study_name!r} recorded no data identity, and the data its recorded settings name cannot be read "
            f"to compare with this run's ({str(error)[:200]}); restore that data, or use another --study-name"
        ) from None
    return data_identity(split, source)


def require_same_data(
    study: optuna.Study, identity: DataIdentity, settings: Mapping[str, Any] | None = None, doer: str = "run",
) -> None:
    """Refuse, in one line, to continue or export a study on data other than its own (`doer`: "run"
    or "export", the command the line names as loading the other data).

    A study without a recorded identity is compared with the data its recorded settings load, so
    it never adopts whatever data the next run brings. With this run's `settings` (as stored), a
    data setting that differs from the study's is named: a config's `split_seed: 4` gave the same
    source and sizes and only another checksum, and the line named flags that could not fix it.
    """
    recorded, whose = recorded_identity(study), ""
    if recorded is None:
        recorded, whose = identity_from_settings(study), " (as its recorded settings read it)"
    if recorded is None or recorded.sha256 == identity.sha256:
        return
    fix = "data options (--data, --data-dir, --train-size, --val-fraction, --val-size)"
    before = study.user_attrs.get(SETTINGS)
    if settings is not None and isinstance(before, Mapping) and isinstance(before.get("data"), Mapping):
        old, new = flat(before["data"], "data."), flat(settings.get("data", {}), "data.")
        differ = [f"{key} {_shown_pair(old[key], new.get(key))[0]} (this run: {_shown_pair(old[key], new.get(key))[1]})"
                  for key in sorted(old) if key not in ("data.source", "data.data_dir") and old[key] != new.get(key)]
        fix = f"data settings ({'; '.join(differ[:3])})" if differ else fix
    raise DataError(
        f"study {study.study_name!r} was trained on {recorded.source}{whose} ({recorded.sizes()}, sha256 {recorded.sha256[:12]}) "
        f"but this {doer} loads {identity.source} ({identity.sizes()}, sha256 {identity.sha256[:12]}); pass the study's {fix}, "
        "or another --study-name"
    )


def flat(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys ("space.learning_rate.low"); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown_pair(old: Any, new: Any) -> tuple[str, str]:
    """Two differing values in JSON, each cut to about 40 characters around where they first
    differ (two long lists cut at their start read the same)."""
    a, b = json.dumps(old), json.dumps(new)
    if len(a) <= SHOWN_CHARS and len(b) <= SHOWN_CHARS:
        return a, b
    common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, common - SHOWN_CHARS // 2)

    def cut(text: str) -> str:
        return ("..." if start else "") + text[start:start + SHOWN_CHARS] + ("..." if len(text) > start + SHOWN_CHARS else "")

    return cut(a), cut(b)


def sampled_choices(study: optuna.Study) -> dict[str, list[Any]]:
    """The choice lists the study's trials were sampled from, by settings key ("space.optimizer"):
    what Optuna holds a later trial to, whatever a record says (a resume of an older version that
    crashed on a changed list had recorded that list)."""
    found: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        for param, field in CATEGORICAL_FIELDS.items():
            distribution = trial.distributions.get(param)
            if isinstance(distribution, CategoricalDistribution):
                found.setdefault(f"space.{field}", list(distribution.choices))  # the first, as Optuna checks against
    return found


def settings_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], sampled: Mapping[str, list[Any]] | None = None) -> list[str]:
    """The trial-defining settings whose recorded value (or, for a choice list, the one the trials
    were `sampled` from) differs from this run's, one phrase each. A key the study did not record
    (a setting newer than the study) is not compared."""
    old, new = flat(recorded) | dict(sampled or {}), flat(current)
    return [
        "{} {} (this run: {})".format(key, *_shown_pair(old[key], value))
        for key, value in sorted(new.items())
        if any(key == p or key.startswith(p + ".") for p in TRIAL_DEFINING + SHARED_BY_RUNS) and key in old and old[key] != value
    ]


def require_same_settings(study: optuna.Study, current: Mapping[str, Any]) -> None:
    """Refuse, in one line, to resume `study` with other trial-defining settings than it recorded."""
    recorded = study.user_attrs.get(SETTINGS)
    differences = settings_differences(recorded if isinstance(recorded, Mapping) else {}, current, sampled_choices(study))
    if not differences:
        return
    more = len(differences) - SHOWN_DIFFERENCES
    listed = "; ".join(differences[:SHOWN_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")
    raise UserInputError(
        f"study {study.study_name!r} records other settings than this run's: {listed}; resume it with the "
        "study's values shown first, or pass a new --study-name"
    )
