"""The project's exceptions, free of heavy imports: the user-facing family (the CLI prints them
as one line, exit 2) and the stop of a training run, which a runner that never trains (a worker
pool's parent) catches without importing Lightning."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input a user can fix; the message names the problem and the fix in one line."""


class DataError(UserInputError):
    """Data files that are missing, corrupt, or not what they claim to be."""


class TrainingInterrupted(Exception):
    """Training stopped between two batches because the process was asked to stop."""
