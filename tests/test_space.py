"""The search space: conditional parameters appear only when they apply."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FixedTrial

from search.settings import Settings
from search.settings_file import load_settings
from search.space import baseline_params, suggest_params

SPACE = Settings().space


def test_linear_trial_suggests_no_dnn_parameter() -> None:
    # FixedTrial raises if asked for a parameter it was not given: hidden_layers, units, dropout
    params = {"classifier": "linear", "learning_rate": 1e-3, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": 64}
    hp = suggest_params(FixedTrial(params), SPACE)
    assert hp.classifier == "linear" and hp.hidden_units == () and hp.dropout == 0.0
    assert hp.learning_rate == 1e-3 and hp.batch_size == 64


def test_two_layer_dnn_suggests_no_third_layer() -> None:
    params = {
        "classifier": "dnn", "learning_rate": 1e-3, "optimizer": "adamw", "weight_decay": 1e-6, "batch_size": 128,
        "hidden_layers": 2, "units_l1": 300, "units_l2": 100, "dropout": 0.25,
    }
    hp = suggest_params(FixedTrial(params), SPACE)
    assert hp.hidden_units == (300, 100) and hp.dropout == 0.25 and hp.optimizer == "adamw"
    with pytest.raises(ValueError):
        suggest_params(FixedTrial({**params, "hidden_layers": 3}), SPACE)  # units_l3 would be needed


def test_sampled_trials_only_carry_parameters_that_apply() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        hp = suggest_params(trial, SPACE)
        names = set(trial.params)
        common = {"classifier", "learning_rate", "optimizer", "weight_decay", "batch_size"}
        if hp.classifier == "linear":
            assert names == common
        else:
            layers = trial.params["hidden_layers"]
            assert names == common | {"hidden_layers", "dropout"} | {f"units_l{i + 1}" for i in range(layers)}
            assert len(hp.hidden_units) == layers
            assert all(SPACE.units.low <= u <= SPACE.units.high for u in hp.hidden_units)
        assert SPACE.learning_rate.low <= hp.learning_rate <= SPACE.learning_rate.high
        study.tell(trial, 0.5)


def test_same_seed_same_parameters() -> None:
    def sample(seed: int) -> list[dict[str, object]]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3))
        out = []
        for i in range(8):
            trial = study.ask()
            suggest_params(trial, SPACE)
            study.tell(trial, i / 10)
            out.append(trial.params)
        return out

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_baseline_is_a_valid_linear_trial() -> None:
    settings = load_settings(None)
    hp = suggest_params(FixedTrial(baseline_params(settings.baseline)), settings.space)
    assert hp.classifier == "linear"


@pytest.mark.parametrize("multivariate", [False, True])
def test_multivariate_tpe_models_each_classifier_jointly(multivariate: bool) -> None:
    """sampler.multivariate: TPE samples a trial's parameters together (grouped, since DNN
    parameters exist only on DNN trials); off, it samples each one on its own."""
    from search.sampling import build_sampler
    from search.settings import SamplerConfig

    sampler = build_sampler(SamplerConfig(n_startup_trials=3, multivariate=multivariate), seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for i in range(10):
        trial = study.ask()
        hp = suggest_params(trial, SPACE)
        assert SPACE.dropout.low <= hp.dropout <= SPACE.dropout.high
        study.tell(trial, i / 10)
    study.ask()
    joint = sampler.infer_relative_search_space(study, study.get_trials()[-1])  # the trial just asked for
    assert bool(joint) == multivariate
    if multivariate:
        assert {"classifier", "learning_rate", "batch_size"} <= set(joint)


def _ask_tell(sampler: object, n: int, running: int = 0) -> optuna.Study:
    """n told trials (value from the learning rate), then `running` asked and left running."""
    study = optuna.create_study(sampler=sampler, direction="maximize")  # type: ignore[arg-type]
    for _ in range(n):
        trial = study.ask()
        hp = suggest_params(trial, SPACE)
        study.tell(trial, hp.learning_rate)
    for _ in range(running):
        suggest_params(study.ask(), SPACE)
    return study


def test_gp_sampler_models_the_shared_parameters_and_leaves_dnn_ones_to_tpe() -> None:
    """sampler.name gp: Optuna's GPSampler over the parameters every trial has; hidden layers,
    units and dropout (DNN trials only) come from TPE; seeded per trial, so it repeats."""
    from search.sampling import build_sampler
    from search.settings import SamplerConfig

    config = SamplerConfig(name="gp", n_startup_trials=3)
    sampler = build_sampler(config, seed=0)
    study = _ask_tell(sampler, 5, running=1)
    assert isinstance(sampler.current, optuna.samplers.GPSampler)
    joint = sampler.infer_relative_search_space(study, study.get_trials()[-1])  # the trial just asked for
    assert set(joint) == {"classifier", "learning_rate", "optimizer", "weight_decay", "batch_size"}
    again = _ask_tell(build_sampler(config, seed=0), 5, running=1)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def test_constant_liar_reaches_tpe() -> None:
    """sampler.constant_liar: with it, TPE counts a running trial as a bad one, so the same
    history and seed sample differently from without."""
    from search.sampling import build_sampler
    from search.settings import SamplerConfig

    drawn = {}
    for liar in (True, False):
        study = _ask_tell(build_sampler(SamplerConfig(n_startup_trials=3, constant_liar=liar), seed=0), 8, running=3)
        drawn[liar] = [t.params for t in study.trials]
    assert drawn[True][:9] == drawn[False][:9]  # the same until a trial runs beside the one asked
    assert drawn[True][9:] != drawn[False][9:]


def test_every_range_suggests_on_the_scale_the_config_names() -> None:
    """`hidden_layers: {log: true}` was accepted, recorded with the study's settings, and ignored."""
    overrides = {"space": {"classifier": ["dnn"], "hidden_layers": {"low": 1, "high": 4, "log": True}}, "baseline": {"enabled": False}}
    space = load_settings(None, overrides).space
    study = optuna.create_study()
    trial = study.ask()
    suggest_params(trial, space)
    assert trial.distributions["hidden_layers"].log and trial.distributions["units_l1"].log == space.units.log


@pytest.mark.parametrize(("field", "value"), [("batch_size", [64, 128, 128]), ("optimizer", ["adam", "adam"]), ("classifier", ["dnn", "dnn"])])
def test_a_choice_listed_twice_is_refused(field: str, value: list) -> None:
    """Optuna keeps a repeated choice: [64, 128, 128] drew 128 in 217 of 300 random trials, unsaid."""
    from search.settings_file import ConfigError

    with pytest.raises(ConfigError, match=f"space.{field}: lists .* more than once"):
        load_settings(None, {"space": {field: value}, "first_dnn": {"enabled": False}, "baseline": {"enabled": False}})


def test_a_study_recorded_with_a_repeated_choice_still_reads() -> None:
    """Settings a study recorded before repeats were refused: its export and --reproduce read them."""
    from search.settings import RECORDED

    raw = Settings().model_dump(mode="json")
    raw["space"]["batch_size"] = [64, 128, 128]
    assert Settings.model_validate(raw, context=RECORDED).space.batch_size == [64, 128, 128]
