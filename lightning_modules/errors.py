"""The project's one family of user-facing errors: the CLI prints them as one line, exit 2."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input a user can fix; the message names the problem and the fix in one line."""


class DataError(UserInputError):
    """Data files that are missing, corrupt, or not what they claim to be."""
