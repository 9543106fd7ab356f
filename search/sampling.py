"""The sampler of a study, seeded per trial: trial n samples with seed + n.

Seeding by trial number, not by process, makes the search reproducible from the seed alone
(a resumed study samples trial n as an uninterrupted one would, given the same history) and
keeps two processes that open one study at the same moment (several machines, or two runs
started together) from drawing identical parameters: no two of them ever sample the same
trial number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from search.settings import MAX_SEED, SamplerConfig


def trial_seed(seed: int, trial_number: int) -> int:
    """The seed trial `trial_number` samples with (kept below 2**32, numpy's limit)."""
    return (seed + trial_number) % (2 * (MAX_SEED + 1))


class TrialSeededSampler(BaseSampler):
    """Delegates to `factory(trial_seed(seed, n))`, built afresh before trial n."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self.factory = factory
        self.seed = seed
        self.current = factory(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.current = self.factory(trial_seed(self.seed, trial.number))
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


def build_sampler(config: SamplerConfig, seed: int) -> TrialSeededSampler:
    """The configured sampler (TPE or random), seeded per trial from the study's seed."""
    if config.name == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return TrialSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=config.n_startup_trials), seed)
