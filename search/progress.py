"""What a person watching a run sees: one line per finished trial and a progress bar."""

from __future__ import annotations

import sys
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search.rules import FINISHED


def describe_params(params: dict[str, object]) -> str:
    """Key parameters in a short, stable order: 'dnn 512-128 drop=0.21 adam lr=1.2e-03 bs=128'."""
    if not params:
        return "(no parameters: failed before sampling)"
    parts = [str(params.get("classifier", "?"))]
    layers = int(params.get("hidden_layers", 0) or 0)  # type: ignore[arg-type]
    if layers:
        parts.append("-".join(str(params.get(f"units_l{i + 1}")) for i in range(layers)))
        parts.append(f"drop={float(params.get('dropout', 0.0)):.2f}")  # type: ignore[arg-type]
    parts.append(str(params.get("optimizer", "?")))
    parts.append(f"lr={float(params.get('learning_rate', float('nan'))):.1e}")  # type: ignore[arg-type]
    parts.append(f"bs={params.get('batch_size', '?')}")
    return " ".join(parts)


def trial_line(trial: FrozenTrial) -> str:
    """'trial  12 dnn 512-128 ... val_acc=0.9712 epochs=3 complete 8.1s'."""
    history = trial.user_attrs.get("history") or []
    value = trial.value if trial.value is not None else (history[-1]["val/acc"] if history else float("nan"))
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    state = trial.state.name.lower()
    return (
        f"trial {trial.number:>3} {describe_params(trial.params):<44} val_acc={value:.4f} "
        f"epochs={trial.user_attrs.get('epochs_run', len(history))} {state:<8} {seconds:5.1f}s"
    )


class TrialReporter:
    """Prints each finished trial once, whichever process ran it, and advances the bar."""

    def __init__(self, study: optuna.Study, budget: int, out: TextIO = sys.stdout) -> None:
        self.out = out
        already = study.get_trials(deepcopy=False, states=FINISHED)
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.bar = tqdm(
            total=budget, initial=min(len(already), budget), unit="trial", desc="study",
            file=sys.stderr, disable=None, leave=False, dynamic_ncols=True,
        )

    def update(self, study: optuna.Study) -> None:
        new = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in self.seen]
        for trial in sorted(new, key=lambda t: t.number):
            self.seen.add(trial.number)
            if trial.user_attrs.get("surplus"):
                continue  # stepped aside before training: not a trial of the search
            self.bar.write(trial_line(trial), file=self.out)
            if trial.state in FINISHED:
                self.bar.update(1)
            self.out.flush()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.update(study)

    def close(self) -> None:
        self.bar.close()


__all__ = ["TrialReporter", "describe_params", "trial_line", "TrialState"]
