"""The error raised for malformed data files."""

from __future__ import annotations

from typing import Optional

from tfafm.errors import UserError


class DataFormatError(UserError):
    """A data file does not match its expected format.

    The message is one line naming the file, line and column where known, e.g.
    ``train.csv:17: column I5: expected an integer, got 'abc'``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        line: Optional[int] = None,
        column: Optional[str] = None,
    ):
        self.reason = message
        self.path = path
        self.line = line
        self.column = column
        where = "" if path is None else f"{path}:" if line is None else f"{path}:{line}:"
        what = f"column {column}: {message}" if column else message
        super().__init__(f"{where} {what}" if where else what)

    def at(self, path: str, line: int) -> "DataFormatError":
        """A copy of this error located at ``path``, line ``line``."""
        return DataFormatError(self.reason, path=path, line=line, column=self.column)
