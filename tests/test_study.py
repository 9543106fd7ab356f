"""Study logic without training: budget, resume, target stop, pruning, baseline, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import writer_storage
from lightning_modules.data.split import DataSplit
from search import record
from search.objective import make_objective
from search.resume import RetryDeadTrials, return_to_queue
from search.settings import Settings
from search.settings_file import load_settings
from search.stopping import SurplusTrial, over_budget, remaining_budget, trial_at_target
from search.artifact_stores import build_artifact_store
from search.space import suggest_params
from search.study import best_trials, build_pruner, open_study, run_worker, study_status


def settings_for(name: str, **study: object) -> Settings:
    return load_settings(None, {"study": {"name": name, **study}})


def quick_objective(trial: optuna.Trial) -> float:
    """A real objective with no model: the value follows the parameters, with epoch reports."""
    hp = suggest_params(trial, Settings().space)
    value = 0.9 if hp.classifier == "linear" else 0.5 + 0.4 * min(hp.learning_rate / 1e-2, 1.0)
    for epoch in range(3):
        trial.report(value * (epoch + 1) / 3, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage contract: every test here runs on a SQLite file and on the local PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def name(unique_name: str) -> str:
    """PostgreSQL outlives a test, so every study gets a fresh name."""
    return unique_name


def test_new_study_starts_with_the_linear_baseline(storage_url: str, name: str) -> None:
    settings = settings_for(name, trials=2, target_accuracy=None)
    opened = open_study(settings, writer_storage(storage_url))
    assert opened.created
    run_worker(opened.study, quick_objective, settings)
    first = opened.study.trials[0]
    assert first.params["classifier"] == "linear"
    assert first.user_attrs["max_epochs"] == min(settings.baseline.max_epochs, settings.training.max_epochs)
    assert first.params["learning_rate"] == settings.baseline.learning_rate


def test_resume_runs_only_the_remaining_budget_and_never_duplicates(storage_url: str, name: str) -> None:
    storage = writer_storage(storage_url)
    settings = settings_for(name, trials=4, target_accuracy=None)
    run_worker(open_study(settings, storage).study, quick_objective, settings)
    reopened = open_study(settings_for(name, trials=10, target_accuracy=None), writer_storage(storage_url))
    assert not reopened.created
    assert study_status(reopened.study).finished == 4
    assert remaining_budget(reopened.study, 10) == 6
    reason = run_worker(reopened.study, quick_objective, settings_for(name, trials=10, target_accuracy=None))
    assert "budget" in reason
    assert study_status(reopened.study).finished == 10
    assert [s.study_name for s in optuna.get_all_study_summaries(writer_storage(storage_url))].count(name) == 1
    # the baseline is enqueued once, at creation, not on resume
    assert sum(t.params == reopened.study.trials[0].params for t in reopened.study.trials) == 1
    # the resumed sampler does not replay the random startup trials of the first run
    params = [tuple(sorted(t.params.items())) for t in reopened.study.trials if record.promoted_from(t) is None]
    assert len(set(params)) == len(params)
    # a study whose budget is spent starts nothing
    reason = run_worker(reopened.study, quick_objective, settings_for(name, trials=10, target_accuracy=None))
    assert len(reopened.study.trials) == 10 and "budget" in reason


def test_target_stop_needs_a_completed_trial(storage_url: str, name: str) -> None:
    settings = settings_for(name, trials=50, target_accuracy=0.85)
    study = open_study(settings, writer_storage(storage_url)).study
    reason = run_worker(study, quick_objective, settings)
    hit = trial_at_target(study, 0.85)
    assert hit is not None and hit.state == TrialState.COMPLETE
    assert "target reached" in reason
    started = lambda: [t for t in study.trials if t.state != TrialState.WAITING]  # noqa: E731
    assert len(started()) == hit.number + 1  # nothing started after it (the enqueued first DNN waits)
    # a resumed study that already reached its target starts nothing new
    assert "target reached" in run_worker(study, quick_objective, settings)
    assert len(started()) == hit.number + 1


def test_pruned_values_do_not_count_for_the_target(storage_url: str, name: str) -> None:
    study = optuna.create_study(storage=writer_storage(storage_url), study_name=name, direction="maximize")
    trial = study.ask()
    trial.report(0.99, 0)
    study.tell(trial, state=TrialState.PRUNED)
    assert trial_at_target(study, 0.95) is None
    study.tell(study.ask(), 0.96)
    assert trial_at_target(study, 0.95) is not None


def test_median_pruner_prunes_below_median_trials(storage_url: str, name: str) -> None:
    settings = load_settings(None, {"pruner": {"name": "median", "n_startup_trials": 2}})
    study = optuna.create_study(
        storage=writer_storage(storage_url), study_name=name, direction="maximize",
        pruner=build_pruner(settings.pruner, max_epochs=5),
    )
    for curve in ([0.5, 0.6, 0.7], [0.6, 0.7, 0.8], [0.55, 0.65, 0.75]):
        trial = study.ask()
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
        study.tell(trial, curve[-1])
    bad = study.ask()
    bad.report(0.1, 0)
    assert bad.should_prune()
    good = study.ask()
    good.report(0.9, 0)
    assert not good.should_prune()


@pytest.mark.slow  # seconds of training or waiting: the fast subset stays under 90 s on a loaded machine
@pytest.mark.parametrize("name", ["median", "successive_halving", "hyperband", "none"])
def test_every_configured_pruner_runs_a_study(storage_url: str, name: str) -> None:
    settings = load_settings(None, {"study": {"name": name, "trials": 12, "target_accuracy": None}, "pruner": {"name": name, "n_startup_trials": 2}})
    study = open_study(settings, writer_storage(storage_url)).study
    run_worker(study, quick_objective, settings)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 12
    if name == "none":
        assert TrialState.PRUNED not in states


def test_best_trials_per_classifier(storage_url: str, name: str) -> None:
    settings = settings_for(name, trials=12, target_accuracy=None)
    study = open_study(settings, writer_storage(storage_url)).study
    run_worker(study, quick_objective, settings)
    best = best_trials(study)
    assert best["best"].value == study.best_value
    for kind in ("linear", "dnn"):
        if kind in best:
            same = [t.value for t in study.trials if t.state == TrialState.COMPLETE and t.params["classifier"] == kind]
            assert best[kind].value == max(same)


def test_timeout_stops_starting_trials(storage_url: str, name: str) -> None:
    settings = load_settings(None, {"study": {"name": name, "trials": 1000, "target_accuracy": None, "timeout": 0.5}})
    study = open_study(settings, writer_storage(storage_url)).study
    reason = run_worker(study, quick_objective, settings)
    assert "timeout" in reason and 0 < len(study.trials) < 1000


def test_median_pruner_compares_a_trial_only_with_its_own_classifier(storage_url: str, name: str) -> None:
    """Linear trials are pruned against linear trials: a DNN median would stop them all."""
    settings = load_settings(None, {"pruner": {"name": "median", "n_startup_trials": 2}})
    study = optuna.create_study(
        storage=writer_storage(storage_url), study_name=name, direction="maximize",
        pruner=build_pruner(settings.pruner, max_epochs=5),
    )

    def start(classifier: str, value: float) -> optuna.Trial:
        """A trial of that classifier that has reported `value` after its first epoch."""
        study.enqueue_trial({"classifier": classifier})
        trial = study.ask({"classifier": optuna.distributions.CategoricalDistribution(["linear", "dnn"])})
        trial.report(value, 0)
        return trial

    for classifier, value in (("dnn", 0.97), ("dnn", 0.98), ("linear", 0.90), ("linear", 0.92)):
        study.tell(start(classifier, value), value)

    def should_prune(classifier: str, value: float) -> bool:
        return start(classifier, value).should_prune()

    assert not should_prune("linear", 0.915)  # above the linear median, far below the DNN one
    assert should_prune("linear", 0.905)
    assert should_prune("dnn", 0.95)  # would survive a median over all four (0.945)
    assert not should_prune("dnn", 0.976)


def test_successive_halving_keeps_one_in_reduction_factor_of_its_own_classifier(storage_url: str, name: str) -> None:
    """A rung at epoch index 1 (min_resource 1): a trial goes on past it only if it is in the top
    third of the trials of its classifier that reached it, whatever the other classifier did."""
    settings = load_settings(None, {"pruner": {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3}})
    study = optuna.create_study(
        storage=writer_storage(storage_url), study_name=name, direction="maximize",
        pruner=build_pruner(settings.pruner, max_epochs=24),
    )

    def at_rung(classifier: str, value: float) -> bool:
        """Whether a trial of that classifier reporting `value` at epochs 0 and 1 is pruned at the rung."""
        study.enqueue_trial({"classifier": classifier})
        trial = study.ask({"classifier": optuna.distributions.CategoricalDistribution(["linear", "dnn"])})
        trial.report(value, 0)
        assert not trial.should_prune()  # before the first rung nothing is cut
        trial.report(value, 1)
        pruned = trial.should_prune()
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
        return pruned

    # the first trials go on only as the best so far; from the sixth, in the top third (2 of 6, 2 of 7)
    assert [at_rung("dnn", v) for v in (0.97, 0.98, 0.96, 0.975, 0.99, 0.985, 0.979)] == [False, False, True, True, False, False, True]
    assert not at_rung("linear", 0.90)  # the first linear trial at the rung: nothing of its own to lose to
    assert at_rung("linear", 0.89)  # the best of two linear ones goes on, as with the DNNs


def test_two_processes_opening_one_new_study_never_sample_the_same_trial(storage_url: str, name: str) -> None:
    """Two runs started together (or two machines) once drew identical parameters (trials 1
    and 2, 3 and 4): each process seeded its sampler the same way. Trial n samples with seed + n."""
    settings = settings_for(name, trials=8, target_accuracy=None)
    creator = open_study(settings, writer_storage(storage_url)).study
    creator.tell(creator.ask(), 0.5)  # the baseline: both processes below open a study with one trial
    first = open_study(settings, writer_storage(storage_url)).study
    second = open_study(settings, writer_storage(storage_url)).study  # another process's view
    for _ in range(4):
        for study in (first, second):  # interleaved, as two processes would ask
            trial = study.ask()
            suggest_params(trial, settings.space)
            study.tell(trial, 0.5)
    sampled = [tuple(sorted(t.params.items())) for t in first.trials[1:]]
    assert len(set(sampled)) == len(sampled)


def test_a_trial_samples_the_same_parameters_whoever_asks(storage_url: str, name: str, tmp_path: Path) -> None:
    """Trial n's parameters depend on the seed, n and the history: not on the process or on resumes."""
    def sampled(url: str, study_name: str) -> list[dict[str, object]]:
        settings = settings_for(study_name, trials=6, target_accuracy=None)
        for _ in range(3):  # three "runs" of two trials each, every one a fresh process's view
            study = open_study(settings, writer_storage(url)).study
            for _ in range(2):
                trial = study.ask()
                suggest_params(trial, settings.space)
                study.tell(trial, 0.5 + 0.01 * trial.number)
        return [t.params for t in study.trials]

    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    assert sampled(storage_url, name) == sampled(other_url, name + "-again")


def sampled_params(settings: Settings, storage_url: str, trials: int) -> list[dict[str, object]]:
    study = open_study(settings, writer_storage(storage_url)).study
    for _ in range(trials):
        trial = study.ask()
        suggest_params(trial, settings.space)
        study.tell(trial, 0.5 + 0.01 * trial.number)
    return [t.params for t in study.trials]


def test_neighbouring_seeds_give_independent_searches(tmp_path: Path) -> None:
    """With seed + n, seed 1's trial n was seed 0's trial n + 1, so a benchmark over seeds 0, 1, 2
    measured one search three times, shifted. A new study draws trial n's seed from (seed, n)."""
    url = f"sqlite:///{tmp_path / 'seeds.db'}"
    zero = sampled_params(load_settings(None, {"study": {"name": "zero", "seed": 0}, "baseline": {"enabled": False}}), url, 5)
    one = sampled_params(load_settings(None, {"study": {"name": "one", "seed": 1}, "baseline": {"enabled": False}}), url, 5)
    assert not set(map(str, one[:4])) & set(map(str, zero[1:]))
    assert optuna.load_study(study_name="one", storage=url).user_attrs[record.SEED_SCHEME] == "independent"


def test_a_study_from_before_the_seed_scheme_resumes_with_seed_plus_n(tmp_path: Path) -> None:
    """An older study (no `seed_scheme` attribute) goes on sampling, and training, with seed + n,
    as its first trials did, so its resumed trials are the ones an uninterrupted run would draw."""
    from search.objective import trial_seeds

    url = f"sqlite:///{tmp_path / 'old.db'}"
    settings = load_settings(None, {"study": {"name": "old", "seed": 3}, "baseline": {"enabled": False}})
    older = optuna.create_study(study_name="old", storage=url, direction="maximize")  # as an older version created it
    older.set_user_attr(record.UID, "0123456789ab")
    resumed = open_study(settings, writer_storage(url)).study
    assert record.SEED_SCHEME not in resumed.user_attrs
    trial = resumed.ask()
    assert trial_seeds(trial, settings).training == 3 + trial.number
    assert resumed.sampler.scheme == "offset"  # type: ignore[attr-defined]


def test_a_study_with_an_unknown_seed_scheme_is_refused_before_any_trial(tmp_path: Path) -> None:
    """A newer version's study would otherwise sample with seeds it never drew."""
    from search.sampling import SeedSchemeError

    url = f"sqlite:///{tmp_path / 'new.db'}"
    settings = load_settings(None, {"study": {"name": "newer"}})
    open_study(settings, writer_storage(url)).study.set_user_attr(record.SEED_SCHEME, "from-the-future")
    with pytest.raises(SeedSchemeError, match="seed scheme 'from-the-future'.*resume it with the version that created it"):
        open_study(settings, writer_storage(url))
    assert [t.state for t in optuna.load_study(study_name="newer", storage=url).trials] == [TrialState.WAITING] * 2


def test_a_new_study_gets_a_uid_and_names_its_objective(storage_url: str, name: str) -> None:
    from search import record

    study = open_study(settings_for(name), writer_storage(storage_url)).study
    assert len(study.user_attrs[record.UID]) == 12
    assert study.metric_names == [record.OBJECTIVE_NAME]
    again = open_study(settings_for(name), writer_storage(storage_url)).study
    assert again.user_attrs[record.UID] == study.user_attrs[record.UID]


def interrupted_then_queued(study: optuna.Study, settings: Settings) -> optuna.trial.FrozenTrial:
    """A trial stopped mid-run and queued again, as a Ctrl-C leaves it; returns the failed attempt."""
    from search.resume import requeue

    trial = study.ask()
    suggest_params(trial, settings.space)
    requeue(trial)
    study.tell(trial, state=TrialState.FAIL)
    return study.trials[trial.number]


def test_a_queued_retry_takes_the_last_slot_before_a_fresh_trial(storage_url: str, name: str, tiny_split: DataSplit, tmp_path: Path) -> None:
    """Two workers start at the last budget slot: one pops the retry, the other samples a fresh
    trial. The retry trains; the fresh one steps aside (before, both stepped aside and the retry
    was dropped for good)."""
    settings = load_settings(None, {
        "study": {"name": name, "trials": 3, "target_accuracy": None}, "baseline": {"enabled": False},
        "training": {"max_epochs": 1, "snapshot_steps": [5]},
    })
    study = open_study(settings, writer_storage(storage_url)).study
    for value in (0.5, 0.6):
        done = study.ask()
        suggest_params(done, settings.space)
        study.tell(done, value)
    fresh = study.ask()  # the other worker's freshly sampled trial, running
    suggest_params(fresh, settings.space)
    failed = interrupted_then_queued(study, settings)
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    study.optimize(objective, n_trials=1, catch=(SurplusTrial,))  # this worker pops the retry
    retry = study.trials[-1]
    assert record.retried_from(retry) == failed.number
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert over_budget(study, 3)  # and the fresh trial, checking now, steps aside


def two_of_three_finished(storage_url: str, name: str) -> tuple[Settings, optuna.Study]:
    """A study with a budget of 3 trials and 2 of them finished: one slot left."""
    settings = load_settings(None, {"study": {"name": name, "trials": 3, "target_accuracy": None}, "baseline": {"enabled": False}})
    study = open_study(settings, writer_storage(storage_url)).study
    for value in (0.5, 0.6):
        done = study.ask()
        suggest_params(done, settings.space)
        study.tell(done, value)
    return settings, study


def test_a_fresh_trial_yields_the_last_slot_to_a_retry_queued_after_it_was_sampled(storage_url: str, name: str) -> None:
    """A dead worker's trial is failed first and its retry queued after: a fresh trial sampled in
    between saw the freed slot, the retry then took it too, and a study of 8 trials on
    PostgreSQL ended with 9 finished when another machine was killed."""
    settings, study = two_of_three_finished(storage_url, name)
    dead = study.ask()  # a worker that died: failed by the heartbeat check, its retry not yet queued
    suggest_params(dead, settings.space)
    study.tell(dead, state=TrialState.FAIL)
    fresh = study.ask()  # another worker's trial, sampled in that gap (no retry to pop)
    RetryDeadTrials()(study, study.trials[dead.number])  # the retry is queued
    assert over_budget(study, 3)  # the fresh trial, checking as it starts, steps aside
    assert record.retried_from(study.get_trials(states=(TrialState.WAITING,))[0]) == dead.number
    study.tell(fresh, state=TrialState.FAIL)
    retry = study.ask()
    assert record.retried_from(retry) == dead.number and not over_budget(study, 3, retry=True)  # the retry trains


def test_two_retries_for_one_slot_both_go_back_to_the_queue(storage_url: str, name: str) -> None:
    settings, study = two_of_three_finished(storage_url, name)
    running = [study.ask(), study.ask()]  # both asked before either is queued again (an ask pops the queue)
    from search.resume import requeue

    for trial in running:
        suggest_params(trial, settings.space)
        requeue(trial)
        study.tell(trial, state=TrialState.FAIL)
    first, second = (study.trials[t.number] for t in running)
    retries = [study.ask(), study.ask()]  # both popped: two retries for one slot
    assert all(over_budget(study, 3, retry=True) for _ in retries)
    for retry in retries:
        return_to_queue(retry)
        study.tell(retry, state=TrialState.FAIL)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(record.retried_from(t) for t in waiting) == sorted([first.number, second.number])
    again = study.ask()
    suggest_params(again, settings.space)  # its fixed parameters, not new ones
    assert again.params == (first.params if record.retried_from(again) == first.number else second.params)


def test_one_attempt_retried_twice_trains_once(storage_url: str, name: str, tiny_split: DataSplit, tmp_path: Path) -> None:
    """A trial handed back on a full disk whose worker could not then mark it failed stays
    running, goes stale, and the heartbeat check queues a second retry beside the hand-back's:
    both copies trained, with the same parameters and seeds, and took two slots of the budget."""
    from search.resume import RetryDeadTrials

    settings = load_settings(None, {
        "study": {"name": name, "trials": 2, "target_accuracy": None}, "baseline": {"enabled": False},
        "first_dnn": {"enabled": False}, "training": {"max_epochs": 1, "snapshot_steps": [5], "promote_factor": None},
    })
    study = open_study(settings, writer_storage(storage_url)).study
    failed = interrupted_then_queued(study, settings)  # the hand-back's retry
    RetryDeadTrials()(study, failed)  # and the heartbeat check's
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    run_worker(study, objective, settings)
    retries = [t for t in study.trials if record.retried_from(t) == failed.number]
    assert sorted((t.state, record.is_surplus(t)) for t in retries) == [(TrialState.COMPLETE, False), (TrialState.FAIL, True)]
    assert study_status(study).complete == 2  # the second slot went to a new trial


def test_a_retry_of_one_of_two_copies_still_trains_once(storage_url: str, name: str, tiny_split: DataSplit, tmp_path: Path) -> None:
    """The first copy is itself interrupted and retried: its retry and the second copy are still
    attempts at one trial (matched by the first attempt, not by the attempt each repeats)."""
    from search.resume import RetryDeadTrials, requeue

    settings = load_settings(None, {
        "study": {"name": name, "trials": 2, "target_accuracy": None}, "baseline": {"enabled": False},
        "first_dnn": {"enabled": False}, "training": {"max_epochs": 1, "snapshot_steps": [5], "promote_factor": None},
    })
    study = open_study(settings, writer_storage(storage_url)).study
    failed = interrupted_then_queued(study, settings)
    RetryDeadTrials()(study, failed)
    first_copy = study.ask()  # popped, then interrupted and queued again
    suggest_params(first_copy, settings.space)
    requeue(first_copy)
    study.tell(first_copy, state=TrialState.FAIL)
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    run_worker(study, objective, settings)
    attempts = [t for t in study.trials if record.first_attempt(t) == failed.number]
    assert [t.state for t in attempts].count(TrialState.COMPLETE) == 1, [(t.number, t.state) for t in attempts]
    assert study_status(study).complete == 2


@pytest.mark.parametrize(("budget", "finished", "shown"), [(30, 34, 34), (20, 34, 34), (34, 34, 34), (40, 40, 40)])
def test_nothing_to_run_names_a_budget_that_would_run_something(budget: int, finished: int, shown: int) -> None:
    """A study with 34 finished trials resumed with --trials 30 said "pass a --trials larger than
    30", though 31-34 run nothing either."""
    from search.trial_loop import _nothing_to_do

    study = optuna.create_study(direction="maximize")
    for _ in range(finished):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    settings = load_settings(None, {"study": {"trials": budget, "target_accuracy": None}})
    assert _nothing_to_do(study, settings).endswith(f"pass a --trials larger than {shown}")


def test_a_worker_stops_on_the_runs_deadline_not_its_own(storage_url: str) -> None:
    """Each worker of a pool started its --timeout clock when it was ready (after its imports
    and data), so a pool ran on for seconds past the run's timeout; the run's deadline is now
    passed to every worker."""
    import time

    settings = load_settings(None, {"study": {"trials": 12, "target_accuracy": None, "timeout": 3600}})
    study = open_study(settings, writer_storage(storage_url)).study
    reason = run_worker(study, quick_objective, settings, deadline=time.monotonic() - 1)
    assert reason == "timeout of 3600 s reached"
    assert not [t for t in study.trials if t.state.is_finished()]


def test_stop_requests_do_not_use_up_the_retries_of_a_trial_that_dies() -> None:
    """Optuna's limit counted the attempts in retry_history, where each Ctrl-C's re-queue goes
    too: after three stops, the first kill -9 left the trial failed for good (not retried), its
    checkpoint orphaned. Only deaths count, and a trial that keeps dying is still given up."""
    from search.resume import MAX_DEATHS, RetryDeadTrials, requeue

    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    for _ in range(3):  # three stop requests, each re-queuing the running attempt
        requeue(trial)
        study.tell(trial, state=TrialState.FAIL)
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
    assert len(record.earlier_attempts(trial)) == 3
    for death in range(1, MAX_DEATHS + 2):  # the worker dies; the heartbeat check fails the attempt
        study.tell(trial, state=TrialState.FAIL)
        RetryDeadTrials()(study, study.trials[trial.number])
        waiting = study.get_trials(states=(TrialState.WAITING,))
        if death > MAX_DEATHS:
            assert not waiting  # retried after MAX_DEATHS deaths, not after one more
            break
        assert len(waiting) == 1 and waiting[0].system_attrs[record.DEATHS] == death
        trial = study.ask()
        assert trial.suggest_float("x", 0, 1) == study.trials[0].params["x"]  # the same trial, again


@pytest.mark.parametrize("then", ["returns", "reports"])
def test_a_worker_whose_trial_was_retried_while_it_was_paused_drops_it_and_goes_on(
    then: str, storage_url: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGSTOP past the stale time, then SIGCONT: another worker had failed the trial and retried
    it, and Optuna's tell raised ValueError("Cannot tell a FAIL trial"), ending this worker with
    a traceback and the rest of the search on one worker fewer."""
    from search.resume import RetryDeadTrials

    settings = load_settings(None, {
        "study": {"name": name, "trials": 2, "target_accuracy": None}, "baseline": {"enabled": False},
        "first_dnn": {"enabled": False}, "training": {"promote_factor": None},
    })
    study = open_study(settings, writer_storage(storage_url)).study
    elsewhere = optuna.load_study(study_name=name, storage=storage_url)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:  # "paused" here: the other worker's heartbeat check fails it and queues its retry
            elsewhere.tell(0, state=TrialState.FAIL)
            RetryDeadTrials()(elsewhere, elsewhere.trials[0])
            if then == "reports":  # its next epoch's report is refused: the trial is finished
                trial.report(x, 0)
        return x

    assert run_worker(study, objective, settings).startswith("budget")
    states = [t.state for t in optuna.load_study(study_name=name, storage=storage_url).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]  # the retry ran, then a new trial
    assert study.trials[1].params == study.trials[0].params
    err = capsys.readouterr().err
    assert "note: trial 0 was retried by another worker: this one's heartbeat went unseen" in err and "Traceback" not in err


def test_a_run_whose_budget_is_finished_leaves_another_runs_trials_running(storage_url: str, name: str) -> None:
    """A `--trials 2` run on a study where another run with a larger budget has a trial running:
    its own budget is filled by finished trials, so nothing of the running one is owed to it. It
    waited (a poll a second) until the other run's whole budget had finished. With a finished
    trial short of its budget it still waits, to take a retry if the running one dies."""
    settings = settings_for(name, trials=2, target_accuracy=None)
    study = open_study(settings, writer_storage(storage_url)).study
    run_worker(study, quick_objective, settings)
    study.ask()  # a trial of another run's larger budget, running elsewhere
    polls: list[int] = []

    def storage_check() -> None:
        polls.append(1)
        if len(polls) > 20:
            raise AssertionError("waited for another run's trial")

    assert run_worker(study, quick_objective, settings, poll_seconds=0.01, storage_check=storage_check).startswith("budget")
    assert len(polls) == 2  # the loop's one read, and the check as it returns (a database file moved meanwhile is found)
    with pytest.raises(AssertionError, match="waited"):  # one finished trial short: it waits for the running one
        run_worker(study, quick_objective, settings_for(name, trials=3, target_accuracy=None), poll_seconds=0.01, storage_check=storage_check)


def test_the_start_line_says_waiting_only_when_the_run_waits(storage_url: str, name: str) -> None:
    """With its budget filled by finished trials the run stops at once (another run's running trial
    is not its to wait for), yet its first line said it was waiting for that trial."""
    from search.trial_loop import _nothing_to_do

    settings = settings_for(name, trials=2, target_accuracy=None)
    study = open_study(settings, writer_storage(storage_url)).study
    run_worker(study, quick_objective, settings)
    study.ask()  # another run's trial, running
    assert "waiting for them" not in (_nothing_to_do(study, settings) or "")
    assert "waiting for them" in (_nothing_to_do(study, settings_for(name, trials=3, target_accuracy=None)) or "")
