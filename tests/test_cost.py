"""The cost-aware bound (search/cost.py): a DNN whose multiply-adds exceed space.max_cost_ratio
times the median tried DNN's is pruned before it trains; nothing else is."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from helpers import writer_storage
from lightning_modules.data.split import DataSplit
from lightning_modules.network import build_network, multiply_adds
from search import record
from search.cost import cost_ratio, median_cost, net_cost
from search.export.__main__ import main as export_main
from search.objective import make_objective
from search.optuna_compat import retry_attrs
from search.progress import trial_line
from search.settings_file import load_settings
from search.artifact_stores import build_artifact_store
from search.study import open_study, run_worker

DIST = {
    "classifier": CategoricalDistribution(["linear", "dnn"]),
    "hidden_layers": IntDistribution(1, 3),
    "units_l1": IntDistribution(64, 1024),
    "units_l2": IntDistribution(64, 1024),
}


def dnn(*units: int) -> dict[str, object]:
    return {"classifier": "dnn", "hidden_layers": len(units), **{f"units_l{i + 1}": u for i, u in enumerate(units)}}


def tried(params: dict[str, object], state: TrialState = TrialState.COMPLETE, **attrs: object) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=state, value=0.9 if state == TrialState.COMPLETE else None, params=params,
        distributions={k: DIST[k] for k in params}, user_attrs=attrs,
    )


@pytest.mark.parametrize("units", [(), (64,), (512, 512), (1024, 100, 300)])
def test_multiply_adds_are_the_weights_of_the_network_it_builds(units: tuple[int, ...]) -> None:
    net = build_network(784, units, 10, 0.2)
    weights = sum(p.numel() for name, p in net.named_parameters() if name.endswith("weight"))
    assert multiply_adds(784, units, 10) == weights


def test_the_median_counts_finished_dnns_the_sampler_chose_and_trained() -> None:
    assert net_cost({"classifier": "linear"}) is None
    assert net_cost(dnn(512, 512)) == 784 * 512 + 512 * 512 + 512 * 10
    small, mid, big = tried(dnn(64)), tried(dnn(256)), tried(dnn(1024, 1024))
    assert median_cost([small]) == net_cost(dnn(64))
    assert median_cost([small, mid, big]) == net_cost(dnn(256))
    left_out = [
        tried({"classifier": "linear"}),
        tried(dnn(1024, 1024), TrialState.RUNNING),
        tried(dnn(1024, 1024), TrialState.FAIL),
        tried(dnn(1024, 1024), **{record.PROMOTED_FROM: 3, record.MAX_EPOCHS: 24}),
        tried(dnn(1024, 1024), TrialState.PRUNED, **{record.OVER_COST: 5.0}),
    ]
    assert median_cost(left_out) is None
    assert median_cost([small, *left_out]) == net_cost(dnn(64))
    pruned = tried(dnn(1024), TrialState.PRUNED)  # pruned after epochs: it was tried
    assert median_cost([small, pruned]) == (net_cost(dnn(64)) + net_cost(dnn(1024))) / 2  # type: ignore[operator]
    assert cost_ratio(dnn(128), [small]) == pytest.approx(net_cost(dnn(128)) / net_cost(dnn(64)))  # type: ignore[operator]
    assert cost_ratio({"classifier": "linear"}, [small]) is None
    assert cost_ratio(dnn(128), []) is None


@pytest.mark.slow
def test_a_search_prunes_costly_nets_before_training_and_trains_the_rest(
    tmp_path: Path, tiny_split: DataSplit, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_cost_ratio 1: after the first DNN (512-512), a net costlier than the median so far never trains."""
    settings = load_settings(None, {
        "study": {"name": "c", "trials": 12, "target_accuracy": None, "seed": 3},
        "training": {"max_epochs": 1, "promote_factor": None, "snapshot_steps": []},
        "sampler": {"n_startup_trials": 12},
        "space": {"max_cost_ratio": 1},
    })
    study = open_study(settings, writer_storage(f"sqlite:///{tmp_path / 'c.db'}")).study
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    run_worker(study, objective, settings)
    trials = study.get_trials()
    over = [t for t in trials if record.OVER_COST in t.user_attrs]
    assert over, "seed 3 samples nets above the median: the test needs one"
    for t in trials:
        ratio = cost_ratio(t.params, trials[: t.number])
        if t in over:
            assert t.state == TrialState.PRUNED and not t.intermediate_values and record.epochs_run(t) == 0
            assert ratio is not None and ratio > 1 and t.user_attrs[record.OVER_COST] == round(ratio, 2)
            assert "not trained" in trial_line(t)
        else:
            assert t.state == TrialState.COMPLETE and t.intermediate_values  # trained its one epoch, the last: never pruned there
            assert ratio is None or ratio <= 1
    trained_dnns = [t for t in trials if t.params["classifier"] == "dnn" and t not in over]
    assert len(trained_dnns) >= 2  # the first DNN and at least one cheaper net


    # --reproduce of such a trial is one line, before any data is read (here: none to read)
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "no-data-here"))
    capsys.readouterr()
    assert export_main(["--storage", f"sqlite:///{tmp_path / 'c.db'}", "--study-name", "c", "--reproduce", str(over[0].number)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"trial {over[0].number} was pruned before training" in error, error


def test_enqueued_trials_and_retries_are_never_bounded(tmp_path: Path, tiny_split: DataSplit) -> None:
    """What the user or the study queued (a warm start's net, a retry whose epochs sit in a
    checkpoint) trains whatever it costs; only the sampler's own choices are bounded."""
    settings = load_settings(None, {
        "study": {"name": "e", "trials": 10, "target_accuracy": None},
        "training": {"max_epochs": 1, "promote_factor": None, "snapshot_steps": []},
        "space": {"max_cost_ratio": 1},
    })
    study = optuna.create_study(study_name="e", storage=writer_storage(f"sqlite:///{tmp_path / 'e.db'}"), direction="maximize")
    common = {"learning_rate": 0.001, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": 128, "dropout": 0.1}
    dists = {
        "classifier": CategoricalDistribution(["linear", "dnn"]), "hidden_layers": IntDistribution(1, 3),
        "units_l1": IntDistribution(64, 1024, log=True), "units_l2": IntDistribution(64, 1024, log=True),
        "learning_rate": optuna.distributions.FloatDistribution(3e-4, 1e-2, log=True),
        "optimizer": CategoricalDistribution(["adam", "adamw"]),
        "weight_decay": optuna.distributions.FloatDistribution(1e-7, 1e-4, log=True),
        "batch_size": CategoricalDistribution([64, 128, 256]), "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
    }
    small, big = {**dnn(64), **common}, {**dnn(1024, 1024), **common}
    study.add_trial(optuna.trial.create_trial(params=small, distributions={k: dists[k] for k in small}, value=0.9))
    study.enqueue_trial(big)  # e.g. a warm start: 1024-1024 costs 29x the 64-unit median
    study.add_trial(optuna.trial.create_trial(  # a retry of a sampled trial, queued as requeue() does
        state=TrialState.WAITING, params=big, distributions={k: dists[k] for k in big},
        system_attrs=retry_attrs({}, 0),
    ))
    objective = make_objective(settings, tiny_split, build_artifact_store(tmp_path / "artifacts"), tmp_path / "checkpoints")
    study.optimize(objective, n_trials=2)
    _, queued, retry = study.get_trials()
    for t in (queued, retry):
        assert t.state == TrialState.COMPLETE and record.OVER_COST not in t.user_attrs and record.epochs_run(t) == 1
    assert cost_ratio(big, study.get_trials()[:1]) > 1  # type: ignore[operator]  # a sampled twin would have been pruned
