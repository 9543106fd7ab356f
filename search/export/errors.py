"""The export's errors: a study that cannot be exported as asked (one line, exit 2), and a stop request."""

from __future__ import annotations

from lightning_modules.errors import UserInputError


class ExportError(UserInputError):
    """A study that cannot be exported as asked."""


class ExportInterrupted(Exception):
    """A stop request (Ctrl-C, SIGTERM) came while the runner exported: the export stops at its next
    step, leaving the previous export, the store and the trial as they were."""


class ExportSuperseded(Exception):
    """The export folder holds, by the time this export would swap in, an export of a trial the
    study ranks higher (or of the same trial, swapped in at the same moment) by another run or
    export: this one is left out, nothing is changed, and the folder holds the best already."""
