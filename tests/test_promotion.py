"""Promotion (search/promotion.py): a new best of its classifier at the base budget is retrained
once with promote_factor x max_epochs epochs, unpruned; nothing else is."""

from __future__ import annotations

import time
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
from search.promotion import Promoter, drop_queued_promotions, promotion_attrs, queue_owed_promotions, room_for_one_more
from search.run import build_parser
from search.settings_file import ConfigError, load_settings
from search.space import suggest_params
from search.stopping import SurplusTrial
from search.artifact_stores import build_artifact_store
from search.study import build_pruner, open_study, run_worker

BASE = 8  # the study's max_epochs in these trials
DISTRIBUTIONS = {"classifier": CategoricalDistribution(["linear", "dnn"]), "learning_rate": FloatDistribution(1e-4, 1e-1)}


def trial(number: int, value: float | None, classifier: str = "dnn", state: TrialState = TrialState.COMPLETE, **attrs: object) -> FrozenTrial:
    epochs = attrs.get(record.MAX_EPOCHS, BASE)
    made = optuna.trial.create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"classifier": classifier, "learning_rate": 0.001 * (number + 1)}, distributions=DISTRIBUTIONS, user_attrs=attrs,
        system_attrs={record.FIT: {"max_epochs": epochs}},
    )
    made.number = number
    return made


def earns(trials: list[FrozenTrial], number: int, promote_epochs: int | None = 24) -> bool:
    return promotion_attrs(trials, trials[number], BASE, promote_epochs) is not None


def test_only_a_new_best_of_its_classifier_at_the_base_budget_earns_a_promotion() -> None:
    baseline = trial(0, 0.92, "linear", max_epochs=3)
    first = trial(1, 0.97)
    assert promotion_attrs([baseline, first], first, BASE, 24) == {record.MAX_EPOCHS: 24, record.PROMOTED_FROM: 1}
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
    # a trial of an earlier run with another max_epochs is no like-for-like rival, nor promoted
    longer = trial(2, 0.99)
    longer.system_attrs[record.FIT] = {"max_epochs": 12}
    assert earns([baseline, first, longer, trial(3, 0.975)], 3) and not earns([baseline, first, longer], 2)
    # once promoted, never again (a callback run twice, a resumed worker)
    assert not earns([baseline, first, trial(2, None, state=TrialState.WAITING, max_epochs=24, promoted_from=1)], 1)
    # but one dropped as surplus (a stop rule came while it waited) promotes nothing: a later run with room owes it
    assert earns([baseline, first, trial(2, None, state=TrialState.FAIL, max_epochs=24, promoted_from=1, surplus=True)], 1)


def test_promotion_setting_is_checked_and_named_on_the_command_line(tmp_path: Path) -> None:
    assert load_settings(None, {}).training.promote_epochs == 24
    assert load_settings(None, {"training": {"max_epochs": 5, "promote_factor": 2}}).training.promote_epochs == 10
    assert load_settings(None, {"training": {"promote_factor": None}}).training.promote_epochs is None
    with pytest.raises(ConfigError, match="promote_factor"):
        load_settings(None, {"training": {"promote_factor": 1}})
    # no trial trains more than the ceiling of max_epochs; at the ceiling a promotion adds nothing
    assert load_settings(None, {"training": {"max_epochs": 500}}).training.promote_epochs == 1000
    assert load_settings(None, {"training": {"max_epochs": 1000}}).training.promote_epochs is None
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
        "training": {"max_epochs": 2, "promote_factor": 2, "snapshot_steps": []},  # 2: the last epoch is never pruned
        "baseline": {"enabled": False}, "first_dnn": {"enabled": False},
    })
    storage = writer_storage(f"sqlite:///{tmp_path / 'r.db'}")
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    params = {"classifier": "linear", "learning_rate": 0.003, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": 128}
    study.enqueue_trial(params)
    study.enqueue_trial(params, user_attrs={record.MAX_EPOCHS: 4, record.PROMOTED_FROM: 0})
    study.optimize(objective, n_trials=2)
    plain, promoted = study.trials
    assert plain.state == TrialState.PRUNED and record.epochs_run(plain) == 1  # the pruner prunes any value below 1.0 ...
    assert promoted.state == TrialState.COMPLETE  # ... but never a promotion
    assert record.epochs_run(promoted) == 4 and record.read(promoted, record.FIT)["max_epochs"] == 4
    assert sorted(promoted.intermediate_values) == [0, 1, 2, 3]  # its curve is reported, as every trial's


def test_the_median_pruner_leaves_promotions_out(tmp_path: Path) -> None:
    """Two base-budget DNNs at 0.5 and three promotions at 0.9 after epoch 0: a trial at 0.6 is
    above its like-for-like median (0.5), though below the median of all five (0.9)."""
    study = optuna.create_study(storage=writer_storage(f"sqlite:///{tmp_path / 'm.db'}"), direction="maximize")
    params, dist = {"classifier": "dnn"}, {"classifier": CategoricalDistribution(["linear", "dnn"])}
    for value, attrs in [(0.5, {}), (0.5, {}), *[(0.9, {record.PROMOTED_FROM: 0, record.MAX_EPOCHS: 24})] * 3]:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dist, value=value, intermediate_values={0: value}, user_attrs=attrs))
    study.enqueue_trial(params)
    running = study.ask(dist)
    running.report(0.6, 0)
    pruner = build_pruner(load_settings(None, {"pruner": {"n_startup_trials": 1}}).pruner, 8)
    assert not pruner.prune(study, study.trials[-1])
    study.enqueue_trial(params)
    low = study.ask(dist)
    low.report(0.4, 0)  # and a trial below the like-for-like median is still pruned
    assert pruner.prune(study, study.trials[-1])


def test_no_promotion_is_queued_without_room_for_it(tmp_path: Path) -> None:
    """The budget spent by the first DNN, or the timeout passed: nothing is left waiting after the run."""
    settings = load_settings(None, {"study": {"name": "b", "trials": 2, "target_accuracy": None}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'b.db'}")).study
    assert "budget" in run_worker(study, quick_objective, settings)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    settings = load_settings(None, {"study": {"name": "d", "trials": 50, "target_accuracy": None, "timeout": 60}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'd.db'}")).study
    study.optimize(quick_objective, n_trials=2)  # the baseline and the first DNN, a new best
    assert room_for_one_more(study, settings.study, deadline=None)
    assert not room_for_one_more(study, settings.study, deadline=time.monotonic() - 1)
    Promoter(settings.study, settings.training, deadline=time.monotonic() - 1)(study, study.trials[1])
    assert len(study.trials) == 2
    Promoter(settings.study, settings.training)(study, study.trials[1])
    assert record.promoted_from(study.trials[2]) == 1 and study.trials[2].state == TrialState.WAITING


def test_a_study_run_in_pieces_gets_the_promotion_a_run_without_room_denied(tmp_path: Path) -> None:
    """`--trials 2` then `--trials 6`: the first DNN, a new best, finished as the budget ran out,
    and its promotion was lost for good; the resumed study then ran other trials than one run of 6.
    A run that starts with room queues it first, so both give the same trials."""
    def run(name: str, budgets: list[int]) -> list[tuple[object, ...]]:
        storage = writer_storage(f"sqlite:///{tmp_path / name}.db")
        for piece, budget in enumerate(budgets):
            settings = load_settings(None, {"study": {"name": name, "trials": budget, "target_accuracy": None}})
            study = open_study(settings, storage).study
            owed = queue_owed_promotions(study, settings.study, settings.training)
            assert owed == ([1] if piece else []), owed  # trial 1, the first DNN, owed by the first piece
            run_worker(study, quick_objective, settings)
        return [(t.state, t.params, t.value, record.promoted_from(t)) for t in study.trials]

    pieces = run("pieces", [2, 6])
    assert pieces[2][3] == 1 and pieces == run("whole", [6])


def test_two_runs_starting_together_queue_an_owed_promotion_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two machines resuming a study at the same moment each read that trial 1's promotion is owed
    and each queued it: both would train. The other machine's is queued here between this one's
    read and its own (the moment the race needs); the later of the two is dropped as surplus."""
    settings = load_settings(None, {"study": {"name": "r", "trials": 2, "target_accuracy": None}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'r.db'}")).study
    run_worker(study, quick_objective, settings)
    real = study.enqueue_trial

    def other_machine_first(params: dict[str, object], user_attrs: dict[str, object] | None = None) -> None:
        real(params, user_attrs=user_attrs)  # the other machine's, just after this one read the study
        real(params, user_attrs=user_attrs)

    monkeypatch.setattr(study, "enqueue_trial", other_machine_first)
    assert queue_owed_promotions(study, settings.study.model_copy(update={"trials": 6}), settings.training) == [1]
    promotions = [(t.number, t.state, record.is_surplus(t)) for t in study.trials if record.promoted_from(t) == 1]
    assert promotions == [(2, TrialState.WAITING, False), (3, TrialState.FAIL, True)]


def test_dropping_queued_promotions_leaves_one_another_worker_just_took(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that pops the queued promotion between the drop's listing and its write trains it:
    the drop failed it under the worker (FAIL and surplus while it ran); it now claims a trial as
    a worker does, so only one of the two gets it."""
    settings = load_settings(None, {"study": {"name": "r", "trials": 5, "target_accuracy": None}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'r.db'}")).study
    study.optimize(quick_objective, n_trials=1)
    study.enqueue_trial(study.trials[0].params, user_attrs={record.MAX_EPOCHS: 24, record.PROMOTED_FROM: 0})
    study.enqueue_trial(study.trials[0].params, user_attrs={record.MAX_EPOCHS: 24, record.PROMOTED_FROM: 0})
    listed = study.get_trials

    def listing_then_another_worker_pops_the_first(*args: object, **kwargs: object) -> list[FrozenTrial]:
        trials = listed(*args, **kwargs)  # type: ignore[arg-type]
        first = next(t for t in trials if record.promoted_from(t) is not None)
        assert study._storage.set_trial_state_values(first._trial_id, TrialState.RUNNING)
        return trials

    monkeypatch.setattr(study, "get_trials", listing_then_another_worker_pops_the_first)
    assert drop_queued_promotions(study) == 1
    monkeypatch.undo()
    taken, dropped = (t for t in study.trials if record.promoted_from(t) is not None)
    assert taken.state == TrialState.RUNNING and not record.is_surplus(taken)
    assert dropped.state == TrialState.FAIL and record.is_surplus(dropped)


def test_a_promotion_that_meets_a_full_budget_is_dropped_not_left_waiting(tmp_path: Path, tiny_split: DataSplit) -> None:
    """Another worker took the last slot first: the promotion steps aside as surplus; and one
    still queued when the study is done is dropped the same way, so nothing waits after the run."""
    settings = load_settings(None, {"study": {"name": "q", "trials": 1, "target_accuracy": None}, "baseline": {"enabled": False}})
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'q.db'}")).study
    other = study.ask()  # the other worker's trial, running in the last slot
    suggest_params(other, settings.space)
    promotion = {record.MAX_EPOCHS: 24, record.PROMOTED_FROM: 0}
    study.enqueue_trial(study.trials[0].params, user_attrs=promotion)
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
    assert study.trials[1].state == TrialState.FAIL and record.is_surplus(study.trials[1])
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    study.enqueue_trial(study.trials[0].params, user_attrs=promotion)  # queued by a worker in the same moment
    study.tell(other, 0.5)
    assert "budget" in run_worker(study, objective, settings)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert record.is_surplus(study.trials[2])
