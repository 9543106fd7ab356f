"""Promotion (search/promotion.py): a new best of its classifier at the base budget is retrained
once with promote_factor x max_epochs epochs, unpruned; nothing else is."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from test_study import quick_objective

from helpers import writer_storage
from lightning_modules.data.split import DataSplit
from search import record
from search.objective import make_objective
from search.options import RUN_FLAGS, overrides_from_args
from search.progress import trial_line
from search.promotion import promotion_attrs
from search.run import build_parser
from search.settings_file import ConfigError, load_settings
from search.storage import build_artifact_store
from search.study import open_study, run_worker

DISTRIBUTIONS = {"classifier": CategoricalDistribution(["linear", "dnn"]), "learning_rate": FloatDistribution(1e-4, 1e-1)}


def trial(number: int, value: float | None, classifier: str = "dnn", state: TrialState = TrialState.COMPLETE, **attrs: object) -> FrozenTrial:
    made = optuna.trial.create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"classifier": classifier, "learning_rate": 0.001 * (number + 1)}, distributions=DISTRIBUTIONS, user_attrs=attrs,
    )
    made.number = number
    return made


def earns(trials: list[FrozenTrial], number: int, promote_epochs: int | None = 24) -> bool:
    return promotion_attrs(trials, trials[number], promote_epochs) is not None


def test_only_a_new_best_of_its_classifier_at_the_base_budget_earns_a_promotion() -> None:
    baseline = trial(0, 0.92, "linear", max_epochs=3)
    first = trial(1, 0.97)
    assert promotion_attrs([baseline, first], first, 24) == {record.MAX_EPOCHS: 24, record.PROMOTED_FROM: 1}
    assert not earns([baseline, first], 0)  # the baseline has its own budget
    assert not earns([baseline, first], 1, promote_epochs=None)  # promotion off
    assert earns([baseline, first, trial(2, 0.96, "linear")], 2)  # linear's first base-budget trial: its best
    assert not earns([baseline, first, trial(2, 0.96)], 2)  # below the best DNN
    assert not earns([baseline, first, trial(2, 0.97)], 2)  # a tie: the lower number is the best
    assert earns([baseline, first, trial(2, 0.98)], 2)
    assert not earns([baseline, first, trial(2, None, state=TrialState.PRUNED)], 2)
    # a promotion does not count as a rival (its budget differs), nor earns one itself
    promoted = trial(2, 0.985, max_epochs=24, promoted_from=1)
    assert earns([baseline, first, promoted, trial(3, 0.975)], 3)
    assert not earns([baseline, first, promoted], 2)
    # once promoted, never again (a callback run twice, a resumed worker)
    assert not earns([baseline, first, trial(2, None, state=TrialState.WAITING, max_epochs=24, promoted_from=1)], 1)


def test_promotion_setting_is_checked_and_named_on_the_command_line(tmp_path: Path) -> None:
    assert load_settings(None, {}).training.promote_epochs == 24
    assert load_settings(None, {"training": {"max_epochs": 5, "promote_factor": 2}}).training.promote_epochs == 10
    assert load_settings(None, {"training": {"promote_factor": None}}).training.promote_epochs is None
    for bad, words in (({"promote_factor": 1}, "promote_factor"), ({"max_epochs": 500, "promote_factor": 3}, "1500 epochs")):
        with pytest.raises(ConfigError, match=words):
            load_settings(None, {"training": bad})
    parser = build_parser()
    assert "--promote-factor" in parser.format_help()
    for given, expected in (("none", None), ("4", 4)):
        overrides = overrides_from_args(parser.parse_args(["--promote-factor", given]), RUN_FLAGS)
        assert overrides == {"training": {"promote_factor": expected}}


def test_a_study_promotes_each_new_best_once_with_its_parameters(tmp_path: Path) -> None:
    settings = load_settings(None, {"study": {"name": "p", "trials": 12, "target_accuracy": None}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'p.db'}")).study
    run_worker(study, quick_objective, settings)
    trials = study.trials
    promotions = [t for t in trials if record.promoted_from(t) is not None]
    assert promotions, "the first completed DNN is always a new best"
    for promotion in promotions:
        source = trials[record.promoted_from(promotion)]
        assert promotion.params == source.params and promotion.user_attrs[record.MAX_EPOCHS] == 24
        assert promotion.number > source.number
        earlier = [t for t in trials[: source.number] if t.state == TrialState.COMPLETE and record.MAX_EPOCHS not in t.user_attrs]
        assert all(t.value < source.value for t in earlier if t.params["classifier"] == source.params["classifier"])
        assert trial_line(promotion).endswith(f"(trial {source.number} trained longer)")
    assert len({record.promoted_from(t) for t in promotions}) == len(promotions)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 12  # inside the budget


def test_no_promotion_is_queued_once_the_target_is_reached(tmp_path: Path) -> None:
    settings = load_settings(None, {"study": {"name": "t", "trials": 20, "target_accuracy": 0.85}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 't.db'}")).study
    assert "target reached" in run_worker(study, quick_objective, settings)
    assert not [t for t in study.trials if record.promoted_from(t) is not None and t.state == TrialState.WAITING]


def test_a_promotion_trains_its_longer_budget_and_is_never_pruned(tmp_path: Path, tiny_split: DataSplit) -> None:
    settings = load_settings(None, {
        "study": {"name": "r", "trials": 10, "target_accuracy": None},
        "training": {"max_epochs": 1, "promote_factor": 2, "snapshot_steps": []},
        "baseline": {"enabled": False}, "first_dnn": {"enabled": False},
    })
    storage = writer_storage(f"sqlite:///{tmp_path / 'r.db'}")
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    params = {"classifier": "linear", "learning_rate": 0.003, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": 128}
    study.enqueue_trial(params)
    study.enqueue_trial(params, user_attrs={record.MAX_EPOCHS: 2, record.PROMOTED_FROM: 0})
    study.optimize(objective, n_trials=2)
    plain, promoted = study.trials
    assert plain.state == TrialState.PRUNED  # the pruner prunes any value below 1.0 ...
    assert promoted.state == TrialState.COMPLETE  # ... but never a promotion
    assert record.epochs_run(promoted) == 2 and record.read(promoted, record.FIT)["max_epochs"] == 2
