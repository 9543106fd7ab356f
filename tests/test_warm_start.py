"""--warm-start (search/warm_start.py): a new study first runs the best parameter sets of an
earlier study, read read-only from the same or another storage; bad sources are one-line errors
that create nothing."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from helpers import load, run_main, writer_storage
from search import record
from search.optuna_compat import trial_system_attrs
from search.settings import Settings
from search.settings_file import load_settings
from search.space import baseline_params, first_dnn_params, params_problem
from search.study import open_study
from search.warm_start import best_parameter_sets, read_warm_start

SPACE = Settings().space


def dnn(units: list[int], learning_rate: float = 1e-3, dropout: float = 0.2, batch_size: int = 128) -> dict[str, object]:
    return {
        "classifier": "dnn", "learning_rate": learning_rate, "optimizer": "adam", "weight_decay": 1e-6, "batch_size": batch_size,
        "hidden_layers": len(units), **{f"units_l{i + 1}": u for i, u in enumerate(units)}, "dropout": dropout,
    }


def distributions(params: dict[str, object]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Wide distributions, as another study's space might have had."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, value in params.items():
        if name in ("classifier", "optimizer"):
            out[name] = CategoricalDistribution(["linear", "dnn"] if name == "classifier" else ["adam", "adamw", "sgd"])
        elif name == "batch_size":
            out[name] = CategoricalDistribution([32, 64, 128, 256])
        elif isinstance(value, int):
            out[name] = IntDistribution(1, 8192)
        else:
            out[name] = FloatDistribution(0.0, 1.0)
    return out


def add(study: optuna.Study, params: dict[str, object], value: float | None, state: TrialState = TrialState.COMPLETE, **attrs: object) -> None:
    study.add_trial(optuna.trial.create_trial(state=state, value=value, params=params, distributions=distributions(params), user_attrs=attrs))


def queued_params(study: optuna.Study) -> list[dict[str, object]]:
    """The parameters of the queued trials, in order (Optuna keeps them aside until a trial starts)."""
    return [trial_system_attrs(t)["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]


def source_study(url: str, name: str = "earlier") -> optuna.Study:
    """An earlier study: a DNN promoted (same parameters twice), one outside today's space, a pruned one."""
    study = optuna.create_study(study_name=name, storage=writer_storage(url), direction="maximize")
    add(study, baseline_params(Settings().baseline), 0.92)  # trial 0
    add(study, dnn([512, 512]), 0.981)  # 1
    add(study, dnn([900, 300], 2e-3, 0.3), 0.984)  # 2
    add(study, dnn([900, 300], 2e-3, 0.3), 0.986, max_epochs=24, promoted_from=2)  # 3: its promotion
    add(study, dnn([4096]), 0.987)  # 4: outside today's units (64-1024)
    add(study, dnn([256], 5e-3), None, TrialState.PRUNED)  # 5
    add(study, dnn([700, 700, 100], 1e-3, 0.4, 64), 0.983)  # 6
    return study


def test_params_problem_names_what_lies_outside_the_space() -> None:
    assert params_problem(baseline_params(Settings().baseline), SPACE) is None
    assert params_problem(first_dnn_params(Settings().first_dnn), SPACE) is None  # type: ignore[arg-type]
    assert "units_l1 4096 lies outside space.units" in str(params_problem(dnn([4096]), SPACE))
    assert "learning_rate" in str(params_problem(dnn([128], learning_rate=0.5), SPACE))
    assert "batch_size 32 is not in space.batch_size" in str(params_problem(dnn([128], batch_size=32), SPACE))
    assert "hidden_layers 5" in str(params_problem(dnn([64] * 5), SPACE))
    missing = dnn([128, 128])
    del missing["units_l2"]
    assert "units_l2" in str(params_problem(missing, SPACE))
    assert "momentum" in str(params_problem({**dnn([128]), "momentum": 0.9}, SPACE))
    assert "classifier 'cnn'" in str(params_problem({**dnn([128]), "classifier": "cnn"}, SPACE))
    # types as another tool may have stored them: a float unit count or batch size would fail in training
    assert "units_l1 300.5" in str(params_problem(dnn([300.5]), SPACE))  # type: ignore[list-item]
    assert "batch_size 128.0" in str(params_problem(dnn([128], batch_size=128.0), SPACE))  # type: ignore[arg-type]
    assert "hidden_layers True" in str(params_problem({**dnn([128]), "hidden_layers": True}, SPACE))
    narrow = load_settings(None, {"space": {"classifier": ["dnn"]}, "baseline": {"enabled": False}}).space
    assert "classifier 'linear' is not in space.classifier" in str(params_problem(baseline_params(Settings().baseline), narrow))


def test_best_distinct_parameter_sets_inside_the_space_come_first(tmp_path: Path) -> None:
    trials = source_study(f"sqlite:///{tmp_path / 'a.db'}").get_trials()
    chosen, skipped = best_parameter_sets(trials, 3, SPACE)
    # 4 is best but outside the space; 3 and 2 share parameters (a promotion): taken once, as 3
    assert [t.number for t in chosen] == [3, 6, 1]
    assert skipped == ["trial 4: units_l1 4096 lies outside space.units [64, 1024]"]
    assert [t.number for t in best_parameter_sets(trials, 10, SPACE)[0]] == [3, 6, 1, 0]  # the pruned one never
    baseline = baseline_params(Settings().baseline)
    assert [t.number for t in best_parameter_sets(trials, 10, SPACE, exclude=[baseline])[0]] == [3, 6, 1]  # queued anyway
    assert best_parameter_sets(trials, 1, SPACE)[0][0].number == 3


def test_a_new_study_runs_the_warm_start_after_the_baseline_in_place_of_the_first_dnn(tmp_path: Path) -> None:
    source = source_study(f"sqlite:///{tmp_path / 'earlier.db'}")
    url = f"sqlite:///{tmp_path / 'new.db'}"
    settings = load_settings(None, {"warm_start": {"study": "earlier", "storage": f"sqlite:///{tmp_path / 'earlier.db'}", "trials": 2}})
    warm = read_warm_start(settings, url)
    assert warm is not None and warm.trials == (3, 6) and warm.has_dnn
    assert "trials 3, 6" in warm.describe() and "left out 1 set(s) outside this run's space" in warm.describe()

    study = open_study(settings, writer_storage(url), warm=warm).study
    assert queued_params(study) == [baseline_params(settings.baseline), source.trials[3].params, source.trials[6].params]
    assert record.WARM_START in study.user_attrs and study.user_attrs[record.WARM_START]["trials"] == [3, 6]
    assert len(source.get_trials()) == 7  # the earlier study is only read

    # resuming with the same warm start is a plain resume; nothing is queued twice
    again = open_study(settings, writer_storage(url), warm=read_warm_start(settings, url))
    assert not again.created and len(again.study.get_trials()) == 3

    # its own seeds: with the source's seed and scheme it drew the source's random trials again
    from search.sampling import INDEPENDENT, seed_scheme, trial_seed

    scheme = seed_scheme(again.study)
    assert scheme == study.user_attrs[record.SEED_SCHEME] and scheme.startswith("warm-"), scheme
    assert [trial_seed(0, n, scheme) for n in range(3, 8)] != [trial_seed(0, n, INDEPENDENT) for n in range(3, 8)]
    other = load_settings(None, {"warm_start": {"study": "earlier", "storage": f"sqlite:///{tmp_path / 'earlier.db'}", "trials": 2}})
    assert open_study(other, writer_storage(f"sqlite:///{tmp_path / 'again.db'}"), warm=warm).study.user_attrs[record.SEED_SCHEME] == scheme


def test_a_warm_start_read_leaves_nothing_beside_the_source_file(tmp_path: Path) -> None:
    """A WAL-mode source copied alone (no writer, no -wal): the read-only read created its -wal
    and -shm, and being read-only could not remove them, beside a file it promised only to read."""
    import shutil
    import sqlite3
    from contextlib import closing

    original = tmp_path / "earlier.db"
    source_study(f"sqlite:///{original}")
    with closing(sqlite3.connect(original)) as db:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every trial in the file itself, as after a run that ended
    copy = tmp_path / "copied" / "earlier.db"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    content = copy.read_bytes()
    settings = load_settings(None, {"warm_start": {"study": "earlier", "storage": f"sqlite:///{copy}", "trials": 2}})
    warm = read_warm_start(settings, f"sqlite:///{tmp_path / 'new.db'}")
    assert warm is not None and warm.trials == (3, 6)
    assert [p.name for p in copy.parent.iterdir()] == ["earlier.db"] and copy.read_bytes() == content


def test_without_a_dnn_in_the_warm_start_the_first_dnn_still_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    earlier = optuna.create_study(study_name="linear-only", storage=writer_storage(url), direction="maximize")
    linear = {**baseline_params(Settings().baseline), "learning_rate": 1e-3}
    add(earlier, linear, 0.925)
    settings = load_settings(None, {"study": {"name": "next"}, "warm_start": {"study": "linear-only"}})  # same storage
    study = open_study(settings, writer_storage(url), warm=read_warm_start(settings, url)).study
    assert queued_params(study) == [baseline_params(settings.baseline), linear, first_dnn_params(settings.first_dnn)]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_warm_start_from_postgres_records_no_password(tmp_path: Path, postgres_url: str, unique_name: str) -> None:
    """Another storage, with a password in its URL (the server trusts any): the study's record
    and stored settings name the source with the password masked."""
    secret_url = postgres_url.replace("postgres@", "postgres:Wsx9secret@")
    source_study(secret_url, unique_name)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    settings = load_settings(None, {"warm_start": {"study": unique_name, "storage": secret_url}})
    warm = read_warm_start(settings, url)
    assert warm is not None and "Wsx9secret" not in warm.describe()
    from search.data import check_data
    from search.trial_loop import start_run

    settings = load_settings(None, {"warm_start": {"study": unique_name, "storage": secret_url}, "data": {"train_size": 500}})
    started = start_run(settings, url, check_data(settings.data), warm=warm)
    attrs = str(started.study.user_attrs)
    assert "Wsx9secret" not in attrs and unique_name in attrs and "***" in attrs


def one_line_error(result: object, *words: str) -> str:
    err = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.returncode == 2, err  # type: ignore[attr-defined]
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    return err


def test_bad_warm_starts_are_one_line_errors_that_create_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    earlier = tmp_path / "earlier.db"
    source_study(f"sqlite:///{earlier}")
    new = tmp_path / "new.db"
    base = ["--storage", f"sqlite:///{new}", "--train-size", "500", "--no-export"]
    one_line_error(run_main([*base, "--warm-start", "nope", "--warm-start-storage", f"sqlite:///{earlier}"], capsys), "'nope'", "'earlier'", "--warm-start")
    one_line_error(run_main([*base, "--warm-start", "earlier", "--warm-start-storage", f"sqlite:///{tmp_path / 'missing.db'}"], capsys), "--warm-start-storage")
    one_line_error(run_main([*base, "--warm-start", "earlier"], capsys), "no study database", "--warm-start-storage")  # new.db is not there
    one_line_error(run_main([*base, "--warm-start", "earlier", "--warm-start-trials", "0"], capsys), "--warm-start-trials")
    one_line_error(run_main([*base, "--warm-start", "earlier", "--warm-start-trials", "101"], capsys), "--warm-start-trials")
    one_line_error(run_main([*base, "--warm-start", "earlier", "--trials", "1"], capsys), "--trials 1 leaves no trial")
    # a count of warm-start trials with nothing to warm-start from was ignored without a word
    one_line_error(run_main([*base, "--warm-start-trials", "3"], capsys), "--warm-start-trials 3", "add --warm-start STUDY")
    assert not new.exists() and not (tmp_path / "missing.db").exists()
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("space: {learning_rate: {low: 0.05, high: 0.1}}\nbaseline: {enabled: false}\n")  # no earlier trial fits
    one_line_error(
        run_main([*base, "--config", str(narrow), "--warm-start", "earlier", "--warm-start-storage", f"sqlite:///{earlier}"], capsys),
        "no completed trial inside this run's space",
    )
    assert not new.exists()
    one_line_error(run_main(["--storage", f"sqlite:///{earlier}", "--study-name", "earlier", "--warm-start", "earlier"], capsys), "names the study this run")
    assert len(load(f"sqlite:///{earlier}", "earlier").get_trials()) == 7


@pytest.mark.slow  # seconds of training or waiting: the fast subset stays under 90 s on a loaded machine
def test_a_warm_started_run_trains_the_earlier_best_first_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real command: the earlier study's best DNN is trial 1; the same command resumes; a
    different warm start on the existing study is refused before anything is written."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    source = source_study(url)
    argv = ["--storage", url, "--study-name", "next", "--train-size", "500", "--val-size", "200", "--max-epochs", "1",
            "--trials", "2", "--target-accuracy", "none", "--no-export", "--warm-start", "earlier", "--warm-start-trials", "1"]
    result = run_main(argv, capsys)
    assert result.returncode == 0, result.stderr
    assert "warm start: runs first the 1 best parameter set(s) of study 'earlier'" in result.stdout
    study = load(url, "next")
    assert study.trials[1].params == source.trials[3].params and study.trials[1].state == TrialState.COMPLETE
    assert [t.params.get("classifier") for t in study.trials[:2]] == ["linear", "dnn"]

    optuna.delete_study(study_name="earlier", storage=writer_storage(url))  # resuming needs it no more
    resumed = run_main([*argv[:-4], "--trials", "3", "--warm-start", "earlier", "--warm-start-trials", "3"], capsys)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed study 'next'" in resumed.stdout and "warm start:" not in resumed.stdout
    assert "note: the warm start ran once, when the study was created, with 1 set(s); this run's count (3) is unused" in resumed.stdout  # was silent
    # a warm start runs at creation: the resume's count never ran, and the recorded settings said 3
    assert load(url, "next").user_attrs[record.SETTINGS]["warm_start"]["trials"] == 1
    other = optuna.create_study(study_name="other", storage=writer_storage(url), direction="maximize")
    add(other, dnn([128]), 0.97)
    before = len(load(url, "next").get_trials())
    # the recorded storage is named too: the same study name in another database was refused naming only the study
    one_line_error(run_main([*argv[:-4], "--trials", "4", "--warm-start", "other"], capsys), "already exists", f"'earlier' in {url}", "drop --warm-start")
    assert len(load(url, "next").get_trials()) == before
