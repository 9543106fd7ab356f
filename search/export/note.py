"""The study's note on optuna-dashboard: what a run aimed at, what it found, where the export is.

The runner writes it when a run ends; the dashboard only shows it. The objective's name is set
again here (studies created before it was set at creation), so the dashboard says "val_accuracy"
rather than "Objective 0".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import optuna

from search.export.study_plots import MIN_IMPORTANCE_TRIALS
from search.record import OBJECTIVE_NAME
from search.space import CLASSIFIER_PARAM


@dataclass(frozen=True)
class RunSummary:
    target_accuracy: float | None  # None: the whole budget
    budget: int
    stopped: str | None
    best_trial: int | None
    classifier: str | None
    val_accuracy: float | None
    test_accuracy: float | None = None
    export_dir: str | None = None  # None: export off
    completed_dnn_trials: int | None = None

    def with_export(self, test_accuracy: float, export_dir: str) -> RunSummary:
        return replace(self, test_accuracy=test_accuracy, export_dir=export_dir)


NOTE_TITLE = "## Run summary: study "  # a note that starts so is a run's own, replaced by the next run's
_STOPPED = re.compile(r"^- \*\*Stopped\*\*: (.*)$", re.MULTILINE)


def export_summary(study: optuna.Study, target: float | None, budget: int, best: tuple[int, str, float | None], tested: tuple[float, str]) -> RunSummary:
    """The note after `python -m search.export`: the target and budget of the last run to start
    (its recorded settings), the best trial and the export this export's (a --no-export run's
    note still said "export off" after the export). `best`: (trial, classifier, its recorded
    value); `tested`: (test accuracy, export folder).

    The stop line says what holds now: trials running, or the stop rule that holds (the target or
    the budget, as the run words it), or a timeout the last run's note gave for the same target
    and budget (a deadline is not stored to check it against), or neither. A run records its
    settings as it starts, and the note kept the last run's line as it was: an export during a
    --trials 8 run wrote "Budget: 8" beside the finished --trials 1 run's "budget of 1 finished
    trials spent"."""
    from optuna.trial import TrialState
    from optuna_dashboard import get_note

    from search.settings import StudyConfig
    from search.stopping import finished_trials, stop_reason

    note = get_note(study)
    found = _STOPPED.search(note)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    done = f"{len(finished_trials(study))} of the budget of {budget} trials finished"
    timed_out = found and found.group(1).startswith("timeout") and all(line in note.splitlines() for line in _aim_lines(target, budget))
    if running:
        stopped = f"not yet: {running} trial(s) running, {done}"
    else:
        stopped = stop_reason(study, StudyConfig(trials=budget, target_accuracy=target)) or (
            found.group(1) if found and timed_out else f"not at its target or budget: {done}, none running")
    return RunSummary(target, budget, stopped, *best).with_export(*tested)


def _aim_lines(target: float | None, budget: int) -> list[str]:
    """The note's target and budget lines: what a stop reason in the note answers."""
    return [
        f"- **Target** validation accuracy: {_fmt(target) if target is not None else 'none (spend the whole budget)'}",
        f"- **Budget**: {budget} finished trials",
    ]


def _code(value: str) -> str:
    """`value` as a Markdown code span fenced with more backticks than it holds: a study name (or
    folder) with a backtick closed a single-backtick span, and the rest rendered as Markdown (a
    name could add a link to the note)."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    return f"{fence} {value} {fence}" if "`" in value else f"`{value}`"


def _fmt(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"


def _artifacts_line(exported: bool) -> str:
    """What the best trial's Artifacts hold: a --no-export run's note promised exported pictures."""
    if exported:
        return "The best trial's Artifacts show its model file and the exported pictures; "
    return "The best trial's Artifacts show its model file (export it for the pictures: python -m search.export); "


def study_note(study_name: str, summary: RunSummary) -> str:
    """The Markdown note of a run."""
    target = summary.target_accuracy
    best = f"trial {summary.best_trial}" if summary.best_trial is not None else "n/a"
    n = summary.completed_dnn_trials
    importance = (
        f"Parameter importances on the dashboard rest on {n} completed DNN trials"
        + (f"; below {MIN_IMPORTANCE_TRIALS} their ranking is noise." if n < MIN_IMPORTANCE_TRIALS else ".")
        if n is not None else ""
    )
    lines = [
        f"{NOTE_TITLE}{_code(study_name)}",
        "",
        *_aim_lines(target, summary.budget),
        f"- **Stopped**: {summary.stopped or 'n/a'}",
        f"- **Best**: {best}{f' ({summary.classifier})' if summary.classifier else ''}",
        f"- **Best validation accuracy**: {_fmt(summary.val_accuracy)}",
        f"- **Test accuracy** of the best trial: {_fmt(summary.test_accuracy)}",
        f"- **Export folder**: {_code(summary.export_dir) if summary.export_dir else 'none (export off)'}",
        "",
        _artifacts_line(summary.export_dir is not None)
        + "the Intermediate Values chart shows validation accuracy per epoch, where pruned trials stop early. "
        "Importances mix both classifiers there, and a linear trial has no DNN parameters: "
        + ("the export's param_importances.png ranks" if summary.export_dir else "an export's param_importances.png (python -m search.export) ranks")
        + " the DNN parameters over DNN trials only. " + importance,
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_study_note(study: optuna.Study, summary: RunSummary) -> bool:
    """Replace the study's dashboard note with the summary of the run that just ended, unless a
    user wrote the note (on a dashboard run with --allow-writes): each run's end replaced it, and
    the user's text was gone for good. Returns whether the note was written."""
    from optuna.trial import TrialState
    from optuna_dashboard import get_note, save_note

    study.set_metric_names([OBJECTIVE_NAME])
    current = get_note(study)
    if current.strip() and not current.startswith(NOTE_TITLE):
        return False
    dnn = sum(t.params.get(CLASSIFIER_PARAM) == "dnn" for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    save_note(study, study_note(study.study_name, replace(with_earlier_export(study, current, summary), completed_dnn_trials=dnn)))
    return True


_FOLDER = re.compile(r"^- \*\*Export folder\*\*: (?:`([^`]*)`|(`{2,}) (.*) \2)$", re.MULTILINE)  # as _code writes it


def with_earlier_export(study: optuna.Study, note: str, summary: RunSummary) -> RunSummary:
    """`summary` of a run that exported nothing (--no-export, or nothing left to run), with the
    export the previous note named where that folder still holds this study's export of this best
    trial (its marker and metrics.json say so; its test accuracy is that file's): the note said
    "none (export off)" and "export it for the pictures" beside that export, its files linked to
    the trial. A folder gone, replaced or of another trial leaves "none (export off)"."""
    from pathlib import Path

    from search.export.errors import ExportError
    from search.export.files import export_identity, exported_metrics
    from search.export.folder import read_marker

    found = _FOLDER.search(note)
    if summary.export_dir is not None or found is None:
        return summary
    folder = Path(found.group(1) if found.group(1) is not None else found.group(3))
    try:
        if not read_marker(folder).same_study(export_identity(study)):
            return summary
    except ExportError:
        return summary
    metrics = exported_metrics(folder)
    if metrics is None or metrics.get("best_trial") != summary.best_trial:
        return summary
    try:
        return summary.with_export(float(metrics["test_accuracy"]), str(folder))
    except (KeyError, TypeError, ValueError):
        return summary
