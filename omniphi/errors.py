"""The one decision "is this the user's fault?", made by exception type.

Every error a user can cause and fix (a bad file or argument, a model that is not installed, a
device that is not there) derives from `UserError`. The CLI, its sub-commands and the server ask
`is_user_error` to choose between one line + exit status 2 (or a 4xx) and a bug report (exit 1, 5xx).
This module imports nothing from omniphi, so every layer can raise these errors.
"""

from __future__ import annotations


class UserError(Exception):
    """The user's input is at fault and the message says how to fix it."""


# Built-in exceptions that mean the same where they reach the top: a value or a path the user gave.
_BUILTIN_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, (UserError, *_BUILTIN_USER_ERRORS))


class DeviceError(UserError, ValueError):
    """A device, dtype or weight format that this machine or model cannot run."""
