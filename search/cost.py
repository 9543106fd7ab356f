"""A cost-aware search: a DNN far costlier than the study's typical one is pruned before it trains.

An MLP's epoch costs in proportion to its multiply-adds per image, and the space spans 64 to
1,024 units over 1 to 3 layers, so its costliest nets take tens of times the epochs' seconds of
its cheapest. `space.max_cost_ratio` bounds that: a DNN trial whose multiply-adds exceed the
ratio times the median of the study's tried DNNs (finished, not promotions, not themselves over
the bound) is pruned with no epoch run and `over_cost` recorded; enqueued trials (the first DNN,
a warm start, promotions, retries) are never bounded. A pruned trial counts toward the trial
budget, as every pruned trial does. TPE ranks a pruned trial with no
reported epoch below every other, so it learns to leave that corner of the space. The cost is a
pure function of the parameters, never a timing, so the same seed gives the same trials.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_modules.data.format import N_CLASSES, N_PIXELS
from lightning_modules.network import multiply_adds
from search import record
from search.optuna_compat import enqueued
from search.space import CLASSIFIER_PARAM, hidden_units_of


def net_cost(params: Mapping[str, object]) -> int | None:
    """Multiply-adds per image of a trial's network, from its parameters (as `suggest_params`
    names them); None for a linear trial, which the bound leaves alone."""
    if params.get(CLASSIFIER_PARAM) != "dnn":
        return None
    return multiply_adds(N_PIXELS, hidden_units_of(params), N_CLASSES)


def median_cost(trials: Iterable[FrozenTrial]) -> float | None:
    """The median multiply-adds of the DNNs tried so far; None before the first has finished."""
    costs = [
        cost
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and record.promoted_from(t) is None
        and record.OVER_COST not in t.user_attrs
        and (cost := net_cost(t.params)) is not None
    ]
    return statistics.median(costs) if costs else None


def cost_ratio(params: Mapping[str, object], trials: Iterable[FrozenTrial]) -> float | None:
    """How many times the median tried DNN's multiply-adds this trial's net costs (None: linear,
    or no DNN has finished yet)."""
    cost, median = net_cost(params), median_cost(trials)
    return None if cost is None or median is None else cost / median


def prune_if_over_cost(trial: optuna.Trial, max_ratio: float | None) -> None:
    """Raise TrialPruned, with `over_cost` recorded, when the trial's net exceeds `max_ratio` times
    the median tried DNN's cost. Only the sampler's choices are bounded: an enqueued trial (the
    first DNN, a warm start the user asked for, a promotion of a winner, a retry whose epochs
    are in a checkpoint) always trains."""
    if max_ratio is None or enqueued(trial) or record.retried_from(trial) is not None:  # a retry carries its parameters, not as "fixed"
        return
    ratio = cost_ratio(trial.params, trial.study.get_trials(deepcopy=False))
    if ratio is not None and ratio > max_ratio:
        record.write(trial, record.OVER_COST, round(ratio, 2))
        raise optuna.TrialPruned(f"trial {trial.number}'s net costs {ratio:.1f}x the median tried DNN's (space.max_cost_ratio {max_ratio:g})")
