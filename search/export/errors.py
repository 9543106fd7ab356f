"""The export's one error type: a study that cannot be exported as asked (one line, exit 2)."""

from __future__ import annotations

from lightning_modules.errors import UserInputError


class ExportError(UserInputError):
    """A study that cannot be exported as asked."""
