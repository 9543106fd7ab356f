"""benchmarks/anytime.py: the best-so-far curve is the model the export would pick at each moment,
the reference's test-scoring time is off its clock, and the comparison counts what it says."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import pytest

from benchmarks.anytime import main, parse_variant, reference_points
from benchmarks.anytime_curves import (
    Completion,
    Point,
    Run,
    curve,
    first_minutes,
    label,
    latest_runs,
    new_bests,
    search_order,
    shortfalls,
    value_at,
)


def test_new_bests_follow_the_exports_choice_over_time() -> None:
    done = [
        Completion(0.5, 0, 0.90),
        Completion(1.0, 2, 0.95),
        Completion(1.2, 1, float("nan")),  # no value: never a best
        Completion(1.5, 3, 0.95),  # equal, higher number: the export keeps trial 2
        Completion(2.0, 1, 0.95),  # a retry of trial 1 finishing late: equal, lower number: the export picks it
        Completion(3.0, 4, 0.97),
        Completion(9.0, 5, 0.99),  # after the horizon
    ]
    changes = new_bests(done, horizon_minutes=5.0)
    assert [(c.number, c.minutes) for c in changes] == [(0, 0.5), (2, 1.0), (1, 2.0), (4, 3.0)]


def test_value_at_and_first_minutes_read_a_step_curve() -> None:
    points = [Point(0.5, 0, 0.90, 0.91), Point(3.0, 4, 0.981, 0.979)]
    assert math.isnan(value_at(points, 0.4))
    assert value_at(points, 0.5) == 0.91 and value_at(points, 2.9) == 0.91
    assert value_at(points, 3.0) == 0.979 and value_at(points, 100) == 0.979
    assert value_at(points, 3.0, key="val") == 0.981
    assert first_minutes(points, 0.98) == 3.0
    assert math.isnan(first_minutes(points, 0.99))


def _line(number: int, state: str, value: float | None, t: float, test: float | None = None, scoring: float = 0.0) -> str:
    event = {"event": "trial", "number": number, "state": state, "value": value, "t": t, "seconds": 1.0}
    if test is not None:
        event |= {"test": test, "eval_seconds": scoring}
    return "some log text " + json.dumps(event)


def test_reference_scoring_time_is_taken_off_its_clock() -> None:
    started = 1000.0
    lines = [
        "Lightning prints this",
        _line(0, "COMPLETE", 0.90, started + 60, test=0.905, scoring=6.0),
        _line(1, "PRUNED", None, started + 90),
        _line(2, "COMPLETE", 0.96, started + 132, test=0.955, scoring=6.0),  # 120 s of search + 12 s of scoring so far
    ]
    points, completed = reference_points(lines, started, horizon_minutes=15)
    assert completed == 2
    assert [(p.number, p.minutes, p.test) for p in points] == [(0, 0.9, 0.905), (2, 2.0, 0.955)]


def _run(search: str, seed: int, points: list[tuple[float, float]], horizon: float = 4.0) -> Run:
    return Run(search, seed, horizon, None, [Point(t, i, acc, acc) for i, (t, acc) in enumerate(points)], len(points))


def test_the_median_waits_for_every_seed() -> None:
    """A median over the seeds that happen to have a model would flatter the early minutes."""
    runs = [_run("ours", 0, [(0.5, 0.97)]), _run("ours", 1, [(1.0, 0.95)]), _run("ours", 2, [(2.0, 0.90)])]
    at = dict(zip([0.5, 1.0, 2.0], curve(runs, [0.5, 1.0, 2.0])))
    assert math.isnan(at[0.5][0]) and at[0.5][1:] == (0.97, 0.97)
    assert math.isnan(at[1.0][0]) and at[1.0][1:] == (0.95, 0.97)
    assert at[2.0] == (0.95, 0.90, 0.97)


def test_shortfalls_count_grid_points_below_each_reference() -> None:
    ours = [_run("ours", s, [(1.0, 0.95), (2.0, 0.98)]) for s in (0, 1)]
    reference = [_run("reference", s, [(0.5, 0.90), (1.5, 0.97), (3.0, 0.99)]) for s in (0, 1)]
    below, compared, worst = shortfalls(ours, {"reference": reference}, 4.0)["reference"]
    # grid every 5 s up to 4 min: the reference has a model from 0.5 min (points 6..48 = 43);
    # ours is below from 0.5 to 1.0 (no model yet: 6 points), from 1.5 to 2.0 (6), and from 3.0 (13)
    assert compared == 43
    assert below == 6 + 6 + 13
    assert worst == pytest.approx(2.0)


def test_latest_runs_keep_the_newest_per_seed_and_the_report_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "anytime.jsonl"
    runs = [
        _run("reference", 0, [(1.0, 0.90)]),
        _run("ours", 0, [(1.0, 0.80)]),  # replaced by the next line
        _run("ours", 0, [(0.5, 0.96), (1.9, 0.985)]),
        _run("ours", 1, [(0.7, 0.95)]),
        _run("ours", 2, [(0.7, 0.95)], horizon=15.0),  # another horizon: not in this report
    ]
    results.write_text("".join(run.to_json() + "\n" for run in runs))
    chosen = latest_runs([Run.from_json(line) for line in results.read_text().splitlines()], 4.0, None)
    assert [r.seed for r in chosen["ours"]] == [0, 1] and chosen["ours"][0].points[0].val == 0.96
    assert list(chosen) == ["ours", "reference"]

    png = tmp_path / "curves.png"
    assert main(["--report", "--minutes", "4", "--results", str(results), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 0
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ours")]
    assert rows[0] == ["ours (TPE + median pruning)", "0", "0.9850", "2", "1.90"]  # at 2 min; when val reached 0.98
    assert rows[2] == ["ours (TPE + median pruning)", "median [min-max] of 2", "0.9675 [0.9500-0.9850]", "", ""]
    assert "ours vs optuna-examples reference" in out


def test_a_variant_is_ours_with_a_settings_file_and_sorts_after_the_built_ins() -> None:
    search, config = parse_variant("epochs12=training: {max_epochs: 12}")
    assert (search, config) == ("ours:epochs12", "training: {max_epochs: 12}")
    assert label(search) == "ours with epochs12"
    assert sorted(["ours:b", "reference", "ours:a", "ours"], key=search_order) == ["ours", "reference", "ours:a", "ours:b"]
    for bad in ("epochs12", "=training: {}", "x="):
        with pytest.raises(argparse.ArgumentTypeError, match="LABEL=YAML"):
            parse_variant(bad)


def test_report_without_runs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--report", "--results", str(tmp_path / "none.jsonl")]) == 1
    assert "no runs" in capsys.readouterr().out


@pytest.mark.slow
def test_study_points_score_the_model_the_export_picks(isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real run: the curve's last point is the export's best trial, with the export's test accuracy."""
    from benchmarks._common import home_storage_url
    from benchmarks.anytime import study_points
    from helpers import load, run_main
    from search.export.exporter import export_study

    started = time.time()
    done = run_main(["--trials", "4", "--train-size", "2000", "--max-epochs", "2", "--target-accuracy", "none", "--no-export"], capsys)
    assert done.returncode == 0, done.stderr
    points, completed = study_points(isolated_home, started, horizon_minutes=math.inf)
    assert completed == 4 and points
    assert 0 < points[0].minutes <= points[-1].minutes <= (time.time() - started) / 60  # the storage's clock is ours
    assert "warning" not in capsys.readouterr().out  # every best so far was scored from its stored weights
    assert all(a.minutes <= b.minutes and a.val < b.val for a, b in itertools.pairwise(points))
    exported = export_study(load(home_storage_url(isolated_home)), tmp_path / "export").metrics
    assert points[-1].number == exported.best_trial
    assert points[-1].test == exported.test_accuracy


@pytest.mark.slow  # a subprocess, which fails at its settings file (about 2 s): nothing trains
def test_a_search_that_ends_early_is_one_line_and_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A search that exits before its deadline (a crash, a bad setting, Ctrl-C sent to it) left no
    curve: the benchmark names it and its exit code in one line and records nothing."""
    results = tmp_path / "anytime.jsonl"
    assert main(["--minutes", "1", "--seeds", "5", "--searches", "--variant", "broken=no_such_section: {x: 1}", "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: ours with broken, seed 5: the search ended before its deadline, exit code 2: error: "), err
    assert not results.exists() or results.read_text() == ""


def test_a_variant_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="at most 40 characters"):
        parse_variant("x" * 41 + "=training: {max_epochs: 2}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--report", "--variant", "a=" + "b" * 5000])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
