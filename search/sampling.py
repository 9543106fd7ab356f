"""The sampler of a study, seeded per trial: trial n samples with a seed drawn from (seed, n).

Seeding by trial number, not by process, makes the search reproducible from the seed alone
(trial n samples as it did in another run with the same history: a stop and resume changes the
history, since the interrupted trial is retried under a new number, so later trials differ) and
keeps two processes that open one study at the same moment (several machines, or two runs
started together) from drawing identical parameters: no two of them ever sample the same
trial number.

Two seed schemes exist. Studies created since the scheme was recorded (study attribute
`seed_scheme` = "independent") draw trial n's seed from numpy's `SeedSequence([seed, n])`, so
the searches of seeds 0 and 1 are independent. Older studies (no attribute) used seed + n, which
made seed 1's trial n a copy of seed 0's trial n + 1; they resume with that scheme unchanged.
A warm-started study salts the sequence (`warm_scheme`), or it replays its source's random trials.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from lightning_modules.errors import UserInputError
from search import record
from search.settings import MAX_SEED, SamplerConfig

OFFSET = "offset"  # trial n: seed + n (studies created before the scheme was recorded)
INDEPENDENT = "independent"  # trial n: SeedSequence([seed, n]); every new study not warm-started
SEED_SCHEMES = (OFFSET, INDEPENDENT)
WARM = re.compile(r"warm-([0-9a-f]{8})")  # trial n: SeedSequence([seed, n, salt]); a warm-started study (`warm_scheme`)


def warm_scheme(source: str) -> str:
    """A warm-started study's scheme, salted by where its sets came from: with the source's seed
    and scheme it drew the source's random trials again, trial for trial (its trial 3 was the
    source's trial 3, parameters, seed and values), and a chain of warm starts would too."""
    return f"warm-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


def trial_seed(seed: int, trial_number: int, scheme: str = INDEPENDENT) -> int:
    """The seed trial `trial_number` samples and trains with (below 2**32, numpy's limit)."""
    if scheme == OFFSET:
        return (seed + trial_number) % (2 * (MAX_SEED + 1))
    salt = WARM.fullmatch(scheme)
    if scheme != INDEPENDENT and salt is None:
        raise ValueError(f"unknown seed scheme {scheme!r}; known: {', '.join(SEED_SCHEMES)}, warm-<8 hex digits>")
    return int(np.random.SeedSequence([seed, trial_number, *([int(salt[1], 16)] if salt else [])]).generate_state(1)[0])


class SeedSchemeError(UserInputError):
    """The study records a seed scheme this version does not know (a newer version created it)."""


def seed_scheme(study: optuna.Study) -> str:
    """The study's recorded seed scheme; a study without one predates it and used seed + n."""
    scheme = study.user_attrs.get(record.SEED_SCHEME, OFFSET)
    if scheme not in SEED_SCHEMES and not (isinstance(scheme, str) and WARM.fullmatch(scheme)):
        raise SeedSchemeError(
            f"study {study.study_name!r} records seed scheme {scheme!r}, which this version of mnist-search does not know "
            f"(it knows {', '.join(SEED_SCHEMES)}); resume it with the version that created it"
        )
    return str(scheme)


class TrialSeededSampler(BaseSampler):
    """Delegates to `factory(trial_seed(seed, n, scheme))`, built afresh before trial n.

    `open_study` sets `scheme` to the study's recorded one once it has loaded the study (the
    sampler cannot read it itself: Hyperband hands `before_trial` a filtered study).
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int, scheme: str = INDEPENDENT) -> None:
        self.factory = factory
        self.seed = seed
        self.current = factory(seed)
        self.scheme = scheme

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.current = self.factory(trial_seed(self.seed, trial.number, self.scheme))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.current.reseed_rng()


def _tpe(config: SamplerConfig, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=config.n_startup_trials, multivariate=config.multivariate, group=config.multivariate,
        constant_liar=config.constant_liar,
    )


def _gp(config: SamplerConfig, seed: int) -> optuna.samplers.GPSampler:
    """Optuna's GP models the parameters every completed trial shares (GPSampler reads completed
    trials only): with the linear baseline among them, classifier, learning rate, optimizer,
    weight decay and batch size. A DNN's layers, units and dropout are not shared, and before
    `n_startup_trials` trials have completed nothing is modelled; TPE samples those instead of
    Optuna's default random sampler."""
    return optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=config.n_startup_trials, independent_sampler=_tpe(config, seed), warn_independent_sampling=False,
    )


def build_sampler(config: SamplerConfig, seed: int) -> TrialSeededSampler:
    """The configured sampler (TPE, random or GP), seeded per trial from the study's seed."""
    if config.name == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if config.name == "gp":
        return TrialSeededSampler(lambda s: _gp(config, s), seed)
    return TrialSeededSampler(lambda s: _tpe(config, s), seed)
