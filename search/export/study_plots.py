"""Optuna's study plots for the export: optimization history, parameter importances, intermediate values.

Importances are computed over the completed DNN trials alone (the family whose parameters are
searched; a linear trial has none of them), over every completed trial in a study without DNNs,
and only once there are enough of them to mean something; the plot's title says how many trials,
and of which family, it rests on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.space import CLASSIFIER_PARAM

MIN_IMPORTANCE_TRIALS = 10  # below this, fANOVA's ranking changes from one seed to the next


def _importance_trials(study: optuna.Study) -> tuple[list[optuna.trial.FrozenTrial], str]:
    """The trials importances rest on, and what to call them ("DNN trials", "trials")."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    dnn = [t for t in complete if t.params.get(CLASSIFIER_PARAM) == "dnn"]
    return (dnn, "DNN trials") if dnn else (complete, "trials")


def importance_problem(study: optuna.Study) -> str | None:
    """Why parameter importances are not shown, or None when they are."""
    trials, family = _importance_trials(study)
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        return (
            f"Parameter importances are shown from {MIN_IMPORTANCE_TRIALS} completed {family} on; this study has "
            f"{len(trials)}, too few for a ranking that means anything."
        )
    if not _varying_params(trials):
        return "Parameter importances need parameters that vary between the completed trials; here none does."
    return None


def _varying_params(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The parameters every trial has and not all with one value: fANOVA gives a constant one
    (`classifier` among DNN trials) a small importance of noise, ranked above real ones."""
    shared = set.intersection(*(set(t.params) for t in trials)) if trials else set()
    return sorted(name for name in shared if len({repr(t.params[name]) for t in trials}) > 1)


def _importances(study: optuna.Study) -> Callable[[], object]:
    """Optuna's importance plot over the DNN trials, titled with how many it rests on."""
    from optuna.visualization import matplotlib as optuna_plots

    trials, family = _importance_trials(study)
    view = optuna.create_study(direction=study.direction)
    view.add_trials(trials)

    def draw() -> object:
        ax = optuna_plots.plot_param_importances(view, params=_varying_params(trials))
        ax.set_title(f"Hyperparameter importances (fANOVA over {len(trials)} completed {family})", loc="left")  # Optuna's own is left
        return ax

    return draw


def draw_study_plots(study: optuna.Study, folder: Path) -> dict[str, str]:
    """The three plots; one that cannot be drawn becomes a PNG saying why, so the export always
    has the same files. Returns those reasons by file name.

    Matplotlib is imported here, not with the module: the study note reads this module's
    threshold, and a worker pool's parent writes that note without drawing anything."""
    from optuna.visualization import matplotlib as optuna_plots

    from search.export.figures import message_png
    from search.export.plots import optuna_plot_png

    notes: dict[str, str] = {}
    plots: tuple[tuple[str, Callable[[], Callable[[], object]], str | None], ...] = (
        ("optimization_history.png", lambda: lambda: optuna_plots.plot_optimization_history(study), None),
        ("param_importances.png", lambda: _importances(study), importance_problem(study)),
        ("intermediate_values.png", lambda: lambda: optuna_plots.plot_intermediate_values(study), None),
    )
    for name, build, problem in plots:
        if problem is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "experimental" and "no intermediate values" notices
                    optuna_plot_png(build(), folder / name)  # type: ignore[arg-type]
                continue
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                problem = f"Optuna could not draw this plot: {str(error).splitlines()[0]}"
        notes[name] = problem
        message_png(problem, folder / name)
    return notes
