"""The only caller of `trial.suggest_*`: config ranges in, plain hyperparameters out."""

from __future__ import annotations

from collections.abc import Mapping

import optuna

from lightning_modules.hyperparams import HyperParams
from search.settings_space import BaselineConfig, FirstDnnConfig, FloatRange, SpaceConfig

CLASSIFIER_PARAM = "classifier"  # the trial parameter naming its classifier ("linear" or "dnn"), read by the pruner, promotion, cost, ...
CATEGORICAL_FIELDS = {CLASSIFIER_PARAM: "classifier", "optimizer": "optimizer", "batch_size": "batch_size"}  # parameter -> space field


def _suggest_float(trial: optuna.trial.BaseTrial, name: str, span: FloatRange) -> float:
    return trial.suggest_float(name, span.low, span.high, log=span.log)


def suggest_params(trial: optuna.trial.BaseTrial, space: SpaceConfig) -> HyperParams:
    """Suggest one trial's hyperparameters; DNN-only parameters exist only on DNN trials."""
    classifier = trial.suggest_categorical(CLASSIFIER_PARAM, space.classifier)
    learning_rate = _suggest_float(trial, "learning_rate", space.learning_rate)
    optimizer = trial.suggest_categorical("optimizer", space.optimizer)
    weight_decay = _suggest_float(trial, "weight_decay", space.weight_decay)
    batch_size = trial.suggest_categorical("batch_size", space.batch_size)
    hidden: tuple[int, ...] = ()
    dropout = 0.0
    if classifier == "dnn":
        layers = trial.suggest_int("hidden_layers", space.hidden_layers.low, space.hidden_layers.high, log=space.hidden_layers.log)
        hidden = tuple(
            trial.suggest_int(f"units_l{i + 1}", space.units.low, space.units.high, log=space.units.log)
            for i in range(layers)
        )
        dropout = _suggest_float(trial, "dropout", space.dropout)
    return HyperParams(classifier, hidden, dropout, learning_rate, optimizer, weight_decay, batch_size)


def hidden_units_of(params: Mapping[str, object]) -> tuple[int, ...]:
    """A DNN trial's hidden layer sizes from its parameters, as `suggest_params` names them."""
    return tuple(int(params[f"units_l{i + 1}"]) for i in range(int(params["hidden_layers"])))  # type: ignore[call-overload]


def baseline_params(baseline: BaselineConfig) -> dict[str, object]:
    """The enqueued first trial, as the parameter names `suggest_params` uses."""
    return {
        CLASSIFIER_PARAM: "linear",
        "learning_rate": baseline.learning_rate,
        "optimizer": baseline.optimizer,
        "weight_decay": baseline.weight_decay,
        "batch_size": baseline.batch_size,
    }


def first_dnn_params(first: FirstDnnConfig) -> dict[str, object] | None:
    """The standard DNN to enqueue, as the parameter names `suggest_params` uses; None when it is
    disabled (settings turn the default off where a narrowed space excludes it)."""
    if not first.enabled:
        return None
    return {
        CLASSIFIER_PARAM: "dnn",
        "learning_rate": first.learning_rate,
        "optimizer": first.optimizer,
        "weight_decay": first.weight_decay,
        "batch_size": first.batch_size,
        "hidden_layers": len(first.units),
        **{f"units_l{i + 1}": units for i, units in enumerate(first.units)},
        "dropout": first.dropout,
    }


def _fits(value: object, low: float, high: float, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)
    return type(value) in kinds and low <= value <= high  # type: ignore[operator]


def params_problem(params: dict[str, object], space: SpaceConfig) -> str | None:
    """Why a parameter set (as `suggest_params` names them, e.g. another study's trial) does not
    lie inside `space`, or None when every parameter does and none is missing or extra."""
    classifier = params.get(CLASSIFIER_PARAM)
    if not isinstance(classifier, str) or classifier not in space.classifier:
        return f"classifier {classifier!r} is not in space.classifier"
    expected = {CLASSIFIER_PARAM, "learning_rate", "optimizer", "weight_decay", "batch_size"}
    layers = params.get("hidden_layers")
    if classifier == "dnn":
        if not _fits(layers, space.hidden_layers.low, space.hidden_layers.high, integer=True):
            return f"hidden_layers {layers!r} lies outside space.hidden_layers [{space.hidden_layers.low}, {space.hidden_layers.high}]"
        expected |= {"hidden_layers", "dropout"} | {f"units_l{i + 1}" for i in range(layers)}
    if set(params) != expected:
        return f"parameters {sorted(set(params) ^ expected)} do not match this space's"
    ranged = ["learning_rate", "weight_decay"]  # (parameter, the space's field)
    if classifier == "dnn":
        ranged += ["dropout", *(f"units_l{i + 1}" for i in range(int(layers)))]  # type: ignore[arg-type]
    for name in ranged:
        field = "units" if name.startswith("units_l") else name
        span = getattr(space, field)
        if not _fits(params[name], span.low, span.high, integer=field == "units"):
            return f"{name} {params[name]!r} lies outside space.{field} [{span.low}, {span.high}]"
    if not isinstance(params["optimizer"], str) or params["optimizer"] not in space.optimizer:
        return f"optimizer {params['optimizer']!r} is not in space.optimizer"
    if type(params["batch_size"]) is not int or params["batch_size"] not in space.batch_size:
        return f"batch_size {params['batch_size']!r} is not in space.batch_size"
    return None
