"""Errors tfafm raises for bad input from its user.

Every problem a user can fix (a missing or malformed file, a bad option, a
model or layer tfafm cannot handle) is a :class:`UserError` whose message is
one line naming the file, line, column, option or layer at fault. The
``tfafm`` command line prints that line and exits with code 2; any other
exception is a bug and keeps its traceback.

``UserError`` subclasses ``ValueError`` (and :class:`MissingFileError` also
``FileNotFoundError``) so code that caught those before keeps working.
This module imports nothing, so every layer of the package can use it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message is one line that names the culprit."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (or is not what was expected)."""


class UnsupportedLayerError(UserError, TypeError):
    """A model contains a layer or structure tfafm cannot rewrite or export."""
