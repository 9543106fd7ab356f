"""python -m search.run: search linear and DNN classifiers on MNIST with a persistent Optuna study.

Re-running the same command resumes the study: --trials is the study's total budget of
finished (complete or pruned) trials, so a study with 60 of 100 finished runs the 40 left.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lightning_modules.errors import UserInputError
from search.cli import OneLineParser

_OPTION_KEYS = {
    "trials": ("study", "trials"),
    "study_name": ("study", "name"),
    "storage": ("study", "storage"),
    "target_accuracy": ("study", "target_accuracy"),
    "timeout": ("study", "timeout"),
    "workers": ("study", "workers"),
    "seed": ("study", "seed"),
    "data": ("data", "source"),
    "data_dir": ("data", "data_dir"),
    "train_size": ("data", "train_size"),
    "max_epochs": ("training", "max_epochs"),
}


def _target(value: str) -> float | None:
    if value.lower() in ("none", "off", "null"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'none', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m search.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Command-line values override the config file; the config file overrides the built-in "
        "defaults (configs/default.yaml spells them out).",
    )
    add = parser.add_argument
    add("--config", type=Path, default=None, help="YAML settings file (default: built-in defaults = configs/default.yaml)")
    add("--trials", type=int, help="total budget of finished trials in the study, counting earlier runs (default 100)")
    add("--study-name", help="study to create or resume (default: mnist)")
    add("--storage", help="storage URL: sqlite:///file.db or postgresql://user@host/db (default: sqlite:///storage/mnist-search.db)")
    add("--target-accuracy", type=_target, default=argparse.SUPPRESS, help="stop once a completed trial reaches this validation accuracy; 'none' spends the whole budget (default 0.95)")
    add("--timeout", type=float, help="start no new trial after this many seconds of this run")
    add("--workers", type=int, help="worker processes on this machine sharing the study (default 1)")
    add("--seed", type=int, help="seed of the sampler; trial n trains with seed + n (default 0)")
    add("--data", help="mnist, fashion-mnist, a directory of IDX files, or a CSV file (label, 784 pixels)")
    add("--data-dir", help="directory holding the IDX files (default: $MNIST_DATA_DIR, then the user cache)")
    add("--train-size", type=int, help="train on a stratified subsample of this many rows")
    add("--max-epochs", type=int, help="epochs per trial (default 8)")
    add("--no-export", action="store_true", help="do not export the best model when the study ends")
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for option, (section, key) in _OPTION_KEYS.items():
        if option not in vars(args):
            continue
        value = getattr(args, option)
        if value is None and option != "target_accuracy":
            continue
        overrides.setdefault(section, {})[key] = value
    if args.no_export:
        overrides["export"] = False
    return overrides


def quiet_optuna() -> None:
    """Our one line per trial replaces Optuna's INFO lines; experimental-API notes are ours to track."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def resume_command(argv: list[str]) -> str:
    """The command that resumes this run, with any storage password masked."""
    from search.storage import redact

    shown = [redact(a) if "://" in a else a for a in argv]
    return "python -m search.run " + " ".join(shlex.quote(a) for a in shown)


class StopRequest:
    """Signal handling shared by the runner and its workers: the first SIGINT/SIGTERM asks for a
    clean stop at the next batch boundary; a second one exits at once."""

    def __init__(self) -> None:
        import threading

        self.event = threading.Event()
        self.signum: int | None = None
        self.on_first: list[Any] = []

    def install(self) -> StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            os._exit(128 + signum)
        self.signum = signum
        self.event.set()
        for hook in self.on_first:
            hook(signum)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def _storage_for(settings: Any, storage_url: str) -> Any:
    from search.storage import build_storage

    return build_storage(storage_url, heartbeat_seconds=settings.study.heartbeat_seconds, grace_seconds=settings.study.stale_after_seconds)


def _worker_process(settings_json: dict[str, Any], storage_url: str, worker_index: int, threads: int) -> None:
    """Entry point of a spawned worker: its own storage connection, data and sampler seed."""
    os.setpgid(0, 0)  # Ctrl-C reaches the runner only; it forwards exactly one stop request
    stop = StopRequest().install()
    import torch

    from search.config import Settings
    from search.study import WorkerInterrupted

    torch.set_num_threads(threads)
    quiet_optuna()
    settings = Settings.model_validate(settings_json)
    try:
        _run_one_worker(settings, storage_url, worker_index, callbacks=(), stop=stop)
    except WorkerInterrupted:
        sys.exit(stop.exit_code)


def _run_one_worker(settings: Any, storage_url: str, worker_index: int, callbacks: Any, stop: StopRequest, split: Any = None) -> str:
    from search.export import load_split
    from search.objective import make_objective
    from search.storage import build_artifact_store, checkpoints_dir, storage_guard
    from search.study import open_study, run_worker

    opened = open_study(settings, _storage_for(settings, storage_url), worker_index)
    split = split if split is not None else load_split(settings)
    objective = make_objective(settings, split, build_artifact_store(), opened.sampler_seed, checkpoints_dir(), stop.event)
    return run_worker(
        opened.study, objective, settings, callbacks, stop_event=stop.event, storage_check=storage_guard(storage_url)
    )


def run(argv: list[str], stop: StopRequest) -> int:
    args = build_parser().parse_args(argv)
    from search.config import load_settings, settings_as_dict

    settings = load_settings(args.config, overrides_from_args(args))
    quiet_optuna()

    from lightning_modules.callbacks import TrainingInterrupted
    from lightning_modules.training import configure_torch
    from search.export import SETTINGS_ATTR, export_study, load_split
    from search.progress import TrialReporter
    from search.storage import artifact_dir, default_storage_url, redact
    from search.study import (
        WorkerInterrupted,
        best_trials,
        open_study,
        stop_reason,
        study_status,
    )

    storage_url = settings.study.storage or default_storage_url()
    storage = _storage_for(settings, storage_url)
    split = load_split(settings)  # before the study exists: bad data creates nothing
    opened = open_study(settings, storage)
    study = opened.study
    study.set_user_attr(SETTINGS_ATTR, settings_as_dict(settings))
    status = study_status(study)
    budget = settings.study.trials
    print(
        f"{'created' if opened.created else 'resumed'} study {study.study_name!r} in {redact(storage_url)}: "
        f"{status.finished} finished trials ({status.complete} complete, {status.pruned} pruned), "
        f"budget {budget}, target {settings.study.target_accuracy or 'none'}; "
        f"data {split.x_train.shape[0]} train / {split.x_val.shape[0]} val rows"
    )
    sys.stdout.flush()
    reporter = TrialReporter(study, budget)
    workers = settings.study.workers
    start = time.monotonic()
    try:
        if workers == 1:
            configure_torch(1)
            reason = _run_one_worker(settings, storage_url, 0, [reporter], stop, split=split)
        else:
            reason = _run_workers(settings, storage_url, study, reporter, workers, stop)
    except WorkerInterrupted:
        reporter.update(study)
        reporter.close()
        print(
            f"stopped on request; finished trials are saved and the interrupted one resumes from its last epoch. "
            f"Resume with: {resume_command(argv)}",
            file=sys.stderr,
        )
        return stop.exit_code
    reporter.update(study)
    reporter.close()
    reason = reason or stop_reason(study, settings, None) or "all workers finished"
    print(f"stopped: {reason} after {time.monotonic() - start:.1f} s")
    best = best_trials(study).get("best")
    if best is None:
        print("no completed trial yet; nothing to export")
        return 0
    line = f"best trial {best.number}: val_acc={best.value:.4f}"
    summary: dict[str, Any] = {
        "target_accuracy": settings.study.target_accuracy, "budget": budget, "stopped": reason,
        "best_trial": best.number, "classifier": best.params.get("classifier"), "val_accuracy": best.value,
    }
    if settings.export:
        try:
            metrics = export_study(study, force=True, split=split)
        except TrainingInterrupted:  # SIGTERM during the export's evaluation
            print(f"stopped on request; finished trials are saved. Resume with: {resume_command(argv)}", file=sys.stderr)
            return stop.exit_code
        summary.update(test_accuracy=metrics["test_accuracy"], export_dir=metrics["export_dir"])
        line += f" test_acc={metrics['test_accuracy']:.4f}; exported to {metrics['export_dir']}"
    print(line)
    from search.dashboard import write_study_note

    write_study_note(study, summary)
    shown_url = shlex.quote(redact(storage_url))
    print(f"watch it: python -m search.dashboard --storage {shown_url}")
    print(f"      or: optuna-dashboard {shown_url} --artifact-dir {shlex.quote(str(artifact_dir()))}")
    return 0


def _run_workers(settings: Any, storage_url: str, study: Any, reporter: Any, workers: int, stop: StopRequest) -> str | None:
    """K spawned workers share the study; this process reports what they finish and relays signals."""
    from lightning_modules.training import configure_torch
    from search.study import WorkerInterrupted

    threads = configure_torch(workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_process, args=(settings.model_dump(mode="json"), storage_url, i, threads))
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def relay(signum: int) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    stop.on_first.append(relay)
    while any(p.is_alive() for p in processes):
        reporter.update(study)
        time.sleep(0.5)
    if stop.event.is_set():
        raise WorkerInterrupted
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        print(f"warning: {len(failed)} worker(s) exited with codes {failed}", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stop = StopRequest().install()
    quiet_storage_failures_in_threads()
    try:
        return run(argv, stop)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted before the search started. Run again with: {resume_command(argv)}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - only storage and disk failures are handled here
        cause = storage_failure(error)
        if cause is None:
            raise
        print(
            f"error: {describe_storage_failure(cause, argv)}; finished trials are kept. "
            f"Fix it, then resume with: {resume_command(argv)}",
            file=sys.stderr,
        )
        return 2


_DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT}


def quiet_storage_failures_in_threads() -> None:
    """Optuna's heartbeat thread hits the same database failure as the main thread, which
    reports it in one line; the thread's traceback would only bury that line."""
    import threading

    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or storage_failure(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


def storage_failure(error: BaseException) -> BaseException | None:
    """The database or disk failure behind `error`, if any: Optuna may re-raise such a failure
    as another exception while handling it, so the whole chain is searched."""
    from sqlalchemy.exc import SQLAlchemyError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SQLAlchemyError) or (isinstance(current, OSError) and current.errno in _DISK_ERRORS):
            return current
        current = current.__cause__ or current.__context__
    return None


def describe_storage_failure(cause: BaseException, argv: list[str]) -> str:
    if isinstance(cause, OSError):
        return f"cannot write {cause.filename or 'run state'} ({cause.strerror})"
    reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
    return f"the study's storage failed mid-run ({redact_secrets(reason, argv)})"


def redact_secrets(text: str, argv: list[str]) -> str:
    """Strip any password that appears in a storage URL on the command line from `text`."""
    from search.storage import storage_passwords

    for secret in storage_passwords(argv):
        text = text.replace(secret, "***")
    return text


if __name__ == "__main__":
    sys.exit(main())
