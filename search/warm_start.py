"""--warm-start STUDY: a new study first runs the best parameter sets of an earlier study.

The earlier study is read, read-only, before the new one is created (`read_warm_start`), so a
missing study or one with nothing usable is a one-line error that creates nothing. Its best k
distinct parameter sets that lie inside this run's space are enqueued after the linear baseline
and in place of our first DNN (`enqueue_warm_start`), at the base epoch budget: they are
re-measured here, on this run's data and seeds, and a winner among them is promoted as any
other. TPE counts them among its start-up trials, so it models from them at once.

The study records where its first trials came from (`record.WARM_START`, storage URL redacted);
re-running the same command resumes it, and a different --warm-start on an existing study is
refused: its first trials are long run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_modules.errors import UserInputError
from search import record
from search.redaction import redact
from search.settings import Settings, SpaceConfig, WarmStartConfig
from search.space import CLASSIFIER_PARAM, baseline_params, params_problem


class WarmStartError(UserInputError):
    """A --warm-start that cannot seed this run: no such study, nothing inside the space, a clash."""


@dataclass(frozen=True)
class WarmStart:
    """What a new study enqueues first, and where it came from."""

    study: str
    storage: str  # redacted
    trials: tuple[int, ...]  # the source trials' numbers, best first
    params: tuple[dict[str, Any], ...]
    skipped: int  # best trials left out: outside this run's space
    skipped_why: str | None  # the first one's reason

    @property
    def has_dnn(self) -> bool:
        return any(p.get(CLASSIFIER_PARAM) == "dnn" for p in self.params)

    def as_record(self) -> dict[str, Any]:
        return {"study": self.study, "storage": self.storage, "trials": list(self.trials)}

    def describe(self) -> str:
        numbers = ", ".join(str(n) for n in self.trials)
        line = f"warm start: runs first the {len(self.params)} best parameter set(s) of study {self.study!r} in {self.storage} (its trials {numbers})"
        if self.skipped:
            line += f"; left out {self.skipped} set(s) outside this run's space (first: {self.skipped_why})"
        return line


def best_parameter_sets(
    trials: Sequence[FrozenTrial], k: int, space: SpaceConfig, exclude: Sequence[dict[str, Any]] = (),
) -> tuple[list[FrozenTrial], list[str]]:
    """The best `k` completed trials with distinct parameters inside `space` (highest value
    first, the lower number among equals), and why each one ranked above the last of them was
    left out (outside `space`).

    A promotion and the trial it retrained share parameters: the set is taken once; sets in
    `exclude` (this run's baseline, queued anyway) are not taken.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    complete.sort(key=lambda t: (-float(t.value), t.number))  # type: ignore[arg-type]
    chosen: list[FrozenTrial] = []
    skipped: list[str] = []
    seen = {tuple(sorted(params.items())) for params in exclude}
    for trial in complete:
        key = tuple(sorted(trial.params.items()))
        if key in seen:
            continue
        seen.add(key)
        problem = params_problem(dict(trial.params), space)
        if problem:
            skipped.append(f"trial {trial.number}: {problem}")
            continue
        chosen.append(trial)
        if len(chosen) == k:
            break
    return chosen, skipped


def _same_database(url: str, other: str) -> bool:
    from search.storage import sqlite_path

    path, other_path = sqlite_path(url), sqlite_path(other)
    if path is not None and other_path is not None:
        return path.resolve() == other_path.resolve()
    return url == other


def _study_exists(name: str, url: str) -> bool:
    """Whether this run's study is already there (read-only; a storage that cannot be opened yet
    holds none: the run itself creates it, or reports why it cannot)."""
    from search.storage import StorageError, open_existing_storage
    from search.studies import study_names

    try:
        return name in study_names(open_existing_storage(url, read_only=True))
    except StorageError:
        return False


def read_warm_start(settings: Settings, url: str) -> WarmStart | None:
    """The parameter sets `settings.warm_start` names, read from the earlier study (read-only), or
    None without one; WarmStartError (or StorageError) when it cannot seed this run.

    When this run's study exists already, only where it came from is returned (no parameter
    sets): resuming needs the earlier study no more, it may be gone.
    """
    config: WarmStartConfig = settings.warm_start
    if config.study is None:
        return None
    from search.storage import check_storage_url, open_existing_storage
    from search.studies import load_existing_study

    source_url = check_storage_url(config.storage) if config.storage is not None else url
    if config.study == settings.study.name and _same_database(source_url, url):
        raise WarmStartError(
            f"--warm-start {config.study!r} names the study this run creates or resumes; name an earlier study (or pass --study-name)"
        )
    if _study_exists(settings.study.name, url):
        return WarmStart(config.study, redact(source_url), (), (), 0, None)
    budget = min(config.trials, settings.study.trials - int(settings.baseline.enabled))
    if budget < 1:
        raise WarmStartError(f"--trials {settings.study.trials} leaves no trial for the warm start after the baseline; raise --trials")
    source_storage = open_existing_storage(source_url, read_only=True, flag="--warm-start-storage", one_read=True)
    source = load_existing_study(config.study, source_storage, flag="--warm-start")
    if source.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise WarmStartError(f"study {config.study!r} does not maximise one objective; --warm-start takes a study that maximises accuracy")
    exclude = [baseline_params(settings.baseline)] if settings.baseline.enabled else []  # queued anyway
    chosen, skipped = best_parameter_sets(source.get_trials(deepcopy=False), budget, settings.space, exclude)
    if not chosen:
        why = f" ({skipped[0]})" if skipped else ""
        raise WarmStartError(
            f"study {config.study!r} has no completed trial inside this run's space{why}; run it longer, or widen the space"
        )
    return WarmStart(
        config.study, redact(source_url), tuple(t.number for t in chosen), tuple(dict(t.params) for t in chosen),
        len(skipped), skipped[0] if skipped else None,
    )


def enqueue_warm_start(study: optuna.Study, warm: WarmStart) -> None:
    """Queue the parameter sets (a new study's first trials after the baseline) and record whence."""
    for params in warm.params:
        study.enqueue_trial(params, skip_if_exists=True)
    study.set_user_attr(record.WARM_START, warm.as_record())


def require_same_warm_start(study: optuna.Study, warm: WarmStart | None) -> None:
    """An existing study resumes with the warm start it was created with, or without one; a
    different one is refused before anything is written (its first trials ran long ago)."""
    if warm is None:
        return
    recorded = study.user_attrs.get(record.WARM_START)
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded.get("study") == warm.study and _same_database(str(recorded.get("storage")), warm.storage):
        return
    was = (f"was warm-started from study {recorded.get('study')!r} in {recorded.get('storage')}" if recorded  # stored redacted
           else "was created without --warm-start")
    raise WarmStartError(
        f"study {study.study_name!r} already exists and {was}; --warm-start seeds a new study: pass a new --study-name, "
        "or drop --warm-start to resume it"
    )
