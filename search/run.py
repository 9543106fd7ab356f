"""python -m search.run: search linear and DNN classifiers on MNIST with a persistent Optuna study.

Re-running the same command resumes the study: --trials is the study's total budget of
finished (complete or pruned) trials, so a study with 60 of 100 finished runs the 40 left.
"""

from __future__ import annotations

from search.console import OutputGuard, quiet_interrupt_while_starting, starting_done

if __name__ == "__main__":
    quiet_interrupt_while_starting()

import argparse
import shlex
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning_modules.device import Device, physical_ids, resolve_device, threads_per_worker, usable_cores, visible_gpus, worker_visible_devices
from lightning_modules.errors import TrainingInterrupted, UserInputError, error_line
from search.export.target import check_export_target
from search.failures import EXIT_STORAGE_FAILED, describe_storage_failure, quiet_storage_failures_in_threads, storage_failure
from search.options import RUN_FLAGS, OneLineParser, add_flags, overrides_from_args
from search.paths import artifact_dir, check_run_folders, checkpoints_dir, exports_dir
from search.redaction import mask, mask_known, redact, redact_words, secrets_in
from search.settings import Settings
from search.workers import StopRequest, answered, describe_exit_codes

MAX_WORKERS_PER_CORE = 4  # beyond this each worker's share of a core makes every trial crawl
EXIT_WORKERS_DIED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m search.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Command-line values override the config file; the config file overrides the built-in "
        "defaults (configs/default.yaml spells them out).",
    )
    parser.add_argument("--config", type=str, default=None, help="YAML settings file (default: the built-in defaults, as in configs/default.yaml)")
    add_flags(parser, RUN_FLAGS)
    parser.add_argument("--no-export", action="store_true", help="do not export the best model when the study ends")
    return parser


def parse_settings(argv: list[str]) -> Settings:
    """Flags and config file -> validated settings; every mistake is a one-line UserInputError."""
    from search.settings_file import load_settings

    args = build_parser().parse_args(argv)
    overrides = overrides_from_args(args, RUN_FLAGS)
    if args.no_export:
        overrides["export"] = False
    settings = load_settings(args.config, overrides, {flag.key: flag.name for flag in RUN_FLAGS})
    if "trials" in overrides.get("warm_start", {}) and settings.warm_start.study is None:  # as --warm-start-storage alone is
        raise UserInputError(f"--warm-start-trials {settings.warm_start.trials} counts the trials of a warm start; add --warm-start STUDY, or drop it")
    return settings


def check_workers(settings: Settings, cores: int | None = None) -> None:
    """--workers within MAX_WORKERS_PER_CORE per usable core (`cores`: the count `run` read once)."""
    cores = cores or usable_cores()
    limit = MAX_WORKERS_PER_CORE * cores
    if settings.study.workers > limit:
        raise UserInputError(
            f"--workers {settings.study.workers} on {cores} cores: at most {limit} ({MAX_WORKERS_PER_CORE} per core); "
            "to scale further, run search.run on more machines against one PostgreSQL study"
        )


def check_device(settings: Settings, cores: int | None = None) -> Device:
    """Resolve --accelerator/--devices against this machine's GPUs, and check that --workers fit
    on them, before any study is created: a GPU asked for and missing is a one-line error."""
    training, workers = settings.training, settings.study.workers
    threads = threads_per_worker(workers, cores or usable_cores())  # before torch: libgomp warns of a bad OMP_NUM_THREADS on import
    gpus = [] if training.accelerator == "cpu" else visible_gpus()  # torch only when a GPU may be wanted
    device = resolve_device(training.accelerator, training.devices, gpus, threads, workers)
    if device.kind == "cuda" and workers > 1:
        worker_visible_devices(workers, physical_ids(device.indices), training.workers_per_device)
    if device.kind == "cpu" and training.workers_per_device != 1:  # as the description names --devices on the CPU
        device = replace(device, description=f"{device.description}; --workers-per-device {training.workers_per_device} unused: no GPU")
    return device


def check_artifact_store(settings: Settings) -> Settings:
    """The settings with --artifact-store checked here (the folder is there, the bucket answers)
    and written out in full (an absolute folder), before any study is created or changed."""
    if settings.study.artifact_store is None:
        return settings
    from search.artifact_stores import check_location, open_store

    location = check_location(settings.study.artifact_store)
    open_store(location)
    return settings.model_copy(update={"study": settings.study.model_copy(update={"artifact_store": str(location)})})


def run_folders(settings: Settings) -> list[Path]:
    """The folders under the runtime folder this run writes in."""
    return [checkpoints_dir()] + ([artifact_dir()] if settings.study.artifact_store is None else []) + ([exports_dir()] if settings.export else [])


def resume_command(argv: list[str]) -> str:
    """The command that resumes this run, with any storage password masked."""
    return "python -m search.run " + " ".join(shlex.quote(a) for a in redact_words(argv))


def export_command(url: str, study_name: str) -> str:
    """The command that exports this run's study, with any storage password masked."""
    return f"python -m search.export --storage {shlex.quote(redact(url))} --study-name={shlex.quote(study_name)}"  # = : a name may start with -


class StartUp:
    """Until the study is opened the run only reads and checks (flags, files, torch's import,
    the data and its download), so a stop request raises KeyboardInterrupt wherever it is:
    nothing is created, and a download from a trickling mirror ends at once (a flag nobody read
    left it running). From `enter_study` on, a stop is the flag the trial loop reads."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop, self.open = stop, True
        stop.add_first(self)  # now, if a stop came before the handler's hooks were set

    def __call__(self, signum: int) -> None:
        if self.open:
            raise KeyboardInterrupt

    def enter_study(self) -> None:
        self.open = False
        if self.stop.event.is_set():  # came between the data and here
            raise KeyboardInterrupt


def run(argv: list[str], stop: StopRequest, start_up: StartUp) -> int:
    settings = parse_settings(argv)
    from search.data import check_data, check_data_options
    from search.storage import check_storage_url, refuse_a_foreign_sqlite_file

    url = check_storage_url(settings.study.storage)
    refuse_a_foreign_sqlite_file(url)  # before the data is loaded: a mistyped path answers at once
    check_run_folders(run_folders(settings))
    check_data_options(settings.data)
    source = check_data(settings.data)
    settings = check_artifact_store(settings)
    cores = usable_cores()  # read once: joblib reads the cgroup's files each time
    check_workers(settings, cores)
    from search.warm_start import read_warm_start

    warm = read_warm_start(settings, url)  # read-only, before this run's study exists and before torch
    device = check_device(settings, cores)

    from search.studies import quiet_optuna
    from search.trial_loop import start_run

    quiet_optuna()
    check_export_target(settings, url)
    started = start_run(settings, url, source, device, warm, start_up.enter_study)  # data first: bad data creates no database
    check_export_target(settings, url, started.study)
    print(started.first_line)
    if warm is not None and started.created:
        print(warm.describe())
    if started.nothing_to_do:
        print(started.nothing_to_do)
    sys.stdout.flush()
    return finish_run(settings, url, started, argv, stop, device)


def finish_run(settings: Settings, url: str, started: Any, argv: list[str], stop: StopRequest, device: Device) -> int:
    from optuna.trial import TrialState

    from search.export.note import RunSummary, write_study_note
    from search.progress import TrialReporter
    from search.resume import clear_local_checkpoints, queued_retries
    from search.space import CLASSIFIER_PARAM
    from search.stopping import stop_reason
    from search.study import WorkerInterrupted, best_trials
    from search.trial_loop import run_trials, run_worker_pool

    study = started.study
    reporter = TrialReporter(study, settings.study.trials)
    start = time.monotonic()
    deadline = start + settings.study.timeout if settings.study.timeout else None  # one for every worker: time.monotonic is the machine's
    codes: list[int] = []
    try:
        if settings.study.workers == 1:
            reason = run_trials(settings, url, stop, callbacks=[reporter], split=started.split, device=device.torch_device, deadline=deadline)
        else:
            codes = run_worker_pool(settings, url, stop, study, lambda: reporter.update(study), device, deadline)
            reason = stop_reason(study, settings.study, deadline)
            if any(codes) and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                reason = None  # the budget counts running trials: a dead worker's does not make it spent
    except WorkerInterrupted:
        reporter.close(study)
        done = stop_reason(study, settings.study, deadline)
        if done is not None and not done.startswith("timeout"):  # a stop asked for as the workers left a finished study
            print(f"stopped: {done}. Stopped on request before the export; every trial is saved. "
                  f"Export with: {export_command(url, settings.study.name)}", file=sys.stderr)
            return stop.exit_code
        print(f"stopped on request; finished trials are saved and any trial it interrupted resumes from its last epoch. "
              f"Resume with: {resume_command(argv)}", file=sys.stderr)
        return stop.exit_code
    reporter.close(study)
    clear_local_checkpoints(study, checkpoints_dir())  # files of trials other machines finished, empty folders
    if any(codes):
        print(f"warning: {describe_exit_codes(codes)}", file=sys.stderr)
    if reason is None:
        print(f"error: the search ended before its budget or target ({describe_exit_codes(codes)}); finished trials "
              f"are saved. Resume with: {resume_command(argv)}", file=sys.stderr)
        return EXIT_WORKERS_DIED
    print(f"stopped: {reason} after {time.monotonic() - start:.1f} s")
    owed = queued_retries(study)
    if owed and not reason.startswith("timeout"):  # kept, not dropped: each resumes from its checkpoint if the search goes on
        print(f"note: {len(owed)} interrupted trial(s) stay queued with their checkpoints (trial {', '.join(map(str, owed[:5]))}); "
              "a run with a larger --trials or another --target-accuracy resumes them")
    best = best_trials(study).get("best")
    if best is None:
        print("no completed trial yet; nothing to export")
        return 0
    line = f"best trial {best.number}: val_acc={best.value:.4f}"
    summary = RunSummary(settings.study.target_accuracy, settings.study.trials, reason, best.number, best.params.get(CLASSIFIER_PARAM), best.value)
    if settings.export:
        from search.export.errors import ExportInterrupted, ExportSuperseded
        from search.export.exporter import export_study  # torch and the figures: only when exporting

        try:
            metrics = export_study(study, split=started.split, identity=started.identity, stop_requested=stop.event.is_set)
        except (TrainingInterrupted, ExportInterrupted):  # a stop request during the export (its evaluation, or between its steps)
            print(f"stopped on request during the export; every trial is saved, the previous export is as it was. "
                  f"Export with: {export_command(url, settings.study.name)}", file=sys.stderr)
            return stop.exit_code
        except ExportSuperseded as superseded:  # another run's export of a trial as good or better went in meanwhile: its note stands
            print(f"{line}\nnote: {superseded}")
            return 0
        summary = summary.with_export(metrics.test_accuracy, metrics.export_dir)
        line += f" test_acc={metrics.test_accuracy:.4f}; exported to {metrics.export_dir}"
    print(line)
    if not write_study_note(study, summary):
        print("note: the study's dashboard note was written by hand; kept as it is (no run summary there)")
    print(f"watch it: python -m search.dashboard --storage {shlex.quote(redact(url))}")  # read-only, Host-checked: not optuna-dashboard
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    starting_done()
    stop = StopRequest().install()
    guard = OutputGuard(lambda: stop.request(signal.SIGPIPE)).install()  # `| head -1` exited: stop, as SIGPIPE would
    start_up = StartUp(stop)
    quiet_storage_failures_in_threads()
    try:
        return run(argv, stop, start_up)
    except SystemExit as exit_:  # argparse: --help, or a bad flag already printed in one line
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    except UserInputError as error:
        print(f"error: {error_line(mask_known(mask(str(error), secrets_in(argv))))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a stop request before the study was opened (start_run), or the default handler's
        print(f"\ninterrupted before the search started; nothing was created. Run again with: {resume_command(argv)}", file=sys.stderr)
        return stop.exit_code
    except Exception as error:  # noqa: BLE001 - only storage and disk failures are handled here
        cause = storage_failure(error)
        if cause is None:
            raise
        kept, again = ("nothing was created", "run again") if start_up.open else ("finished trials are kept", "resume")
        print(f"error: {describe_storage_failure(cause, secrets_in(argv))}; {kept}. Fix it, then {again} with: {resume_command(argv)}", file=sys.stderr)
        return EXIT_STORAGE_FAILED
    finally:
        guard.uninstall()
        stop.uninstall()


def cli() -> int:
    """The `mnist-search` command and `python -m search.run`: main, then ends on its own code
    whatever signal comes in the teardown (`answered`)."""
    return answered(main())


if __name__ == "__main__":
    sys.exit(cli())
