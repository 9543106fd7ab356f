"""python -m search.export: export the best model of a study again, or reproduce one trial.

    python -m search.export                      # the default study, right after a run
    python -m search.export --study-name a --storage postgresql://user@host/db
    python -m search.export --reproduce 12       # train trial 12 again, compare every epoch

The export folder (default: storage/exports/<study>) holds the model (safetensors, Lightning
checkpoint, ONNX, model.json), the figures, metrics.json and report.html; a previous export
there is replaced, anything else is never touched, and a folder inside an export is refused.
The data is the study's own, read the way the run read it; the data options override that (for
a moved data folder), and data that is not the study's is refused. A study search.run did not
make (several objectives; finished trials without a classifier parameter) is refused first.
The best weights come from the study's artifact store (the one it recorded, or --artifact-store),
so any machine that reaches the store can export.
"""

from __future__ import annotations

from search.console import OutputGuard, quiet_interrupt_while_starting, starting_done

if __name__ == "__main__":
    quiet_interrupt_while_starting()

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_modules.errors import UserInputError, error_line, expand_home
from search.failures import EXIT_STORAGE_FAILED, describe_storage_failure, storage_failure
from search.options import (
    READ_FLAGS,
    RECORDED_DATA_FLAGS,
    URL_START,
    OneLineParser,
    add_artifact_store_flag,
    add_flags,
    overrides_from_args,
)
from search.redaction import mask, mask_known, redact, secrets_in
from search.settings import field_info

if TYPE_CHECKING:
    import optuna

    from search.settings import Settings

MAX_TRIAL_NUMBER = 10**7
EXPORT_SECOND_STOP = ("\nstopped at once (a second stop request): the previous export is as it was (one caught mid-swap is put "
                      "back by the next export, which clears what this one left); run the same command again\n")
MAX_SHOWN = 40  # characters of a bad value quoted back
MAX_MASKED = 2000  # a longer bad value is not quoted: masking it costs seconds (search/redaction.py)


def _trial_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # masked whole, then cut: a cut URL loses the '@' that marks its password
        shown = repr(redact(text)[:MAX_SHOWN]) if len(text) <= MAX_MASKED else f"{len(text):,} characters"
        raise argparse.ArgumentTypeError(f"expected a trial number, got {shown}") from None
    if not 0 <= value <= MAX_TRIAL_NUMBER:
        shown = text if len(text) <= MAX_SHOWN else f"a number of {len(text.strip())} digits"
        raise argparse.ArgumentTypeError(f"trial numbers run from 0 to {MAX_TRIAL_NUMBER}, got {shown}")
    return value


def _out_folder(text: str) -> Path:
    """--out as a folder on this machine, ~ its home folder (as for --data). A URL was made a path
    (./http:/u:pw@x/out), its password written into the note, metrics.json and report.html."""
    if URL_START.match(text):
        raise argparse.ArgumentTypeError("is a URL, and the export writes a folder on this machine: pass a folder's path "
                                         "(the export's files are linked in the study's artifact store as well)")
    try:
        return expand_home(text, "--out")
    except UserInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m search.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, (*READ_FLAGS, *RECORDED_DATA_FLAGS))
    parser.add_argument("--out", type=_out_folder, default=None, help="output folder (default: storage/exports/<study>)")
    add_artifact_store_flag(parser, "read the best weights from and link the export's files in")
    parser.add_argument("--reproduce", type=_trial_number, metavar="TRIAL", default=None,
                        help="train this trial again from its record and print recorded vs reproduced validation accuracy")
    parser.add_argument("--force", action="store_true", help="accepted for old scripts: a previous export is always replaced")
    return parser.parse_args(argv)


def _settings(study: optuna.Study, args: argparse.Namespace) -> Settings:
    """The study's recorded settings, with the data options given here on top."""
    from pydantic import ValidationError

    from search.record import study_settings
    from search.settings import RECORDED, Settings
    from search.settings_file import ConfigError, describe_invalid, merge_settings

    recorded = study_settings(study)
    overrides = overrides_from_args(args, RECORDED_DATA_FLAGS)
    if not overrides:
        return recorded
    try:
        return Settings.model_validate(merge_settings(recorded.model_dump(mode="json"), overrides), context=RECORDED)
    except ValidationError as error:  # pydantic's first complaint, naming the option and the value
        given = secrets_in(str(value) for value in vars(args).values())  # masked before the cut, which may split a URL
        names = {flag.key: flag.name for flag in RECORDED_DATA_FLAGS}  # the flag the value came from, not its settings key
        raise ConfigError(mask(mask_known(describe_invalid(error, "option", names)), given)[:300]) from None


def _max_length(key: tuple[str, ...]) -> int:
    """The settings field's own length bound (search/settings.py), read rather than restated."""
    from search.settings import Settings

    model: Any = Settings
    for part in key[:-1]:
        model = model.model_fields[part].annotation
    return next(rule.max_length for rule in model.model_fields[key[-1]].metadata if getattr(rule, "max_length", None))


def check_study_flags(args: argparse.Namespace) -> None:
    """--study-name and --storage checked as the run checks them (search/settings.py: length,
    control characters, surrounding spaces), before either is used: the export refuses the names
    the run refuses, in one short line, and never echoes a 100 KB value or looks it up. A value
    over the bound is refused unquoted: masking it could take seconds, and cutting it before the
    mask could show part of a password."""
    from search.settings_file import ConfigError, load_settings

    for flag in READ_FLAGS:
        if flag.dest not in vars(args):
            continue
        value, limit = getattr(args, flag.dest), _max_length(flag.key)
        if len(value) > limit:
            raise ConfigError(f"{flag.name} is {len(value):,} characters long, over the {limit} python -m search.run accepts; "
                              f"pass the {flag.name} the study was run with")
        try:
            load_settings(None, overrides_from_args(args, [flag]), {flag.key: flag.name})
        except ConfigError as error:
            raise ConfigError(f"{error}; pass {flag.name} a value python -m search.run accepts") from None


def run(args: argparse.Namespace, stop_requested: Callable[[], bool] = lambda: False) -> int:
    from search.artifact_stores import check_location, open_store, recorded_location
    from search.storage import check_storage_url

    check_study_flags(args)
    unused = [flag for flag, value in (("--out", args.out), ("--artifact-store", args.artifact_store)) if value is not None]
    if args.reproduce is not None and unused:
        raise UserInputError(f"{unused[0]} is not used by --reproduce, which trains one trial again and writes nothing; drop {unused[0]}")
    url = check_storage_url(getattr(args, "study_storage", None))
    given = check_location(args.artifact_store) if args.artifact_store is not None else None
    name = getattr(args, "study_name", field_info(("study", "name"))[0])  # --study-name left out: the run's default
    from search.data import check_data
    from search.export.target import check_completed, check_made_here, checked_target
    from search.storage import open_existing_storage
    from search.studies import load_existing_study, quiet_optuna

    quiet_optuna()
    study = load_existing_study(name, open_existing_storage(url))
    check_made_here(study)  # a multi-objective or foreign study: before a trial's value or the data is read
    settings = _settings(study, args)
    if args.reproduce is not None:  # checks its trial first: one pruned untrained needs no data
        return reproduce_trial(study, settings, args.reproduce)
    check_data(settings.data)  # before torch: a bad data folder answers at once (the export reads it again)
    checked_target(study, args.out)  # before the store is opened (which may create this machine's folder)
    check_completed(study)  # before torch is imported and the data loaded
    from search.export.errors import ExportSuperseded
    from search.export.exporter import export_study

    store = open_store(given or recorded_location(study))  # given: e.g. the study's folder mounted elsewhere here
    if given is not None and str(given) != str(recorded_location(study)):
        check_given_store(study, store, given)
    try:
        result = export_study(study, args.out, settings=settings, artifact_store=store, stop_requested=stop_requested)
    except ExportSuperseded as superseded:  # the folder holds the best already: what this command promises
        print(f"note: {superseded}")
        return 0
    metrics = result.metrics
    if metrics.note:
        print(f"note: {metrics.note}")
    print(
        f"exported trial {metrics.best_trial} of study {metrics.study!r} ({metrics.classifier}): "
        f"val_acc={metrics.val_accuracy:.4f} test_acc={metrics.test_accuracy:.4f} -> {result.export_dir} "
        f"in {result.seconds:.1f} s; {len(result.artifacts)} files linked to {result.linked_to} in the artifact store"
    )
    from search.export.note import export_summary, write_study_note

    best, tested = (metrics.best_trial, metrics.classifier, metrics.trial_value), (metrics.test_accuracy, result.export_dir)
    if not write_study_note(study, export_summary(study, settings.study.target_accuracy, settings.study.trials, best, tested)):
        print("note: the study's dashboard note was written by hand; kept as it is (no export summary there)")
    return 0


MAX_WEIGHTS_LOOKED_UP = 20  # the newest completed trials' weights a given store is asked for


def check_given_store(study: optuna.Study, store: Any, given: object) -> None:
    """--artifact-store names where the study's store is mounted on this machine. A folder that
    holds none of the study's stored weights (a typo, another study's store) had the export
    retrain the best trial, minutes on full data, and write its files there: refused before."""
    from optuna.artifacts.exceptions import ArtifactNotFound
    from optuna.trial import TrialState

    from search import record
    from search.artifact_stores import ArtifactStoreError, recorded_location

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    stored = [str(found) for found in (record.read(trial, record.MODEL_ARTIFACT) for trial in trials) if found]
    for artifact_id in reversed(stored[-MAX_WEIGHTS_LOOKED_UP:]):
        try:
            store.open_reader(artifact_id).close()
            return
        except (ArtifactNotFound, OSError):
            continue
    if stored:
        raise ArtifactStoreError(
            f"--artifact-store {given} holds none of study {study.study_name!r}'s stored weights (its store is {recorded_location(study)}); "
            "pass the folder where that store is mounted here, or leave --artifact-store out"
        )


def reproduce_trial(study: optuna.Study, settings: Settings, number: int) -> int:
    """Refit one trial and print recorded vs reproduced values; exit 0 only when they match."""
    from optuna.trial import TrialState

    from search import record
    from search.data import check_data, data_identity, load_split
    from search.export.errors import ExportError
    from search.study_identity import require_same_data

    trials = study.get_trials(deepcopy=False)
    if number >= len(trials):
        held = f"trials 0-{len(trials) - 1}" if trials else "no trial yet"
        raise ExportError(f"study {study.study_name!r} has {held}; there is no trial {number}")
    trial = trials[number]
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        raise ExportError(f"trial {number} is {trial.state.name.lower()}, not finished; reproduce a complete or pruned trial")
    if record.OVER_COST in trial.user_attrs:  # before the data is read: there is nothing to train
        raise ExportError(f"trial {number} was pruned before training (its net cost {trial.user_attrs[record.OVER_COST]}x the median "
                          "tried DNN's); there is no training to reproduce: pick a trained trial")
    source = check_data(settings.data)
    split = load_split(settings.data, source)
    require_same_data(study, data_identity(split, source), doer="export")
    from search.export.reproduce import reproduce  # Lightning: once the trial and the data are known good

    result = reproduce(trial, split, settings)
    for line in result.lines():
        print(line)
    return 0 if result.matches else 1


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C or SIGTERM asks the export to stop at its next step, never inside the swap of the
    folder (it was a traceback, and could land between moving the old export aside and the new
    one in); --reproduce writes nothing and stops at once."""
    from lightning_modules.errors import TrainingInterrupted
    from search.export.errors import ExportInterrupted
    from search.workers import StopRequest

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    stop = StopRequest(second=EXPORT_SECOND_STOP)
    if args.reproduce is None:
        stop.install()
    guard = OutputGuard().install()  # `| head -1` exited: the export finishes, its last lines to /dev/null
    try:
        starting_done()
        return run(args, stop.event.is_set)
    except UserInputError as error:
        print(f"error: {error_line(mask_known(str(error)))}", file=sys.stderr)
        return 2
    except (ExportInterrupted, TrainingInterrupted, KeyboardInterrupt):
        what = "reproduction" if args.reproduce is not None else "export; the previous export is as it was"
        print(f"\nstopped on request before the end of the {what}: run the same command again", file=sys.stderr)
        return stop.exit_code
    except Exception as error:  # only storage and disk failures are handled here; anything else is a bug
        cause = storage_failure(error)
        if cause is None:
            raise
        print(f"error: {storage_failure_line(cause, args, argv)}", file=sys.stderr)
        return EXIT_STORAGE_FAILED
    finally:
        guard.uninstall()
        stop.uninstall()


def storage_failure_line(cause: BaseException, args: argparse.Namespace, argv: list[str]) -> str:
    """A database or disk that fails under the export (a dropped connection) is not a bug to show
    as a traceback: one line, as the run says it (search/failures.py). The export is built beside
    its folder and swapped in only once complete (search/export/folder.py), so the previous one
    is as it was; --reproduce writes nothing."""
    kept = "nothing was written" if args.reproduce is not None else "the previous export is as it was"
    line = f"{describe_storage_failure(cause, secrets_in(argv), during='during the export')}; {kept}. Fix it, then run the same command again"
    return error_line(mask_known(mask(line, secrets_in(argv))))


if __name__ == "__main__":
    from search.workers import answered

    sys.exit(answered(main()))
